//! The legacy credit import's pure part: the old system's three CSV exports read whole
//! (see `csv`), each record turned into a JSON array `[line, field…]` with the fields
//! in the export's column order, as text for the staging statements, which check and
//! convert the values (migrations/0011_credit_import.sql, store/credit_import.rs).

use serde_json::Value;

use super::csv::{CsvError, Table};
use super::customer::email_hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyFile {
    Users,
    Payments,
    Transactions,
}

impl LegacyFile {
    pub const ALL: [LegacyFile; 3] = [LegacyFile::Users, LegacyFile::Payments, LegacyFile::Transactions];

    /// The file's name (query `file=`, `legacy_credit_files.name`).
    pub fn name(self) -> &'static str {
        match self {
            LegacyFile::Users => "users",
            LegacyFile::Payments => "payments",
            LegacyFile::Transactions => "credit_transactions",
        }
    }

    pub fn from_name(name: &str) -> Option<LegacyFile> {
        LegacyFile::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The columns its header must have (the old system's export).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            LegacyFile::Users => &["id", "email", "credits_balance", "stripe_customer_id", "created_at", "updated_at"],
            LegacyFile::Payments => {
                &["id", "user_id", "stripe_payment_intent_id", "amount", "status", "created_at", "updated_at"]
            }
            LegacyFile::Transactions => {
                &["id", "user_id", "delta", "reason", "stripe_event_id", "metadata", "created_at"]
            }
        }
    }
}

/// The records of an export as one JSON array text: `[line, <columns in order>]` per
/// record, fields as strings, trimmed (but `metadata`), `null` when blank; a users
/// record ends with the hash of its email (`null` without one). A malformed file or a
/// header without the columns is an error with its line.
pub fn rows_json(file: LegacyFile, csv: &str) -> Result<(String, usize), CsvError> {
    let columns = file.columns();
    let t = Table::read(csv, columns)?;
    let mut rows = Vec::with_capacity(t.rows().len());
    for r in t.rows() {
        let mut row = vec![Value::from(r.line)];
        for (k, name) in columns.iter().enumerate() {
            let f = t.get(r, k);
            let f = if *name == "metadata" { f } else { f.trim() };
            row.push(if f.trim().is_empty() { Value::Null } else { Value::from(f) });
        }
        if file == LegacyFile::Users {
            let email = t.get(r, 1);
            row.push(email_hash(email).map_or(Value::Null, Value::String));
        }
        rows.push(Value::Array(row));
    }
    let n = rows.len();
    Ok((crate::util::json_text(&Value::Array(rows)), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USERS: &str = "id,email,credits_balance,stripe_customer_id,created_at,updated_at\n";

    fn rows(file: LegacyFile, csv: &str) -> Value {
        let (text, n) = rows_json(file, csv).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), n);
        v
    }

    #[test]
    fn each_record_becomes_its_line_and_its_fields_in_column_order() {
        let csv = format!("{USERS}u1, Alice@Example.com ,200,cus_1,\"2024-01-01 10:00:00+00\",\nu2,,,,,\n");
        let hash = email_hash("alice@example.com").unwrap();
        assert_eq!(
            rows(LegacyFile::Users, &csv),
            json!([
                [2, "u1", "Alice@Example.com", "200", "cus_1", "2024-01-01 10:00:00+00", null, hash],
                [3, "u2", null, null, null, null, null, null],
            ])
        );
        let t = "created_at,metadata,id,user_id,delta,reason,stripe_event_id,extra\n\
                 t0,\" {\"\"a\"\": \"\"x,\ny\"\"}\", t1 ,u1,-10,spend,  ,ignored\n";
        assert_eq!(
            rows(LegacyFile::Transactions, t),
            json!([[2, "t1", "u1", "-10", "spend", null, " {\"a\": \"x,\ny\"}", "t0"]]),
            "fields are trimmed, but the metadata"
        );
        let p = "id,user_id,stripe_payment_intent_id,amount,status,created_at,updated_at\r\np1,u1,pi_1,500,PAID,,\r\n";
        assert_eq!(rows(LegacyFile::Payments, p), json!([[2, "p1", "u1", "pi_1", "500", "PAID", null, null]]));
        let header_only = "id,user_id,stripe_payment_intent_id,amount,status,created_at,updated_at";
        assert_eq!(rows(LegacyFile::Payments, header_only), json!([]));
    }

    #[test]
    fn a_malformed_file_or_a_missing_column_is_refused_with_its_line() {
        let e = rows_json(LegacyFile::Users, &format!("{USERS}u1,\"a@x.io,1,,,\n")).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "unterminated quoted field"));
        let e = rows_json(LegacyFile::Payments, USERS).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (1, "the header has no column `user_id`"));
    }

    #[test]
    fn the_file_names_are_the_legacy_exports() {
        for f in LegacyFile::ALL {
            assert_eq!(LegacyFile::from_name(f.name()), Some(f));
        }
        assert_eq!(LegacyFile::from_name("transactions"), None);
        let sql = include_str!("../../migrations/0011_credit_import.sql");
        assert!(sql.contains("'users', 'payments', 'credit_transactions'"));
    }
}

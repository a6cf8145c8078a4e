//! The `customers` table (migration 0010): customer records, imported from
//! `LEGACY_AUTH_KV` or created through the customer API. Statements only: the caller
//! runs them in one batch and reads the record from the last one.

use serde_json::Value;

use super::db::{Param, Row, Stmt};
use crate::domain::customer::{Customer, JSON_FIELDS, TEXT_FIELDS, TIME_FIELDS};

macro_rules! columns {
    () => {
        "id, email, name, display_name, company_name, plan, tier, status, \
         subscriptions, flairs, config, features, created_at, updated_at, extra, user_id"
    };
}

/// The record an email resolves to when several share it: the one the legacy email
/// mapping names (`mapped`, migration 0012), else the oldest, then by id.
/// `/customer/by-email`, linking and `verify` all use this order.
macro_rules! by_email_order {
    () => {
        " ORDER BY mapped DESC, created_at IS NULL, created_at, id LIMIT 1"
    };
}

pub const BY_ID: &str = concat!("SELECT ", columns!(), ", mapped FROM customers WHERE id = ?1");
pub const BY_USER: &str = concat!("SELECT ", columns!(), ", mapped FROM customers WHERE user_id = ?1");
/// By email hash.
pub const BY_EMAIL: &str =
    concat!("SELECT ", columns!(), ", mapped FROM customers WHERE email_hash = ?1", by_email_order!());

pub fn select(sql: &'static str, key: &str) -> Stmt {
    Stmt { sql, params: vec![key.into()] }
}

/// A record, the user it is linked to, and whether it is its email's record by the
/// legacy mapping (or was created here).
pub struct Stored {
    pub customer: Customer,
    pub user_id: Option<String>,
    pub mapped: bool,
}

pub fn from_row(row: &Row) -> Stored {
    let mut c = Customer { id: row.text("id").unwrap_or_default(), ..Customer::default() };
    for (i, (_, col)) in TEXT_FIELDS.iter().enumerate() {
        c.text[i] = row.text(col);
    }
    let json = |col: &str| row.text(col).and_then(|t| serde_json::from_str::<Value>(&t).ok());
    for (i, (_, col)) in JSON_FIELDS.iter().enumerate() {
        c.json[i] = json(col);
    }
    for (i, (_, col)) in TIME_FIELDS.iter().enumerate() {
        c.times[i] = row.int(col);
    }
    if let Some(Value::Object(extra)) = json("extra") {
        c.extra = extra;
    }
    Stored { customer: c, user_id: row.text("user_id"), mapped: row.int("mapped") == Some(1) }
}

fn json_param(v: Option<&Value>) -> Param {
    v.map(crate::util::json_text).into()
}

/// Inserts `c` unless its id (or `user_id`) is taken — and, for a record created
/// through the API (`imported_at` = `None`), unless its email has a record. A legacy
/// import (`imported_at` set, source `legacy`) keeps records that share an email.
/// Returns the id when inserted.
pub fn insert_stmt(c: &Customer, user_id: Option<&str>, imported_at: Option<i64>) -> Stmt {
    let mut params: Vec<Param> = vec![c.id.as_str().into()];
    params.extend(c.text.iter().map(|t| t.as_deref().into()));
    params.extend(c.json.iter().map(|v| json_param(v.as_ref())));
    params.extend(c.times.iter().map(|t| (*t).into()));
    params.push(if c.extra.is_empty() {
        Param::Null
    } else {
        crate::util::json_text(&Value::Object(c.extra.clone())).into()
    });
    params.push(user_id.into());
    params.push(c.email_hash().into());
    params.push(imported_at.into());
    Stmt {
        sql: concat!(
            "INSERT INTO customers (",
            columns!(),
            ", email_hash, imported_at, source, mapped) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
                    iif(?18 ISNULL, 'api', 'legacy'), ?18 ISNULL \
             WHERE ?18 IS NOT NULL OR ?17 IS NULL OR NOT EXISTS (SELECT 1 FROM customers WHERE email_hash = ?17) \
             ON CONFLICT DO NOTHING RETURNING id"
        ),
        params,
    }
}

/// One row when record `id` is not in D1 (what a dry-run backfill would import).
pub fn absent_stmt(id: &str) -> Stmt {
    Stmt { sql: "SELECT 1 AS x WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = ?1)", params: vec![id.into()] }
}

/// Links record `id` to `user_id` when its email is `hash`, it is linked to nobody and
/// the user has no record yet: a record is linked once, never re-linked.
pub fn link_stmt(id: &str, user_id: &str, hash: &str) -> Stmt {
    Stmt {
        sql: "UPDATE customers SET user_id = ?2 WHERE id = ?1 AND user_id IS NULL AND email_hash = ?3 \
              AND NOT EXISTS (SELECT 1 FROM customers WHERE user_id = ?2)",
        params: vec![id.into(), user_id.into(), hash.into()],
    }
}

/// Links the record email hash `hash` resolves to (see `BY_EMAIL`) to `user_id` when it
/// is linked to nobody and the user has no record yet.
pub fn link_by_email_stmt(user_id: &str, hash: &str) -> Stmt {
    Stmt {
        sql: concat!(
            "UPDATE customers SET user_id = ?1 WHERE id = (SELECT id FROM customers WHERE email_hash = ?2",
            by_email_order!(),
            ") AND user_id IS NULL AND NOT EXISTS (SELECT 1 FROM customers WHERE user_id = ?1)"
        ),
        params: vec![user_id.into(), hash.into()],
    }
}

/// Marks record `id` as the one its email resolves to (and no other record of email
/// `hash`) when it has that email: the legacy mapping named it.
pub fn mark_stmt(id: &str, hash: &str) -> Stmt {
    mark_page_stmt(crate::util::json_text(&Value::from(vec![Value::from(vec![hash, id])])), false)
}

/// [`mark_stmt`] for a page of legacy email mappings (a JSON array of `[hash,
/// customerId]`; with `dry_run` only counted): a row with `applied` = 1 per mapping
/// applied (its record is in D1 with that email).
pub fn mark_page_stmt(pairs: String, dry_run: bool) -> Stmt {
    Stmt {
        sql: if dry_run {
            "SELECT 1 AS applied FROM json_each(?1) j JOIN customers r ON r.id = j.value->>1 AND r.email_hash = j.value->>0"
        } else {
            "UPDATE customers SET mapped = (customers.id = m.id) \
              FROM (SELECT value->>0 AS hash, value->>1 AS id FROM json_each(?1)) m \
              WHERE customers.email_hash = m.hash \
              AND EXISTS (SELECT 1 FROM customers r WHERE r.id = m.id AND r.email_hash = m.hash) \
              RETURNING mapped AS applied"
        },
        params: vec![pairs.into()],
    }
}

/// Stores the profile fields of `c` (the only ones the API changes) and its `updatedAt`.
pub fn update_profile_stmt(c: &Customer) -> Stmt {
    Stmt {
        sql: "UPDATE customers SET name = ?2, display_name = ?3, company_name = ?4, config = ?5, updated_at = ?6 \
              WHERE id = ?1",
        params: vec![
            c.id.as_str().into(),
            c.text[1].as_deref().into(),
            c.text[2].as_deref().into(),
            c.text[3].as_deref().into(),
            json_param(c.json[2].as_ref()),
            c.times[1].into(),
        ],
    }
}

/// For a page of legacy record ids (a JSON array): `m`, the JSON array of mismatches
/// (records missing from D1), and `n`, the records in D1.
pub fn missing_records_stmt(ids: &[String]) -> Stmt {
    Stmt {
        sql: "SELECT (SELECT COUNT(*) FROM customers) AS n, \
                (SELECT json_group_array(json_object('key', 'customer_' || j.value, 'problem', 'missing_in_d1')) \
                 FROM json_each(?1) j WHERE j.value NOT IN (SELECT id FROM customers)) AS m",
        params: vec![crate::util::json_text(&Value::from(ids.to_vec())).into()],
    }
}

/// For a page of email mappings (a JSON array of `[hash, customerId]`): `m`, the JSON
/// array of mismatches — the record is missing, has another email, or the email
/// resolves to another record — and `n`, the records in D1.
pub fn mapping_mismatches_stmt(pairs: Value) -> Stmt {
    Stmt {
        sql: concat!(
            "SELECT (SELECT COUNT(*) FROM customers) AS n, \
               (SELECT json_group_array(json_object('key', 'email_to_customer_' || hash, 'customerId', id, \
                                                    'problem', problem, 'resolvesTo', resolved)) \
                FROM (SELECT m.hash AS hash, m.id AS id, m.resolved AS resolved, \
                        CASE WHEN c.id IS NULL THEN 'record_missing' \
                        WHEN c.email_hash IS NOT m.hash THEN 'email_differs' \
                        WHEN m.resolved IS NOT m.id THEN 'resolves_elsewhere' END AS problem \
                      FROM (SELECT json_extract(j.value, '$[0]') AS hash, json_extract(j.value, '$[1]') AS id, \
                              (SELECT r.id FROM customers r WHERE r.email_hash = json_extract(j.value, '$[0]')",
            by_email_order!(),
            ") AS resolved FROM json_each(?1) j) m \
                      LEFT JOIN customers c ON c.id = m.id) \
                WHERE problem IS NOT NULL) AS m"
        ),
        params: vec![crate::util::json_text(&pairs).into()],
    }
}

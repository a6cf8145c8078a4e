//! The legacy credit import (migrations/0011_credit_import.sql): the three exports
//! staged in D1, then imported set-wise: a handful of statements whatever the number of
//! users, in one batch (one transaction).

use serde_json::Value;

use super::db::{Db, Param, Stmt};
use crate::domain::credit_import::LegacyFile;
use crate::domain::csv::CsvError;
use crate::error::ApiError;

/// The most JSON text one file may take (D1 binds values of up to 2 MB).
const MAX_JSON: usize = 1_900_000;

/// The first record of a file (`[line, id, …]` rows in `?1`) whose id is missing or
/// repeated, or whose number (JSON path `?2`, named `?3`) is not a whole number from
/// `?4` to 10^12 (or missing, unless `?5`), kept as the upload's fault: the statements
/// after it stage nothing when there is one.
const VALIDATE: &str = "INSERT INTO legacy_credit_upload_errors (line, why) \
     WITH r AS MATERIALIZED (SELECT value->>0 AS line, value->>1 AS id, value->>?2 AS n FROM json_each(?1)) \
     SELECT line, why FROM ( \
       SELECT line, 'the id is empty' AS why FROM r WHERE id ISNULL \
       UNION ALL SELECT line, '`' || ?3 || '` must be a whole number' || iif(?4 = 0, ' from 0', '') || ', not `' || ifnull(n, '') || '`' \
         FROM r WHERE iif(n ISNULL, NOT ?5, n <> CAST(CAST(n AS INTEGER) AS TEXT) OR CAST(n AS INTEGER) NOT BETWEEN ?4 AND 1000000000000) \
       UNION ALL SELECT line, 'the id `' || id || '` is on line ' || first || ' too' FROM ( \
         SELECT line, id, MIN(line) OVER w AS first, ROW_NUMBER() OVER w AS k FROM r WHERE id NOTNULL WINDOW w AS (PARTITION BY id ORDER BY line)) \
         WHERE k = 2) \
     ORDER BY line LIMIT 1";

macro_rules! if_valid {
    () => {
        " WHERE NOT EXISTS (SELECT 1 FROM legacy_credit_upload_errors)"
    };
}

/// The first row of `?1` whose id is staged already (by an earlier part), kept as the
/// upload's fault.
macro_rules! staged_already {
    ($table:literal) => {
        concat!(
            "INSERT INTO legacy_credit_upload_errors (line, why) SELECT value->>0, 'the id `' || (value->>1) || \
             '` is staged already (by an earlier part)' FROM json_each(?1) WHERE value->>1 IN (SELECT id FROM ",
            $table,
            ") AND NOT EXISTS (SELECT 1 FROM legacy_credit_upload_errors) LIMIT 1"
        )
    };
}

/// Per file: its number column (in `columns()`), that number's minimum and whether it
/// may be missing; the statements that replace the staged copy with the rows of `?1`,
/// and the check of an appended part.
fn staging(file: LegacyFile) -> (usize, i64, bool, [&'static str; 3]) {
    const MIN: i64 = -1_000_000_000_000;
    match file {
        LegacyFile::Users => (
            2,
            0,
            true,
            [
                concat!("DELETE FROM legacy_users", if_valid!()),
                staged_already!("legacy_users"),
                concat!(
                    "INSERT INTO legacy_users (id, email, email_hash, credits_balance, stripe_customer_id, created_at, updated_at) \
                     SELECT value->>1, value->>2, value->>7, ifnull(value->>3, 0), value->>4, value->>5, value->>6 FROM json_each(?1)",
                    if_valid!()
                ),
            ],
        ),
        LegacyFile::Payments => (
            3,
            MIN,
            true,
            [
                concat!("DELETE FROM legacy_payments", if_valid!()),
                staged_already!("legacy_payments"),
                concat!(
                    "INSERT INTO legacy_payments (id, user_id, stripe_payment_intent_id, amount, status, created_at, updated_at) \
                     SELECT value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7 FROM json_each(?1)",
                    if_valid!()
                ),
            ],
        ),
        LegacyFile::Transactions => (
            2,
            MIN,
            false,
            [
                concat!("DELETE FROM legacy_credit_transactions", if_valid!()),
                staged_already!("legacy_credit_transactions"),
                // The ledger's reason when it has the legacy one, else `migration`.
                concat!(
                    "INSERT INTO legacy_credit_transactions (id, user_id, delta, reason, legacy_reason, stripe_event_id, metadata, created_at) \
                     SELECT value->>1, value->>2, value->>3, iif(lower(value->>4) IN ('purchase', 'grant', 'spend', 'refund', 'adjustment'), \
                            lower(value->>4), 'migration'), value->>4, value->>5, value->>6, value->>7 FROM json_each(?1)",
                    if_valid!()
                ),
            ],
        ),
    }
}

/// A file to stage: which, its rows (`rows_json`), their number, and whether they are
/// a further part of the staged copy (`append`) rather than its replacement.
pub struct Upload<'a> {
    pub file: LegacyFile,
    pub rows: &'a str,
    pub count: usize,
    pub append: bool,
}

/// In one batch: checks an uploaded file's rows and, when every one is right, replaces
/// the staged copy of the file with them — or adds them to it, for a part appended
/// (whose ids must not be staged already) — else nothing is staged and the first fault
/// is answered with its line; then lists the staged files, `{name: rows}`.
pub async fn stage(db: &Db, upload: Option<Upload<'_>>, now: i64) -> Result<(Value, Option<CsvError>), ApiError> {
    let mut stmts = Vec::new();
    if let Some(u) = &upload {
        if u.rows.len() > MAX_JSON {
            return Err(ApiError::InvalidRequest("the file is too large for one call".into()));
        }
        let (column, min, empty_ok, [delete, staged_already, insert]) = staging(u.file);
        stmts.push(Stmt { sql: "DELETE FROM legacy_credit_upload_errors", params: vec![] });
        stmts.push(Stmt {
            sql: VALIDATE,
            params: vec![
                u.rows.into(),
                // Each row starts with its line: column k is at k + 1.
                format!("$[{}]", column + 1).into(),
                u.file.columns()[column].into(),
                Param::Int(min),
                Param::Int(i64::from(empty_ok)),
            ],
        });
        if u.append {
            stmts.push(Stmt { sql: staged_already, params: vec![u.rows.into()] });
        } else {
            stmts.push(Stmt { sql: delete, params: vec![] });
        }
        stmts.push(Stmt { sql: insert, params: vec![u.rows.into()] });
        stmts.push(Stmt {
            sql: concat!(
                "INSERT INTO legacy_credit_files (name, rows, uploaded_at) SELECT ?1, ?2, ?3",
                if_valid!(),
                " ON CONFLICT(name) DO UPDATE SET rows = excluded.rows + iif(?4, rows, 0), uploaded_at = excluded.uploaded_at"
            ),
            params: vec![
                u.file.name().into(),
                Param::Int(u.count as i64),
                Param::Int(now),
                Param::Int(i64::from(u.append)),
            ],
        });
        stmts.push(Stmt { sql: "SELECT line, why FROM legacy_credit_upload_errors", params: vec![] });
    }
    stmts.push(Stmt { sql: "SELECT json_group_object(name, rows) AS staged FROM legacy_credit_files", params: vec![] });
    let mut results = db.batch_rows(&stmts).await?;
    let staged = results.pop().and_then(|rows| rows.into_iter().next()).and_then(|r| r.text("staged"));
    let staged = serde_json::from_str(&staged.unwrap_or_default())
        .map_err(|e| ApiError::server(format!("staged files: {e}")))?;
    let fault = results.pop().and_then(|rows| rows.into_iter().next()).map(|bad| CsvError {
        line: bad.int("line").unwrap_or(0) as usize,
        message: bad.text("why").unwrap_or_default(),
    });
    Ok((staged, fault))
}

/// A legacy time (`2024-05-01 12:00:00…`, ISO 8601) in unix seconds, its first 19
/// characters read as UTC; the import time when unreadable.
macro_rules! legacy_time {
    ($col:literal) => {
        concat!("ifnull(CAST(strftime('%s', substr(", $col, ", 1, 19)) AS INTEGER), ?1)")
    };
}

/// Matches each legacy user to a plangate user: by Stripe customer id, else by a
/// verified customer record (`customers.user_id` set) with the same email hash whose
/// email no other user verified. A plangate user is matched by one legacy user at most:
/// when several reach it, a Stripe customer match beats an email one, and those left
/// tied (or beaten) keep the user in `user_id` (the report's `userId`) but no
/// `matched_by`: unmatched.
const MATCH: [&str; 4] = [
    "UPDATE legacy_users SET user_id = NULL, matched_by = NULL",
    "UPDATE legacy_users SET matched_by = 'stripe_customer', \
       user_id = (SELECT id FROM users WHERE stripe_customer_id = legacy_users.stripe_customer_id) \
     WHERE stripe_customer_id IN (SELECT stripe_customer_id FROM users)",
    "WITH v AS (SELECT email_hash AS h, MIN(c.user_id) AS u FROM customers c JOIN users ON users.id = c.user_id \
                GROUP BY email_hash HAVING COUNT(DISTINCT c.user_id) = 1) \
     UPDATE legacy_users SET matched_by = 'verified_email', user_id = (SELECT u FROM v WHERE h = email_hash) \
     WHERE user_id ISNULL AND email_hash IN (SELECT h FROM v)",
    "UPDATE legacy_users AS l SET matched_by = NULL WHERE EXISTS (SELECT 1 FROM legacy_users o \
       WHERE o.user_id = l.user_id AND o.id <> l.id AND o.matched_by <= l.matched_by)",
];

/// The ledger rows of matched users' legacy transactions, once each (`legacy:<id>`).
const IMPORT_TRANSACTIONS: &str = concat!(
    "INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) \
     SELECT 'ct_' || lower(hex(randomblob(12))), u.user_id, t.delta, t.reason, 'legacy:' || t.id, t.stripe_event_id, \
            json_object('legacyId', t.id, 'legacyUserId', t.user_id, 'legacyReason', t.legacy_reason, \
                        'legacyMetadata', iif(json_valid(t.metadata), json(t.metadata), t.metadata), 'legacyCreatedAt', t.created_at), ",
    legacy_time!("t.created_at"),
    " FROM legacy_credit_transactions t JOIN legacy_users u ON u.id = t.user_id WHERE u.matched_by NOTNULL \
     ON CONFLICT(source_key) DO NOTHING"
);

/// Per legacy user (`?2` = 1: as the ledger will be once the import ran; 0: as it is):
/// `user_id` when matched (`cand`: the user it reached), `tx` transactions, `done` of
/// them in the ledger; `n` its rows in the ledger (`legacy:` and `legacy-balance:`
/// rows, found by their legacy user id, whatever export wrote them) of `held` credits,
/// `fixes` of them balance rows, `pend` those of its transactions still to import; `nw`
/// whether a balance row is due, `imp` the credits the ledger holds (will hold) for it.
macro_rules! per_user {
    () => {
        "WITH f AS (SELECT metadata->>'legacyUserId' AS lid, SUM(delta) AS held, COUNT(*) AS n, COUNT(*) FILTER (WHERE source_key < 'legacy:') AS fixes \
           FROM credit_transactions WHERE source_key >= 'legacy-balance:' AND source_key < 'legacy;' GROUP BY 1), \
         u AS (SELECT *, user_id NOTNULL AND ?2 AND balance <> held + pend AS nw, iif(user_id NOTNULL AND ?2, balance, held + pend) AS imp \
           FROM (SELECT u.id, u.email, u.stripe_customer_id AS cus, iif(u.matched_by NOTNULL, u.user_id, NULL) AS user_id, u.user_id AS cand, \
               u.matched_by AS how, u.credits_balance AS balance, COUNT(t.id) AS tx, COUNT(c.id) AS done, \
               ifnull(SUM(t.delta) FILTER (WHERE ?2 AND c.id ISNULL), 0) AS pend, ifnull(held, 0) AS held, ifnull(n, 0) AS n, ifnull(fixes, 0) AS fixes \
             FROM legacy_users u LEFT JOIN f ON lid = u.id LEFT JOIN legacy_credit_transactions t ON t.user_id = u.id \
               LEFT JOIN credit_transactions c ON c.source_key = 'legacy:' || t.id GROUP BY u.id))"
    };
}

/// For each matched user whose legacy rows do not sum to their legacy balance, one
/// `migration` row for the difference: the first `legacy-balance:<legacy user id>`, the
/// n-th (a later export) `…:<n>`.
const IMPORT_BALANCES: &str = concat!(
    per_user!(),
    " INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, metadata, created_at) \
     SELECT 'ct_' || lower(hex(randomblob(12))), user_id, balance - held, 'migration', \
            'legacy-balance:' || id || iif(fixes, ':' || (fixes + 1), ''), \
            json_object('legacyUserId', id, 'legacyBalance', balance, 'legacyRows', held), ?1 \
     FROM u WHERE nw ON CONFLICT(source_key) DO NOTHING"
);

/// Matched users' legacy payments, kept in `stripe_payments` (id: the payment intent,
/// else `legacy:<id>`; status `legacy:<status>`; dated before any Stripe event, so a
/// later event about the same payment intent wins).
const IMPORT_PAYMENTS: &str = concat!(
    "INSERT INTO stripe_payments (id, user_id, customer_id, amount, status, last_event_id, last_event_created, created_at, updated_at) \
     SELECT ifnull(p.stripe_payment_intent_id, 'legacy:' || p.id), u.user_id, u.stripe_customer_id, p.amount, \
            'legacy:' || lower(ifnull(p.status, 'unknown')), 'legacy:' || p.id, 0, ",
    legacy_time!("p.created_at"),
    ", ?1 FROM legacy_payments p JOIN legacy_users u ON u.id = p.user_id WHERE u.matched_by NOTNULL \
     ON CONFLICT(id) DO NOTHING"
);

/// The report, one JSON object (figures of `per_user`).
const REPORT: &str = concat!(
    per_user!(),
    ", \
     p AS (SELECT ifnull(stripe_payment_intent_id, 'legacy:' || id) AS sid, ifnull(user_id IN (SELECT id FROM u WHERE user_id NOTNULL), 0) AS m, \
             ifnull(user_id IN (SELECT id FROM u), 0) AS known FROM legacy_payments) \
     SELECT json_object( \
       'legacyCredits', ifnull(SUM(balance), 0), \
       'matchedCredits', ifnull(SUM(balance) FILTER (WHERE user_id NOTNULL), 0), \
       'importedCredits', ifnull(SUM(imp) FILTER (WHERE user_id NOTNULL), 0), \
       'difference', ifnull(SUM(balance - imp) FILTER (WHERE user_id NOTNULL), 0), \
       'unmatchedCredits', ifnull(SUM(balance) FILTER (WHERE user_id ISNULL), 0), \
       'users', json_object('total', COUNT(*), 'matched', COUNT(user_id), 'unmatched', COUNT(*) - COUNT(user_id), \
         'byStripeCustomer', COUNT(*) FILTER (WHERE how = 'stripe_customer'), 'byVerifiedEmail', COUNT(*) FILTER (WHERE how = 'verified_email')), \
       'ledger', json_object('rows', ifnull(SUM(n + iif(?2, tx - done, 0) + nw) FILTER (WHERE user_id NOTNULL), 0), \
         'balanceRows', ifnull(SUM(fixes + nw) FILTER (WHERE user_id NOTNULL), 0)), \
       'written', json_object('ledgerRows', ifnull(SUM(tx - done + nw) FILTER (WHERE user_id NOTNULL), 0), 'balanceRows', ifnull(SUM(nw), 0), \
         'payments', (SELECT COUNT(DISTINCT sid) FROM p WHERE m AND sid NOT IN (SELECT id FROM stripe_payments))), \
       'transactions', json_object('ofMatchedUsers', ifnull(SUM(tx) FILTER (WHERE user_id NOTNULL), 0), \
         'ofUnmatchedUsers', ifnull(SUM(tx) FILTER (WHERE user_id ISNULL), 0), \
         'orphans', (SELECT COUNT(*) FROM legacy_credit_transactions WHERE user_id NOT IN (SELECT id FROM u) OR user_id ISNULL)), \
       'payments', json((SELECT json_object('ofMatchedUsers', COUNT(*) FILTER (WHERE m), 'ofUnmatchedUsers', COUNT(*) FILTER (WHERE known AND NOT m), \
         'orphans', COUNT(*) FILTER (WHERE NOT known), \
         'recorded', iif(?2, COUNT(DISTINCT sid) FILTER (WHERE m), COUNT(DISTINCT sid) FILTER (WHERE m AND sid IN (SELECT id FROM stripe_payments)))) FROM p)), \
       'matched', json_group_array(json_object('legacyId', id, 'userId', user_id, 'by', how)) FILTER (WHERE user_id NOTNULL), \
       'unmatched', json_group_array(json_object('legacyId', id, 'email', email, 'stripeCustomerId', cus, 'creditsBalance', balance, \
         'userId', cand, 'reason', iif(cand NOTNULL, 'user_matched_twice', NULL))) \
         FILTER (WHERE user_id ISNULL), \
       'orphanUserIds', json((SELECT json_group_array(DISTINCT user_id) FROM (SELECT user_id FROM legacy_credit_transactions UNION ALL \
         SELECT user_id FROM legacy_payments) WHERE user_id NOT IN (SELECT id FROM u) OR user_id ISNULL)) \
     ) AS report FROM u"
);

const CLEAR: [&str; 4] = [
    "DELETE FROM legacy_credit_files",
    "DELETE FROM legacy_users",
    "DELETE FROM legacy_payments",
    "DELETE FROM legacy_credit_transactions",
];

fn per_user_stmt(sql: &'static str, plan: bool, now: i64) -> Stmt {
    Stmt { sql, params: vec![Param::Int(now), Param::Int(i64::from(plan))] }
}

fn now_stmt(sql: &'static str, now: i64) -> Stmt {
    Stmt { sql, params: vec![Param::Int(now)] }
}

/// Runs the import of the staged files (or, `dry_run`, only its plan) in one batch and
/// answers the report: what the ledger holds for the legacy users after it (or would),
/// with `written` = the rows this run wrote (or would write). An import consumes the
/// staged files (a later one cannot mix them with another export's).
pub async fn run(db: &Db, dry_run: bool, now: i64) -> Result<Value, ApiError> {
    let mut stmts = Vec::new();
    for sql in MATCH {
        stmts.push(Stmt { sql, params: vec![] });
    }
    stmts.push(per_user_stmt(REPORT, true, now));
    if !dry_run {
        stmts.push(now_stmt(IMPORT_TRANSACTIONS, now));
        stmts.push(per_user_stmt(IMPORT_BALANCES, true, now));
        stmts.push(now_stmt(IMPORT_PAYMENTS, now));
        stmts.push(per_user_stmt(REPORT, false, now));
        for sql in CLEAR {
            stmts.push(Stmt { sql, params: vec![] });
        }
    }
    let results = db.batch_rows(&stmts).await?;
    let report = |i: usize| -> Result<Value, ApiError> {
        let text = results.get(i).and_then(|rows| rows.first()).and_then(|r| r.text("report"));
        serde_json::from_str(&text.unwrap_or_default()).map_err(|e| ApiError::server(format!("import report: {e}")))
    };
    let mut plan = report(MATCH.len())?;
    if dry_run {
        return Ok(plan);
    }
    let mut done = report(stmts.len() - 1 - CLEAR.len())?;
    done["written"] = plan["written"].take();
    Ok(done)
}

//! The test-account purge: the accounts a match names, and every D1 row of theirs
//! (each table that references `users`, then the users), counted and deleted in one
//! batch.

use serde_json::Value;

use super::db::{Db, Row, Stmt};
use crate::error::ApiError;

/// The accounts a purge lists, `{userId, authId, email}`: with `by_email`, the users
/// whose lower-cased email ends with `param`, in id order; else each auth id of the JSON
/// array `param` once, in order, with its user if D1 has one (else `userId` and `email`
/// null: an account only the legacy KV keys know).
pub async fn accounts(db: &Db, by_email: bool, param: &str) -> Result<Vec<Row>, ApiError> {
    let sql = if by_email {
        "SELECT id AS userId, auth_id AS authId, email FROM users WHERE substr(lower(email), -length(?1)) = ?1 ORDER BY id"
    } else {
        "SELECT u.id AS userId, j.value AS authId, u.email AS email FROM json_each(?1) j \
         LEFT JOIN users u ON u.auth_id = j.value GROUP BY j.value ORDER BY MIN(j.key)"
    };
    db.rows_of(sql, &[param.into()]).await
}

macro_rules! of_users {
    () => {
        " WHERE user_id IN (SELECT value FROM json_each(?1))"
    };
}
macro_rules! customers_of_users {
    () => {
        " FROM customers WHERE user_id IN (SELECT value FROM json_each(?1)) \
          OR (user_id IS NULL AND email_hash IN (SELECT value FROM json_each(?2)))"
    };
}

/// The rows of the users per table, as a JSON object (`customers`: also the records
/// not linked to any user whose email hash is one of theirs).
const COUNT: &str = concat!(
    "SELECT json_object('users', (SELECT COUNT(*) FROM users WHERE id IN (SELECT value FROM json_each(?1))), \
     'usage', (SELECT COUNT(*) FROM usage",
    of_users!(),
    "), 'usage_requests', (SELECT COUNT(*) FROM usage_requests",
    of_users!(),
    "), 'credit_transactions', (SELECT COUNT(*) FROM credit_transactions",
    of_users!(),
    "), 'customers', (SELECT COUNT(*)",
    customers_of_users!(),
    "), 'billing_locks', (SELECT COUNT(*) FROM billing_locks",
    of_users!(),
    "), 'kv_outbox', (SELECT COUNT(*) FROM kv_outbox",
    of_users!(),
    "), 'plan_changes', (SELECT COUNT(*) FROM plan_changes",
    of_users!(),
    "), 'stripe_payments', (SELECT COUNT(*) FROM stripe_payments",
    of_users!(),
    ")) AS rows"
);

/// Children first: every table that references `users`, then the users.
const DELETE: [&str; 9] = [
    concat!("DELETE FROM usage", of_users!()),
    concat!("DELETE FROM usage_requests", of_users!()),
    concat!("DELETE FROM credit_transactions", of_users!()),
    concat!("DELETE", customers_of_users!()),
    concat!("DELETE FROM billing_locks", of_users!()),
    concat!("DELETE FROM kv_outbox", of_users!()),
    concat!("DELETE FROM plan_changes", of_users!()),
    concat!("DELETE FROM stripe_payments", of_users!()),
    "DELETE FROM users WHERE id IN (SELECT value FROM json_each(?1))",
];

/// Counts the rows of the users (ids and their email hashes as JSON arrays) in each
/// table and, unless `dry_run`, deletes them, in one batch: the counts are of what the
/// deletes take.
pub async fn purge(db: &Db, user_ids_json: &str, hashes_json: &str, dry_run: bool) -> Result<Value, ApiError> {
    // Each statement binds the parameters it names (`?2` only where customers are).
    let params = |sql: &str| {
        let mut p = vec![user_ids_json.into()];
        if sql.contains("?2") {
            p.push(hashes_json.into());
        }
        p
    };
    let mut stmts = vec![Stmt { sql: COUNT, params: params(COUNT) }];
    if !dry_run {
        for sql in DELETE {
            stmts.push(Stmt { sql, params: params(sql) });
        }
    }
    let rows = db.batch_rows(&stmts).await?.into_iter().next().and_then(|rows| rows.into_iter().next());
    let text = rows.and_then(|r| r.text("rows")).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| ApiError::server(format!("purge counts: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_table_that_references_users_is_purged_before_the_users() {
        let mut schema = String::new();
        for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
            schema.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
        }
        let mut tables: Vec<&str> = schema
            .split("CREATE TABLE ")
            .skip(1)
            .filter(|t| t.split(");").next().unwrap_or_default().contains("REFERENCES users"))
            .map(|t| t.split_whitespace().next().unwrap())
            .collect();
        tables.push("customers");
        for t in tables {
            let delete = super::DELETE.iter().position(|d| {
                d.starts_with(&format!("DELETE FROM {t} ")) || (t == "customers" && d.contains("FROM customers"))
            });
            assert!(delete.is_some_and(|i| i < 8), "{t} is purged before users");
            assert!(super::COUNT.contains(&format!("'{t}'")), "{t} is counted");
        }
        assert!(super::DELETE[8].starts_with("DELETE FROM users "));
    }
}

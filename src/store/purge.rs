//! The test-account purge: the accounts a match names, and every D1 row of theirs
//! (each table that references `users`, then the users), counted and deleted in one
//! batch.

use serde_json::Value;

use super::db::{Db, Row, Stmt};
use crate::error::ApiError;

/// The accounts a purge lists, `{userId, authId, email, subscriptionStatus}` (and
/// `hasSubscription`: a Stripe subscription id; see `domain::purge::may_bill`): with `by_email`, the users
/// whose lower-cased email ends with `param`, in id order; else each auth id of the JSON
/// array `param` once, in order, with its user if D1 has one (else `userId` and `email`
/// null: an account only the legacy KV keys know).
pub async fn accounts(db: &Db, by_email: bool, param: &str) -> Result<Vec<Row>, ApiError> {
    let sql = if by_email {
        "SELECT id AS userId, auth_id AS authId, email, subscription_status AS subscriptionStatus, \
         stripe_subscription_id NOTNULL AS hasSubscription FROM users WHERE substr(lower(email), -length(?1)) = ?1 ORDER BY id"
    } else {
        "SELECT u.id AS userId, j.value AS authId, u.email AS email, u.subscription_status AS subscriptionStatus, \
         u.stripe_subscription_id NOTNULL AS hasSubscription FROM json_each(?1) j \
         LEFT JOIN users u ON u.auth_id = j.value GROUP BY j.value ORDER BY MIN(j.key)"
    };
    db.rows_of(sql, &[param.into()]).await
}

/// The users of `?1` that may go (`purgeable_users`, migrations 0013/0014: not billed, not
/// busy), checked again in every statement of the batch: their state may have changed
/// since the accounts were listed.
macro_rules! ids {
    () => {
        "WITH ids AS (SELECT id AS value FROM purgeable_users WHERE id IN (SELECT value FROM json_each(?1))) "
    };
}
/// Their records, and records linked to nobody: those with an email hash of `?2` (when
/// counting) or an id of `?3` (when deleting: what the count found, and no other).
macro_rules! customers {
    () => {
        " customers WHERE user_id IN ids OR (user_id ISNULL AND (email_hash IN (SELECT value FROM json_each(?2)) \
         OR id IN (SELECT value FROM json_each(?3))))"
    };
}

/// The rows of the users per table, as a JSON object (`customers`: also the records
/// not linked to any user whose email hash is one of theirs).
const COUNT: &str = concat!(
    ids!(),
    "SELECT json_object('users', (SELECT COUNT(*) FROM users WHERE id IN ids), \
     'usage', (SELECT COUNT(*) FROM usage WHERE user_id IN ids), \
     'usage_requests', (SELECT COUNT(*) FROM usage_requests WHERE user_id IN ids), \
     'credit_transactions', (SELECT COUNT(*) FROM credit_transactions WHERE user_id IN ids), \
     'customers', (SELECT COUNT(*) FROM",
    customers!(),
    "), 'billing_locks', (SELECT COUNT(*) FROM billing_locks WHERE user_id IN ids), \
     'kv_outbox', (SELECT COUNT(*) FROM kv_outbox WHERE user_id IN ids), \
     'plan_changes', (SELECT COUNT(*) FROM plan_changes WHERE user_id IN ids), \
     'stripe_payments', (SELECT COUNT(*) FROM stripe_payments WHERE user_id IN ids)) AS rows, \
     (SELECT json_group_array(id) FROM",
    customers!(),
    ") AS customerIds, (SELECT json_group_array(DISTINCT email_hash) FROM (SELECT email_hash FROM",
    customers!(),
    ") WHERE email_hash NOTNULL) AS customerHashes, (SELECT json_group_array(value) FROM ids) AS userIds"
);

/// What a purge counted: the rows per table (a JSON object), and the customer records
/// it takes (their ids and email hashes), whose legacy keys go too.
pub struct Counted {
    pub rows: Value,
    pub customer_ids: Vec<String>,
    pub customer_hashes: Vec<String>,
    /// The users counted (and deleted): those of the ids that may go.
    pub user_ids: Vec<String>,
}

/// Children first: every table that references `users`, then the users.
const DELETE: [&str; 9] = [
    concat!(ids!(), "DELETE FROM usage WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM usage_requests WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM credit_transactions WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM", customers!()),
    concat!(ids!(), "DELETE FROM billing_locks WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM kv_outbox WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM plan_changes WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM stripe_payments WHERE user_id IN ids"),
    concat!(ids!(), "DELETE FROM users WHERE id IN ids"),
];

/// Counts the rows of the users (ids as a JSON array) in each table — with the records
/// linked to nobody of email hashes `hashes` — or, with `delete`, counts and deletes
/// them in one batch, the unlinked records taken being those of ids `delete` (what a
/// count found): the counts are of what the deletes take.
pub async fn purge(db: &Db, user_ids_json: &str, hashes_json: &str, delete: Option<&str>) -> Result<Counted, ApiError> {
    let (hashes, records) = match delete {
        Some(records) => ("[]", records),
        None => (hashes_json, "[]"),
    };
    // Each statement binds the parameters it names (D1 counts them): `?2` and `?3`
    // only where customers are.
    let stmt = |sql: &'static str| Stmt {
        sql,
        params: if sql.contains("?2") {
            vec![user_ids_json.into(), hashes.into(), records.into()]
        } else {
            vec![user_ids_json.into()]
        },
    };
    let mut stmts = vec![stmt(COUNT)];
    if delete.is_some() {
        stmts.extend(DELETE.map(stmt));
    }
    let row = db.batch_rows(&stmts).await?.into_iter().next().and_then(|rows| rows.into_iter().next());
    let json = |name: &str| -> Result<Value, ApiError> {
        let text = row.as_ref().and_then(|r| r.text(name)).unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| ApiError::server(format!("purge {name}: {e}")))
    };
    let texts = |v: Value| -> Vec<String> {
        match v {
            Value::Array(items) => items.into_iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    };
    Ok(Counted {
        rows: json("rows")?,
        customer_ids: texts(json("customerIds")?),
        customer_hashes: texts(json("customerHashes")?),
        user_ids: texts(json("userIds")?),
    })
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
            let delete = super::DELETE.iter().position(|d| d.contains(&format!("DELETE FROM {t} ")));
            assert!(delete.is_some_and(|i| i < 8), "{t} is purged before users");
            assert!(super::COUNT.contains(&format!("'{t}'")), "{t} is counted");
        }
        assert!(super::DELETE[8].contains("DELETE FROM users "));
    }
}

//! The `usage` and `usage_requests` tables: uses of a feature per period, counted in
//! one conditional statement (or paid in credits), with the first answer to an
//! idempotency key kept: one key space per user for every kind of use.

use super::db::{Db, Param, Row, Stmt};
use crate::error::ApiError;

/// This period's usage of every feature the user used.
pub async fn used_in(db: &Db, user_id: &str, period: &str) -> Result<Vec<(String, u64)>, ApiError> {
    let rows = db
        .rows_of("SELECT feature, used FROM usage WHERE user_id = ?1 AND period = ?2", &[user_id.into(), period.into()])
        .await?;
    Ok(rows.into_iter().filter_map(|r| Some((r.text("feature")?, r.int("used")?.max(0) as u64))).collect())
}

/// One consume as asked.
pub struct Consume<'a> {
    pub user_id: &'a str,
    pub period: &'a str,
    pub period_end: i64,
    pub feature: &'a str,
    pub amount: u64,
    /// `None`: unlimited (counted all the same).
    pub limit: Option<u64>,
    pub key: &'a str,
    /// The request's id: only the request that created the key's row may count.
    pub token: &'a str,
}

/// The first answer to a key, as stored on its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; `used` after it.
    Counted(u64),
    /// Refused at the limit; `used` then.
    Quota(u64),
    /// Credits spent; the balance after.
    Spent(i64),
    /// Refused: the balance (then) did not cover it.
    Insufficient(i64),
}

/// What the key's row says after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// This request created the key's row (else it is a replay of an earlier one).
    pub first: bool,
    pub feature: String,
    pub amount: u64,
    pub outcome: Outcome,
}

/// Counts `c.amount` uses if that keeps `used <= limit`, in one round trip: the key's
/// row is claimed, the usage row incremented only under the limit and only by the
/// request holding the claim, the outcome stored on the key's row and read back. A
/// replayed key counts nothing and reads the first answer.
pub async fn consume(db: &Db, c: &Consume<'_>, now: i64) -> Result<Consumed, ApiError> {
    let limit = Param::from(c.limit.map(|l| l as i64));
    let amount = Param::Int(c.amount as i64);
    let stmts = [
        claim_key(c, now),
        Stmt {
            sql: "INSERT INTO usage (user_id, period, feature, used, period_end, last_key, updated_at) \
                  SELECT ?1, ?2, ?3, ?4, ?5, ?9, ?8 \
                  WHERE EXISTS (SELECT 1 FROM usage_requests WHERE user_id = ?1 AND idempotency_key = ?6 AND token = ?9) \
                    AND (?7 IS NULL OR ?4 <= ?7) \
                  ON CONFLICT(user_id, period, feature) DO UPDATE SET used = usage.used + excluded.used, \
                    last_key = excluded.last_key, updated_at = excluded.updated_at \
                  WHERE ?7 IS NULL OR usage.used + excluded.used <= ?7",
            params: vec![
                c.user_id.into(),
                c.period.into(),
                c.feature.into(),
                amount,
                Param::Int(c.period_end),
                c.key.into(),
                limit,
                Param::Int(now),
                c.token.into(),
            ],
        },
        Stmt {
            sql: "UPDATE usage_requests SET outcome = COALESCE( \
                    (SELECT CASE WHEN last_key = ?3 THEN 'ok:' ELSE 'quota:' END || used FROM usage \
                     WHERE user_id = ?1 AND period = ?4 AND feature = ?5), 'quota:0') \
                  WHERE user_id = ?1 AND idempotency_key = ?2 AND token = ?3",
            params: vec![c.user_id.into(), c.key.into(), c.token.into(), c.period.into(), c.feature.into()],
        },
        Stmt { sql: READ_KEY, params: vec![c.user_id.into(), c.key.into()] },
    ];
    answered(db, &stmts, c.token).await
}

/// Runs a consume batch (its last statement reads the key's row back) and reads the answer.
async fn answered(db: &Db, stmts: &[Stmt], token: &str) -> Result<Consumed, ApiError> {
    let mut results = db.batch_rows(stmts).await?;
    let row = results
        .pop()
        .and_then(|rows| rows.into_iter().next())
        .ok_or_else(|| ApiError::server("usage request row missing"))?;
    consumed_from(&row, token)
}

fn consumed_from(row: &Row, token: &str) -> Result<Consumed, ApiError> {
    let text = row.text("outcome").unwrap_or_default();
    // A row whose first request died mid-batch cannot exist (one transaction); be safe.
    let bad = || ApiError::server(format!("usage request outcome {text:?}"));
    let (kind, n) = text.split_once(':').ok_or_else(bad)?;
    let n: i64 = n.parse().map_err(|_| bad())?;
    let outcome = match kind {
        "ok" => Outcome::Counted(n.max(0) as u64),
        "quota" => Outcome::Quota(n.max(0) as u64),
        "spent" => Outcome::Spent(n),
        "credits" => Outcome::Insufficient(n),
        _ => return Err(bad()),
    };
    Ok(Consumed {
        first: row.text("token").as_deref() == Some(token),
        feature: row.text("feature").unwrap_or_default(),
        amount: row.int("amount").unwrap_or(0).max(0) as u64,
        outcome,
    })
}

const CLAIM_KEY: &str =
    "INSERT INTO usage_requests (user_id, idempotency_key, feature, amount, period, token, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(user_id, idempotency_key) DO NOTHING";
const READ_KEY: &str =
    "SELECT feature, amount, token, outcome FROM usage_requests WHERE user_id = ?1 AND idempotency_key = ?2";

/// Claims the request's key for it (nothing when the key was used before).
fn claim_key(c: &Consume<'_>, now: i64) -> Stmt {
    Stmt {
        sql: CLAIM_KEY,
        params: vec![
            c.user_id.into(),
            c.key.into(),
            c.feature.into(),
            Param::Int(c.amount as i64),
            c.period.into(),
            c.token.into(),
            Param::Int(now),
        ],
    }
}

/// The first answer to `key`, if the user used it before (replayed as is).
pub async fn earlier(db: &Db, user_id: &str, key: &str) -> Result<Option<Consumed>, ApiError> {
    match db.row(READ_KEY, &[user_id.into(), key.into()]).await? {
        Some(row) => consumed_from(&row, "").map(Some),
        None => Ok(None),
    }
}

/// A use of a feature paid in credits: `cost` credits spent from the ledger (row
/// `consume:<user>:<key>`, reason `spend`) only if the balance covers them, under the
/// same key claim as a counted use, in one round trip. The refusal is an answer too:
/// the same key replays it.
pub async fn consume_credits(
    db: &Db,
    c: &Consume<'_>,
    cost: i64,
    ledger_id: &str,
    now: i64,
) -> Result<Consumed, ApiError> {
    let source = format!("consume:{}:{}", c.user_id, c.key);
    let metadata =
        crate::util::json_text(&crate::obj! {"feature": c.feature, "uses": c.amount, "idempotencyKey": c.key});
    let stmts = [
        claim_key(c, now),
        Stmt {
            sql: "INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) \
                  SELECT ?1, ?2, -?3, 'spend', ?4, NULL, ?5, ?6 \
                  WHERE EXISTS (SELECT 1 FROM usage_requests WHERE user_id = ?2 AND idempotency_key = ?7 AND token = ?8) \
                    AND (SELECT COALESCE(SUM(delta), 0) FROM credit_transactions WHERE user_id = ?2) >= ?3 \
                  ON CONFLICT(source_key) DO NOTHING",
            params: vec![
                ledger_id.into(),
                c.user_id.into(),
                Param::Int(cost),
                source.as_str().into(),
                metadata.into(),
                Param::Int(now),
                c.key.into(),
                c.token.into(),
            ],
        },
        Stmt {
            sql: "UPDATE usage_requests SET outcome = \
                    CASE WHEN EXISTS (SELECT 1 FROM credit_transactions WHERE source_key = ?4 AND id = ?5) THEN 'spent:' ELSE 'credits:' END \
                    || (SELECT COALESCE(SUM(delta), 0) FROM credit_transactions WHERE user_id = ?1) \
                  WHERE user_id = ?1 AND idempotency_key = ?2 AND token = ?3",
            params: vec![c.user_id.into(), c.key.into(), c.token.into(), source.as_str().into(), ledger_id.into()],
        },
        Stmt { sql: READ_KEY, params: vec![c.user_id.into(), c.key.into()] },
    ];
    answered(db, &stmts, c.token).await
}

/// Keys are kept this long (retries come within minutes; a month is generous).
pub const REQUEST_RETENTION_SECONDS: i64 = 30 * 86_400;

/// Deletes usage requests older than the retention; returns how many.
pub async fn purge_requests(db: &Db, now: i64) -> Result<usize, ApiError> {
    db.execute(
        "DELETE FROM usage_requests WHERE created_at < ?1 RETURNING 1 AS n",
        &[Param::Int(now - REQUEST_RETENTION_SECONDS)],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_row_tells_first_or_replay_counted_or_refused() {
        let row = Row(json!({"feature": "cover_letter", "amount": 2, "token": "req_a", "outcome": "ok:7"}));
        let c = consumed_from(&row, "req_a").unwrap();
        assert_eq!(
            c,
            Consumed { first: true, feature: "cover_letter".into(), amount: 2, outcome: Outcome::Counted(7) }
        );
        assert!(!consumed_from(&row, "req_b").unwrap().first, "another request's row is a replay");
        let outcome = |o: &str| {
            consumed_from(&Row(json!({"feature": "f", "amount": 1, "token": "t", "outcome": o})), "t").unwrap().outcome
        };
        assert_eq!(outcome("quota:10"), Outcome::Quota(10));
        assert_eq!(outcome("spent:90"), Outcome::Spent(90));
        assert_eq!(outcome("credits:5"), Outcome::Insufficient(5));
        assert!(consumed_from(&Row(json!({"outcome": null})), "x").is_err());
        assert!(consumed_from(&Row(json!({"outcome": "ok:many"})), "x").is_err());
        assert!(consumed_from(&Row(json!({"outcome": "maybe:1"})), "x").is_err());
    }
}

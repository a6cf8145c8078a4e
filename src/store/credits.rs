//! The credit ledger (`credit_transactions`). The balance is the sum of a user's rows;
//! every debit is one conditional statement, so it never goes below zero whatever runs
//! at the same time, and every row has a `source_key` naming the business object it
//! comes from, so no grant, spend or refund can be written twice.

use super::db::{Db, Param, Row, Stmt};
use crate::error::ApiError;

/// A new ledger row id.
pub fn new_id() -> Result<String, ApiError> {
    Ok(format!("ct_{}", crate::util::random_hex(12)?))
}

const BALANCE: &str = "SELECT COALESCE(SUM(delta), 0) AS balance FROM credit_transactions WHERE user_id = ?1";

pub async fn balance(db: &Db, user_id: &str) -> Result<i64, ApiError> {
    Ok(db.row(BALANCE, &[user_id.into()]).await?.and_then(|r| r.int("balance")).unwrap_or(0))
}

pub fn balance_stmt(user_id: &str) -> Stmt {
    Stmt { sql: BALANCE, params: vec![user_id.into()] }
}

/// A credit (delta > 0) written once per `source_key`; a second write of the same key
/// does nothing.
pub struct Credit<'a> {
    pub id: String,
    pub user_id: &'a str,
    pub delta: i64,
    pub reason: &'static str,
    pub source_key: String,
    pub event_id: Option<&'a str>,
    pub metadata: String,
}

pub fn credit_stmt(c: &Credit<'_>, now: i64) -> Stmt {
    Stmt {
        sql: "INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) \
              VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(source_key) DO NOTHING",
        params: vec![
            c.id.as_str().into(),
            c.user_id.into(),
            Param::Int(c.delta),
            c.reason.into(),
            c.source_key.as_str().into(),
            c.event_id.into(),
            c.metadata.as_str().into(),
            Param::Int(now),
        ],
    }
}

/// A debit of `amount` credits, written only if the balance covers it, once per key.
pub struct Debit<'a> {
    pub id: String,
    pub user_id: &'a str,
    pub amount: i64,
    pub reason: &'static str,
    pub source_key: String,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Debited {
    /// Written now.
    Done { id: String, balance: i64 },
    /// The key was written before (by an earlier request): its row.
    Replayed { id: String, user_id: String, delta: i64, metadata: Option<String>, balance: i64 },
    /// Not written: the balance does not cover it.
    Insufficient { balance: i64 },
}

/// One round trip: the conditional insert, the key's row and the balance after.
pub async fn debit(db: &Db, d: &Debit<'_>, now: i64) -> Result<Debited, ApiError> {
    let stmts = [
        Stmt {
            sql: "INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) \
                  SELECT ?1, ?2, -?3, ?4, ?5, NULL, ?6, ?7 \
                  WHERE (SELECT COALESCE(SUM(delta), 0) FROM credit_transactions WHERE user_id = ?2) >= ?3 \
                  ON CONFLICT(source_key) DO NOTHING RETURNING id",
            params: vec![
                d.id.as_str().into(),
                d.user_id.into(),
                Param::Int(d.amount),
                d.reason.into(),
                d.source_key.as_str().into(),
                d.metadata.as_str().into(),
                Param::Int(now),
            ],
        },
        Stmt {
            sql: "SELECT id, user_id, delta, metadata FROM credit_transactions WHERE source_key = ?1",
            params: vec![d.source_key.as_str().into()],
        },
        balance_stmt(d.user_id),
    ];
    let mut results = db.batch_rows(&stmts).await?.into_iter();
    let inserted = results.next().unwrap_or_default();
    let existing = results.next().unwrap_or_default().into_iter().next();
    let balance = results.next().and_then(|r| r.into_iter().next()).and_then(|r| r.int("balance")).unwrap_or(0);
    Ok(debited_from(!inserted.is_empty(), existing, balance))
}

fn debited_from(inserted: bool, existing: Option<Row>, balance: i64) -> Debited {
    match (inserted, existing) {
        (true, Some(row)) => Debited::Done { id: row.text("id").unwrap_or_default(), balance },
        (false, Some(row)) => Debited::Replayed {
            id: row.text("id").unwrap_or_default(),
            user_id: row.text("user_id").unwrap_or_default(),
            delta: row.int("delta").unwrap_or(0),
            metadata: row.text("metadata"),
            balance,
        },
        (_, None) => Debited::Insufficient { balance },
    }
}

/// The refunds of a pack purchase settled: claws back `floor(granted × refunded /
/// amount)` credits minus what earlier refunds of the payment already took (or could
/// not take), never more than the balance; what could not be taken is recorded as the
/// row's `shortfall`. Keyed on the payment's cumulative refunded amount, so the same
/// refund state settles once, and a purchase granted after its refund arrived settles
/// it in the grant's batch. Nothing happens without a purchase row or a refund.
pub fn settle_refunds_stmt(id: &str, payment_id: &str, event_id: &str, now: i64) -> Stmt {
    Stmt {
        sql: "WITH p AS (SELECT amount, amount_refunded FROM stripe_payments WHERE id = ?2 AND amount > 0 AND amount_refunded > 0), \
                   g AS (SELECT user_id, delta FROM credit_transactions WHERE source_key = 'purchase:' || ?2), \
                   taken AS (SELECT COALESCE(SUM(json_extract(metadata, '$.clawback')), 0) AS n FROM credit_transactions \
                             WHERE source_key >= 'refund:' || ?2 || ':' AND source_key < 'refund:' || ?2 || ';'), \
                   need AS (SELECT g.user_id AS user_id, p.amount_refunded AS refunded, \
                                   MIN(g.delta, CAST((g.delta * p.amount_refunded) / p.amount AS INTEGER)) - taken.n AS n \
                            FROM p, g, taken), \
                   bal AS (SELECT COALESCE(SUM(delta), 0) AS b FROM credit_transactions WHERE user_id = (SELECT user_id FROM g)) \
              INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) \
              SELECT ?1, need.user_id, -MIN(need.n, MAX(bal.b, 0)), 'refund', 'refund:' || ?2 || ':' || need.refunded, ?3, \
                     json_object('paymentIntent', ?2, 'amountRefunded', need.refunded, 'clawback', need.n, \
                                 'shortfall', need.n - MIN(need.n, MAX(bal.b, 0))), ?4 \
              FROM need, bal WHERE need.n > 0 \
              ON CONFLICT(source_key) DO NOTHING",
        params: vec![id.into(), payment_id.into(), event_id.into(), Param::Int(now)],
    }
}

/// One ledger row as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    /// Insertion order (the rowid): orders rows of the same second; the page cursor.
    pub seq: i64,
    pub delta: i64,
    pub reason: String,
    pub created_at: i64,
    pub metadata: Option<String>,
}

/// A page of a user's ledger, newest first (by time, then by insertion), after the
/// cursor `(created_at, seq)` of the previous page's last row.
pub async fn history(db: &Db, user_id: &str, after: Option<(i64, i64)>, limit: u32) -> Result<Vec<Entry>, ApiError> {
    let (at, seq) = after.unwrap_or((i64::MAX / 4, i64::MAX / 4));
    let rows = db
        .rows_of(
            "SELECT rowid AS seq, id, delta, reason, created_at, metadata FROM credit_transactions \
             WHERE user_id = ?1 AND (created_at < ?2 OR (created_at = ?2 AND rowid < ?3)) \
             ORDER BY created_at DESC, rowid DESC LIMIT ?4",
            &[user_id.into(), Param::Int(at), Param::Int(seq), Param::Int(i64::from(limit))],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Entry {
                id: r.text("id")?,
                seq: r.int("seq")?,
                delta: r.int("delta")?,
                reason: r.text("reason")?,
                created_at: r.int("created_at")?,
                metadata: r.text("metadata"),
            })
        })
        .collect())
}

/// Refund rows whose clawback fell short (the user had spent the credits), newest first.
pub async fn shortfalls(db: &Db, limit: u32) -> Result<Vec<Row>, ApiError> {
    db.rows_of(
        "SELECT id, user_id, created_at, json_extract(metadata, '$.shortfall') AS shortfall, \
                json_extract(metadata, '$.paymentIntent') AS payment_intent \
         FROM credit_transactions WHERE reason = 'refund' AND json_extract(metadata, '$.shortfall') > 0 \
         ORDER BY created_at DESC LIMIT ?1",
        &[Param::Int(i64::from(limit))],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_debit_is_done_replayed_or_refused_from_its_batch() {
        let row = || Some(Row(json!({"id": "ct_1", "user_id": "usr_1", "delta": -3, "metadata": "{}"})));
        assert_eq!(debited_from(true, row(), 7), Debited::Done { id: "ct_1".into(), balance: 7 });
        assert_eq!(
            debited_from(false, row(), 7),
            Debited::Replayed {
                id: "ct_1".into(),
                user_id: "usr_1".into(),
                delta: -3,
                metadata: Some("{}".into()),
                balance: 7
            }
        );
        assert_eq!(debited_from(false, None, 2), Debited::Insufficient { balance: 2 });
    }

    #[test]
    fn every_reason_is_one_the_table_accepts() {
        const REASONS: &[&str] = &["purchase", "grant", "spend", "refund", "migration", "adjustment"];
        let sql = include_str!("../../migrations/0008_usage_and_credits.sql");
        for r in REASONS {
            assert!(sql.contains(&format!("'{r}'")), "{r}");
        }
    }
}

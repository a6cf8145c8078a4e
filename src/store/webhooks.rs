//! The `webhook_events` table: idempotency with two states, leases, retries, dead letters.

use serde::{Deserialize, Serialize};

use super::db::{Db, Param, Stmt};
use crate::error::ApiError;
use crate::stripe::events::Envelope;

/// How long a claimed event is ours before another delivery (or the cron) may take it.
/// Longer than the worst case of one delivery (a few Stripe calls, each up to three
/// 10 s attempts).
pub const LEASE_SECONDS: i64 = 180;
/// Failed attempts before an event is left `dead` (admin retry only).
pub const MAX_ATTEMPTS: i64 = 8;
/// Processed events are kept this long, then deleted by the cron.
pub const RETENTION_SECONDS: i64 = 30 * 86_400;

/// Retry delay after the `attempts`-th failure: 1, 2, 4 … minutes, at most 6 hours.
pub fn backoff_seconds(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    (60i64 << exp).min(6 * 3600)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to process; `attempts` counts this one.
    Claimed {
        attempts: i64,
    },
    AlreadyProcessed,
    /// Another delivery holds an unexpired lease.
    InProgress,
    /// Gave up on it; only an admin retry takes it again.
    Dead,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EventRow {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    #[serde(skip_serializing)]
    pub payload: String,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub source: String,
}

#[derive(Deserialize)]
struct Attempts {
    attempts: i64,
}

#[derive(Deserialize)]
struct Status {
    status: String,
}

/// Claims an event for processing as `token` (the request id): a new id is inserted
/// as `processing`; a `failed` one, a `processing` one whose lease expired, or — for an
/// admin retry only — a `dead` one is taken over. One statement, so concurrent
/// deliveries of the same event cannot both win.
pub async fn claim(
    db: &Db,
    ev: &Envelope,
    payload: &str,
    source: &str,
    token: &str,
    now: i64,
) -> Result<Claim, ApiError> {
    const SQL: &str = "INSERT INTO webhook_events (id, type, created, status, attempts, payload, received_at, lease_until, source, claim_token) \
         VALUES (?1, ?2, ?3, 'processing', 1, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT(id) DO UPDATE SET status = 'processing', attempts = webhook_events.attempts + 1, \
           lease_until = excluded.lease_until, next_attempt_at = NULL, claim_token = excluded.claim_token \
         WHERE webhook_events.status = 'failed' \
            OR (webhook_events.status = 'dead' AND ?7 = 'admin') \
            OR (webhook_events.status = 'processing' AND webhook_events.lease_until < ?5) \
         RETURNING attempts";
    let params = [
        Param::from(ev.id.as_str()),
        ev.kind.as_str().into(),
        Param::Int(ev.created),
        payload.into(),
        Param::Int(now),
        Param::Int(now + LEASE_SECONDS),
        source.into(),
        token.into(),
    ];
    if let Some(row) = db.query_one::<Attempts>(SQL, &params).await? {
        return Ok(Claim::Claimed { attempts: row.attempts });
    }
    let status =
        db.query_one::<Status>("SELECT status FROM webhook_events WHERE id = ?1", &[ev.id.as_str().into()]).await?;
    Ok(match status.map(|s| s.status).as_deref() {
        Some("processed") => Claim::AlreadyProcessed,
        Some("dead") => Claim::Dead,
        _ => Claim::InProgress,
    })
}

/// Marks the event processed (if `token` still holds it); batched with its effects.
pub fn processed_stmt(id: &str, token: &str, now: i64) -> Stmt {
    Stmt {
        sql: "UPDATE webhook_events SET status = 'processed', processed_at = ?2, lease_until = NULL, \
              next_attempt_at = NULL, last_error = NULL WHERE id = ?1 AND claim_token = ?3 AND status = 'processing'",
        params: vec![id.into(), Param::Int(now), token.into()],
    }
}

/// Marks the event failed (retried after backoff) or, past the limit or when `give_up`,
/// dead — if `token` still holds it.
pub async fn mark_failed(
    db: &Db,
    id: &str,
    token: &str,
    attempts: i64,
    error: &str,
    give_up: bool,
    now: i64,
) -> Result<(), ApiError> {
    let error: String = error.chars().take(1000).collect();
    db.execute(
        "UPDATE webhook_events SET status = CASE WHEN ?5 = 1 OR attempts >= ?3 THEN 'dead' ELSE 'failed' END, \
         last_error = ?2, lease_until = NULL, next_attempt_at = ?4 \
         WHERE id = ?1 AND claim_token = ?6 AND status = 'processing'",
        &[
            id.into(),
            error.into(),
            Param::Int(MAX_ATTEMPTS),
            Param::Int(now + backoff_seconds(attempts)),
            Param::Int(give_up as i64),
            token.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Gives up on an event nobody can process (e.g. an unparsable stored payload).
pub async fn give_up(db: &Db, id: &str, error: &str) -> Result<(), ApiError> {
    db.execute(
        "UPDATE webhook_events SET status = 'dead', last_error = ?2, lease_until = NULL, next_attempt_at = NULL \
         WHERE id = ?1 AND status IN ('failed', 'processing')",
        &[id.into(), error.into()],
    )
    .await?;
    Ok(())
}

const ROW_COLUMNS: &str = "id, type, created, status, attempts, last_error, payload, received_at, processed_at, \
                           next_attempt_at, source";

pub async fn get(db: &Db, id: &str) -> Result<Option<EventRow>, ApiError> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM webhook_events WHERE id = ?1");
    db.query_one(&sql, &[id.into()]).await
}

/// Failed events whose retry time has come, and processing ones whose lease expired
/// (a crash mid-processing), oldest first.
pub async fn due(db: &Db, now: i64, limit: i64) -> Result<Vec<EventRow>, ApiError> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM webhook_events \
         WHERE (status = 'failed' AND next_attempt_at <= ?1) OR (status = 'processing' AND lease_until < ?1) \
         ORDER BY created LIMIT ?2"
    );
    db.query(&sql, &[Param::Int(now), Param::Int(limit)]).await
}

pub async fn list(db: &Db, status: &str, limit: i64) -> Result<Vec<EventRow>, ApiError> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM webhook_events WHERE status = ?1 ORDER BY received_at DESC LIMIT ?2");
    db.query(&sql, &[status.into(), Param::Int(limit)]).await
}

/// Deletes processed events older than the retention period; returns how many.
pub async fn purge_processed(db: &Db, now: i64) -> Result<i64, ApiError> {
    let deleted = db
        .execute(
            "DELETE FROM webhook_events WHERE status = 'processed' AND processed_at < ?1 RETURNING 1 AS n",
            &[Param::Int(now - RETENTION_SECONDS)],
        )
        .await?;
    Ok(deleted as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_and_is_capped_at_six_hours() {
        assert_eq!(backoff_seconds(1), 60);
        assert_eq!(backoff_seconds(2), 120);
        assert_eq!(backoff_seconds(3), 240);
        assert_eq!(backoff_seconds(9), 15_360);
        assert_eq!(backoff_seconds(10), 6 * 3600);
        assert_eq!(backoff_seconds(1_000), 6 * 3600);
        assert_eq!(backoff_seconds(0), 60);
    }
}

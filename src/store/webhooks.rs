//! The `webhook_events` table: idempotency with two states, leases, retries, dead letters.

use super::db::{Db, FromRow, Param, Row, Stmt};
use crate::error::ApiError;
use crate::stripe::events::Envelope;
use crate::util::Columns;

/// How long a claimed event is ours before another delivery (or the cron) may take it.
/// Longer than the worst case of one delivery (a few Stripe calls, each up to three
/// 10 s attempts).
pub const LEASE_SECONDS: i64 = 180;
/// Failed attempts before the cron may leave an event `dead`…
pub const MAX_ATTEMPTS: i64 = 8;
/// …and how long after its first failure, at the least: Stripe itself retries for three
/// days, and an outage of a few hours must not use up an event's retries.
pub const DEAD_AFTER_SECONDS: i64 = 24 * 3600;
/// Processed events are kept this long, then deleted by the cron.
pub const RETENTION_SECONDS: i64 = 30 * 86_400;

/// Retry delay after the `attempts`-th failure: 1, 2, 4 … minutes, at most 6 hours.
pub fn backoff_seconds(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    (60i64 << exp).min(6 * 3600)
}

/// Whether the cron gives up on an event after its `attempts`-th failure at `now`, the
/// first one having been at `first_failed_at`: only when both the attempts and the
/// time span are used up.
pub fn exhausted(attempts: i64, first_failed_at: i64, now: i64) -> bool {
    attempts >= MAX_ATTEMPTS && now - first_failed_at >= DEAD_AFTER_SECONDS
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to process; `attempts` counts this one. `first_failed_at` is set once the
    /// event has failed before.
    Claimed {
        attempts: i64,
        first_failed_at: Option<i64>,
    },
    AlreadyProcessed,
    /// Another delivery holds an unexpired lease.
    InProgress,
    /// Failed, and its next retry is not due before `retry_at`: this delivery falls in
    /// the same backoff window as the last attempt and is not another attempt.
    NotDue {
        retry_at: i64,
    },
    /// The cron gave up on it; only a delivery from Stripe or an admin retry takes it again.
    Dead,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    /// Column `type`.
    pub kind: String,
    pub created: i64,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub payload: String,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub first_failed_at: Option<i64>,
    pub source: String,
}

impl FromRow for EventRow {
    fn from_row(row: serde_json::Value) -> Result<EventRow, String> {
        let mut c = Columns::of(row, "a webhook_events row")?;
        let r = EventRow {
            id: c.text("id"),
            kind: c.text("type"),
            created: c.int("created"),
            status: c.text("status"),
            attempts: c.int("attempts"),
            last_error: c.opt_text("last_error"),
            payload: c.text("payload"),
            received_at: c.int("received_at"),
            processed_at: c.opt_int("processed_at"),
            next_attempt_at: c.opt_int("next_attempt_at"),
            first_failed_at: c.opt_int("first_failed_at"),
            source: c.text("source"),
        };
        c.done(r)
    }
}

/// Claims an event for processing as `token` (the request id). A new id is inserted as
/// `processing`. Taken over: a `failed` one whose `next_attempt_at` has come (any time
/// for an admin retry), a `processing` one whose lease expired, and a `dead` one when
/// Stripe delivers it again (`webhook`) or an admin retries it — the cron and the
/// reconciliation stop at `dead`. One statement, so concurrent deliveries of the same
/// event cannot both win.
///
/// One round trip: the claim, the row's status after it (what a duplicate is answered
/// from) and `also` (a read the processing will need, e.g. the user of the event's
/// customer) go in one batch. `also`'s rows are returned with the claim.
pub async fn claim(
    db: &Db,
    ev: &Envelope,
    payload: &str,
    source: &str,
    token: &str,
    now: i64,
    also: Option<Stmt>,
) -> Result<(Claim, Vec<Row>), ApiError> {
    const SQL: &str = "INSERT INTO webhook_events (id, type, created, status, attempts, payload, received_at, lease_until, source, claim_token) \
         VALUES (?1, ?2, ?3, 'processing', 1, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT(id) DO UPDATE SET status = 'processing', attempts = webhook_events.attempts + 1, \
           lease_until = excluded.lease_until, next_attempt_at = NULL, claim_token = excluded.claim_token \
         WHERE (webhook_events.status = 'failed' \
                AND (?7 = 'admin' OR webhook_events.next_attempt_at IS NULL OR webhook_events.next_attempt_at <= ?5)) \
            OR (webhook_events.status = 'dead' AND ?7 IN ('admin', 'webhook')) \
            OR (webhook_events.status = 'processing' AND webhook_events.lease_until < ?5) \
         RETURNING attempts, first_failed_at";
    let params = vec![
        Param::from(ev.id.as_str()),
        ev.kind.as_str().into(),
        Param::Int(ev.created),
        payload.into(),
        Param::Int(now),
        Param::Int(now + LEASE_SECONDS),
        source.into(),
        token.into(),
    ];
    let mut stmts = vec![
        Stmt { sql: SQL, params },
        Stmt {
            sql: "SELECT status, next_attempt_at FROM webhook_events WHERE id = ?1",
            params: vec![ev.id.as_str().into()],
        },
    ];
    stmts.extend(also);
    let mut results = db.batch_rows(&stmts).await?.into_iter();
    let claimed = results.next().and_then(|rows| rows.into_iter().next());
    let after = results.next().and_then(|rows| rows.into_iter().next());
    let extra = results.next().unwrap_or_default();
    Ok((claim_from(claimed, after, now)?, extra))
}

/// The claim's outcome from the claim statement's row (present when it won) and the
/// event's row as it stands after the claim (same transaction).
fn claim_from(claimed: Option<Row>, after: Option<Row>, now: i64) -> Result<Claim, ApiError> {
    if let Some(row) = claimed {
        let attempts = row.int("attempts").ok_or_else(|| ApiError::server("claim without attempts"))?;
        return Ok(Claim::Claimed { attempts, first_failed_at: row.int("first_failed_at") });
    }
    let status = after.as_ref().and_then(|r| r.text("status"));
    Ok(match status.as_deref() {
        Some("processed") => Claim::AlreadyProcessed,
        Some("dead") => Claim::Dead,
        // Failed, and not due yet.
        Some("failed") => {
            let next = after.and_then(|r| r.int("next_attempt_at"));
            Claim::NotDue { retry_at: next.unwrap_or(now).max(now) }
        }
        _ => Claim::InProgress,
    })
}

/// An event of a type plangate only records: inserted already `processed` in one
/// statement — there is nothing to apply, so nothing to claim. `true` when it is new,
/// `false` for a redelivery (whatever its row says, it has nothing left to do).
pub async fn record_only(db: &Db, ev: &Envelope, payload: &str, source: &str, now: i64) -> Result<bool, ApiError> {
    let inserted = db
        .execute(
            "INSERT INTO webhook_events (id, type, created, status, attempts, payload, received_at, processed_at, source) \
             VALUES (?1, ?2, ?3, 'processed', 1, ?4, ?5, ?5, ?6) ON CONFLICT(id) DO NOTHING RETURNING 1 AS n",
            &[
                ev.id.as_str().into(),
                ev.kind.as_str().into(),
                Param::Int(ev.created),
                payload.into(),
                Param::Int(now),
                source.into(),
            ],
        )
        .await?;
    Ok(inserted > 0)
}

/// Marks the event processed (if `token` still holds it); batched with its effects.
pub fn processed_stmt(id: &str, token: &str, now: i64) -> Stmt {
    Stmt {
        sql: "UPDATE webhook_events SET status = 'processed', processed_at = ?2, lease_until = NULL, \
              next_attempt_at = NULL, last_error = NULL WHERE id = ?1 AND claim_token = ?3 AND status = 'processing'",
        params: vec![id.into(), Param::Int(now), token.into()],
    }
}

/// Marks the event failed, retried after the backoff of its `attempts`-th failure, or —
/// once [`exhausted`] — dead; only if `token` still holds it. The first failure's time
/// is kept: it is what the 24 h span of the retries is measured from.
pub async fn mark_failed(
    db: &Db,
    id: &str,
    token: &str,
    attempts: i64,
    first_failed_at: Option<i64>,
    error: &str,
    now: i64,
) -> Result<(), ApiError> {
    let error: String = error.chars().take(1000).collect();
    let dead = exhausted(attempts, first_failed_at.unwrap_or(now), now);
    let next = if dead { Param::Null } else { Param::Int(now + backoff_seconds(attempts)) };
    db.execute(
        "UPDATE webhook_events SET status = CASE WHEN ?5 = 1 THEN 'dead' ELSE 'failed' END, \
         last_error = ?2, lease_until = NULL, next_attempt_at = ?4, first_failed_at = COALESCE(first_failed_at, ?3) \
         WHERE id = ?1 AND claim_token = ?6 AND status = 'processing'",
        &[id.into(), error.into(), Param::Int(now), next, Param::Int(dead as i64), token.into()],
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

macro_rules! row_columns {
    () => {
        "id, type, created, status, attempts, last_error, payload, received_at, processed_at, \
         next_attempt_at, first_failed_at, source"
    };
}

pub async fn get(db: &Db, id: &str) -> Result<Option<EventRow>, ApiError> {
    // Through `query` (the one reader of event rows), not `query_one`: one copy less of it.
    Ok(db.query(concat!("SELECT ", row_columns!(), " FROM webhook_events WHERE id = ?1"), &[id.into()]).await?.pop())
}

/// Failed events whose retry time has come, and processing ones whose lease expired
/// (a crash mid-processing), oldest first.
pub async fn due(db: &Db, now: i64, limit: i64) -> Result<Vec<EventRow>, ApiError> {
    let sql = concat!(
        "SELECT ",
        row_columns!(),
        " FROM webhook_events \
         WHERE (status = 'failed' AND next_attempt_at <= ?1) OR (status = 'processing' AND lease_until < ?1) \
         ORDER BY created LIMIT ?2"
    );
    db.query(sql, &[Param::Int(now), Param::Int(limit)]).await
}

/// Which of `ids` plangate has recorded, whatever their status: one query for a page of
/// the Events API. A list (a page has at most 100 ids): a hash set would link hashbrown
/// and SipHash into the Wasm for this one use.
pub async fn known(db: &Db, ids: &[String]) -> Result<Vec<String>, ApiError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let list = crate::util::json_text(&serde_json::Value::from(ids.to_vec()));
    let rows = db
        .rows_of("SELECT id FROM webhook_events WHERE id IN (SELECT value FROM json_each(?1))", &[list.into()])
        .await?;
    Ok(rows.into_iter().filter_map(|r| r.text("id")).collect())
}

pub async fn list(db: &Db, status: &str, limit: i64) -> Result<Vec<EventRow>, ApiError> {
    let sql =
        concat!("SELECT ", row_columns!(), " FROM webhook_events WHERE status = ?1 ORDER BY received_at DESC LIMIT ?2");
    db.query(sql, &[status.into(), Param::Int(limit)]).await
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

    fn row(v: serde_json::Value) -> Option<Row> {
        Some(Row(v))
    }

    #[test]
    fn a_claim_is_read_from_the_claim_row_or_else_from_the_status_after_it() {
        use serde_json::json;
        let now = 1_700_000_000;
        assert_eq!(
            claim_from(row(json!({"attempts": 2, "first_failed_at": 5})), row(json!({"status": "processing"})), now)
                .unwrap(),
            Claim::Claimed { attempts: 2, first_failed_at: Some(5) }
        );
        let after = |status: &str, next: Option<i64>| row(json!({"status": status, "next_attempt_at": next}));
        assert_eq!(claim_from(None, after("processed", None), now).unwrap(), Claim::AlreadyProcessed);
        assert_eq!(claim_from(None, after("dead", None), now).unwrap(), Claim::Dead);
        assert_eq!(claim_from(None, after("processing", None), now).unwrap(), Claim::InProgress);
        assert_eq!(
            claim_from(None, after("failed", Some(now + 60)), now).unwrap(),
            Claim::NotDue { retry_at: now + 60 }
        );
        // A retry time already past (failed between the two reads) is not in the past.
        assert_eq!(claim_from(None, after("failed", Some(now - 5)), now).unwrap(), Claim::NotDue { retry_at: now });
        assert!(claim_from(row(json!({"first_failed_at": null})), None, now).is_err(), "a claim row without attempts");
    }

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

    /// The fastest the cron can go: every retry exactly when it is due. Returns the
    /// attempt and the time (seconds after the first failure) at which it gives up.
    fn fastest_schedule_until_dead() -> (i64, i64) {
        let first = 1_700_000_000;
        let mut now = first;
        for attempts in 1..1_000 {
            if exhausted(attempts, first, now) {
                return (attempts, now - first);
            }
            now += backoff_seconds(attempts);
        }
        panic!("never dead");
    }

    #[test]
    fn an_event_is_dead_only_after_its_retries_span_a_day_and_eight_attempts() {
        let (attempts, span) = fastest_schedule_until_dead();
        assert!(span >= DEAD_AFTER_SECONDS, "dead after only {span} s");
        assert!(attempts >= MAX_ATTEMPTS);
        // 1+2+…+128 min, 256 min, then every 6 h: the 13th failure, ~26.5 h in.
        assert_eq!((attempts, span), (13, 95_460));
        // Eight quick failures (the old rule's limit, reached in ~2 h) are not enough…
        let first = 1_700_000_000;
        assert!(!exhausted(MAX_ATTEMPTS, first, first + 2 * 3600));
        assert!(!exhausted(MAX_ATTEMPTS + 20, first, first + DEAD_AFTER_SECONDS - 1));
        // …nor is a day with fewer attempts (e.g. the cron was not running).
        assert!(!exhausted(MAX_ATTEMPTS - 1, first, first + 3 * 86_400));
        assert!(exhausted(MAX_ATTEMPTS, first, first + DEAD_AFTER_SECONDS));
    }
}

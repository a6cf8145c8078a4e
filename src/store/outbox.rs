//! The `kv_outbox` table: users whose KV copies (legacy plan keys, entitlements cache)
//! are due. Every D1 batch that changes a user's plan columns also bumps the user's
//! outbox `version`; a flusher takes a short lease on the row, writes KV from the
//! user's *current* row, and deletes the outbox row only if its version did not change
//! meanwhile. So KV converges on the newest D1 state whatever fails or races: a failed
//! write leaves the row for the cron, a change during a flush makes it flush again.

use super::db::{Db, Param, Stmt};
use crate::error::ApiError;

/// How long one flusher owns a user's row; its KV writes give up well before.
pub const LEASE_SECONDS: i64 = 60;
pub const WRITE_TIMEOUT_MS: u64 = 20_000;
/// Retry delay after a failed flush: 1, 2, 4 … minutes, at most an hour.
pub fn backoff_seconds(attempts: i64) -> i64 {
    (60i64 << (attempts.clamp(1, 7) - 1)).min(3600)
}

/// Bumps the user's outbox version whatever changed (re-syncs: they also repair copies
/// that diverged).
pub fn due_stmt(user_id: &str, now: i64) -> Stmt {
    Stmt {
        sql: "INSERT INTO kv_outbox (user_id, version, due_at, attempts) VALUES (?1, 1, ?2, 0) \
              ON CONFLICT(user_id) DO UPDATE SET version = kv_outbox.version + 1, due_at = MIN(kv_outbox.due_at, ?2)",
        params: vec![user_id.into(), Param::Int(now)],
    }
}

/// Bumps the outbox version of the user holding a Stripe customer (batched before the
/// statements that clear it; `users::apply_state_stmts` bumps its own).
pub fn due_by_customer_stmt(customer_id: &str, now: i64) -> Stmt {
    Stmt {
        sql: "INSERT INTO kv_outbox (user_id, version, due_at, attempts) \
              SELECT id, 1, ?2, 0 FROM users WHERE stripe_customer_id = ?1 \
              ON CONFLICT(user_id) DO UPDATE SET version = kv_outbox.version + 1, due_at = MIN(kv_outbox.due_at, ?2)",
        params: vec![customer_id.into(), Param::Int(now)],
    }
}

/// Takes the lease on a due row as `token`; `Some((version, attempts))` when ours.
pub async fn claim(db: &Db, user_id: &str, token: &str, now: i64) -> Result<Option<(i64, i64)>, ApiError> {
    let row = db
        .row(
            "UPDATE kv_outbox SET lease_until = ?3, lease_token = ?4, attempts = attempts + 1 \
             WHERE user_id = ?1 AND (lease_until IS NULL OR lease_until < ?2) RETURNING version, attempts",
            &[user_id.into(), Param::Int(now), Param::Int(now + LEASE_SECONDS), token.into()],
        )
        .await?;
    Ok(row.and_then(|r| Some((r.int("version")?, r.int("attempts")?))))
}

/// `token` is done with `version`, having written the legacy values `written` (JSON)
/// over the record `was` it read: the record is kept if the lease is still ours and
/// nobody changed it meanwhile (an admin re-sync clears it to force a full rewrite).
/// The row goes if nothing changed meanwhile and the lease is still ours (true), else
/// our lease is released and the row stays due (false). A flusher whose lease was
/// taken over can remove nothing. One round trip.
pub async fn complete(
    db: &Db,
    user_id: &str,
    token: &str,
    version: i64,
    written: Option<(&Option<String>, &str)>,
) -> Result<bool, ApiError> {
    let mut stmts = Vec::with_capacity(3);
    if let Some((was, written)) = written {
        stmts.push(Stmt {
            sql: "UPDATE users SET kv_written = ?2 WHERE id = ?1 AND kv_written IS ?3 \
                  AND EXISTS (SELECT 1 FROM kv_outbox WHERE user_id = ?1 AND lease_token = ?4)",
            params: vec![user_id.into(), written.into(), was.clone().into(), token.into()],
        });
    }
    let deleted_at = stmts.len();
    stmts.push(Stmt {
        sql: "DELETE FROM kv_outbox WHERE user_id = ?1 AND version = ?2 AND lease_token = ?3 RETURNING 1 AS n",
        params: vec![user_id.into(), Param::Int(version), token.into()],
    });
    // Still there (changed meanwhile): release our lease, due at once.
    stmts.push(Stmt {
        sql: "UPDATE kv_outbox SET lease_until = NULL, attempts = 0 WHERE user_id = ?1 AND lease_token = ?2",
        params: vec![user_id.into(), token.into()],
    });
    let results = db.batch_rows(&stmts).await?;
    Ok(results.get(deleted_at).is_some_and(|rows| !rows.is_empty()))
}

/// A failed flush: due again after backoff (if the lease is still ours).
pub async fn failed(db: &Db, user_id: &str, token: &str, attempts: i64, now: i64) -> Result<(), ApiError> {
    db.execute(
        "UPDATE kv_outbox SET lease_until = NULL, due_at = ?2 WHERE user_id = ?1 AND lease_token = ?3",
        &[user_id.into(), Param::Int(now + backoff_seconds(attempts)), token.into()],
    )
    .await?;
    Ok(())
}

/// Users whose copies are due and not being written, oldest first.
pub async fn due(db: &Db, now: i64, limit: i64) -> Result<Vec<String>, ApiError> {
    let rows = db
        .rows_of(
            "SELECT user_id FROM kv_outbox WHERE due_at <= ?1 AND (lease_until IS NULL OR lease_until < ?1) \
             ORDER BY due_at LIMIT ?2",
            &[Param::Int(now), Param::Int(limit)],
        )
        .await?;
    Ok(rows.into_iter().filter_map(|r| r.text("user_id")).collect())
}

/// How many users' copies are due (reported to admins).
pub async fn pending(db: &Db) -> Result<i64, ApiError> {
    Ok(db.row("SELECT COUNT(*) AS n FROM kv_outbox", &[]).await?.and_then(|r| r.int("n")).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::backoff_seconds;

    #[test]
    fn a_failed_copy_is_retried_after_one_minute_doubling_to_an_hour() {
        assert_eq!(backoff_seconds(1), 60);
        assert_eq!(backoff_seconds(2), 120);
        assert_eq!(backoff_seconds(7), 3600);
        assert_eq!(backoff_seconds(100), 3600);
    }
}

//! Per-user billing locks: a D1 lease row, so two billing actions for the same user
//! never race (the second gets `409 BILLING_IN_PROGRESS`).

use super::db::{Db, Param};
use crate::error::ApiError;

/// Longer than any billing action (a few Stripe calls, each up to three 10 s attempts).
pub const LOCK_SECONDS: i64 = 180;

/// Takes the lock for `user_id` as `holder`, unless someone else holds an unexpired
/// one. Returns the action sequence number to build idempotency keys from.
pub async fn acquire(db: &Db, user_id: &str, holder: &str, action: &str, now: i64) -> Result<Option<i64>, ApiError> {
    let row = db
        .row(
            "INSERT INTO billing_locks (user_id, holder, action, expires_at, seq) VALUES (?1, ?2, ?3, ?4, 0) \
             ON CONFLICT(user_id) DO UPDATE SET holder = excluded.holder, action = excluded.action, \
               expires_at = excluded.expires_at \
             WHERE billing_locks.expires_at < ?5 \
             RETURNING holder, seq",
            &[user_id.into(), holder.into(), action.into(), Param::Int(now + LOCK_SECONDS), Param::Int(now)],
        )
        .await?;
    Ok(row.filter(|r| r.text("holder").as_deref() == Some(holder)).and_then(|r| r.int("seq")))
}

/// Ends the holder's action, successful or not: the next one gets a new `seq`.
pub async fn release(db: &Db, user_id: &str, holder: &str) -> Result<(), ApiError> {
    db.execute(
        "UPDATE billing_locks SET expires_at = 0, seq = seq + 1 WHERE user_id = ?1 AND holder = ?2",
        &[user_id.into(), holder.into()],
    )
    .await?;
    Ok(())
}

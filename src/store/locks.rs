//! Per-user billing locks: a D1 lease row, so two billing actions for the same user
//! never race (the second gets `409 BILLING_IN_PROGRESS`).

use super::db::{Db, Param};
use crate::error::ApiError;

/// Longer than any billing action: the longest (a Checkout that replaces a deleted
/// customer) makes about ten Stripe calls, each up to three 10 s attempts.
pub const LOCK_SECONDS: i64 = 300;

/// Takes the lock for `user_id` as `holder`, unless someone else holds an unexpired
/// one. Returns the action's sequence number, new for every acquisition (a takeover of
/// an expired lock included): idempotency keys are built from it, so an action never
/// shares a key with another one — not even with one whose holder died (a replayed
/// answer of a different earlier action, e.g. cancel → resume → cancel, would otherwise
/// be taken for the current state).
pub async fn acquire(db: &Db, user_id: &str, holder: &str, action: &str, now: i64) -> Result<Option<i64>, ApiError> {
    let row = db
        .row(
            "INSERT INTO billing_locks (user_id, holder, action, expires_at, seq) VALUES (?1, ?2, ?3, ?4, 0) \
             ON CONFLICT(user_id) DO UPDATE SET holder = excluded.holder, action = excluded.action, \
               expires_at = excluded.expires_at, seq = billing_locks.seq + 1 \
             WHERE billing_locks.expires_at < ?5 \
             RETURNING holder, seq",
            &[user_id.into(), holder.into(), action.into(), Param::Int(now + LOCK_SECONDS), Param::Int(now)],
        )
        .await?;
    Ok(row.filter(|r| r.text("holder").as_deref() == Some(holder)).and_then(|r| r.int("seq")))
}

/// Ends the holder's action, successful or not.
pub async fn release(db: &Db, user_id: &str, holder: &str) -> Result<(), ApiError> {
    db.execute(
        "UPDATE billing_locks SET expires_at = 0 WHERE user_id = ?1 AND holder = ?2",
        &[user_id.into(), holder.into()],
    )
    .await?;
    Ok(())
}

//! Per-user billing locks: a D1 lease row, so two billing actions for the same user
//! never race (the second gets `409 BILLING_IN_PROGRESS`).

use serde::Deserialize;

use super::db::{Db, Param};
use crate::error::ApiError;

/// Longer than any billing action (a few Stripe calls with bounded retries).
pub const LOCK_SECONDS: i64 = 60;

#[derive(Deserialize)]
struct Holder {
    holder: String,
}

/// Takes the lock for `user_id` as `holder`, unless someone else holds an unexpired one.
pub async fn acquire(db: &Db, user_id: &str, holder: &str, action: &str, now: i64) -> Result<bool, ApiError> {
    let row = db
        .query_one::<Holder>(
            "INSERT INTO billing_locks (user_id, holder, action, expires_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(user_id) DO UPDATE SET holder = excluded.holder, action = excluded.action, \
               expires_at = excluded.expires_at \
             WHERE billing_locks.expires_at < ?5 \
             RETURNING holder",
            &[user_id.into(), holder.into(), action.into(), Param::Int(now + LOCK_SECONDS), Param::Int(now)],
        )
        .await?;
    Ok(row.is_some_and(|r| r.holder == holder))
}

pub async fn release(db: &Db, user_id: &str, holder: &str) -> Result<(), ApiError> {
    db.execute("DELETE FROM billing_locks WHERE user_id = ?1 AND holder = ?2", &[user_id.into(), holder.into()])
        .await?;
    Ok(())
}

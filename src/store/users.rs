//! The `users` table.

use super::db::{Db, Param};
use crate::auth::jwt::Identity;
use crate::domain::account::UserRecord;
use crate::error::ApiError;

macro_rules! user_columns {
    () => {
        "id, auth_id, email, plan, stripe_customer_id, stripe_subscription_id, subscription_status, \
         trial_ends_at, current_period_end, cancel_at, scheduled_plan, scheduled_at, \
         plan_updated_at, created_at, updated_at"
    };
}

const SELECT_BY_AUTH_ID: &str =
    concat!("SELECT ", user_columns!(), " FROM users WHERE auth_id = ?1");

/// `ON CONFLICT DO NOTHING RETURNING`: exactly one of any number of concurrent first
/// requests gets the row back; the others see no row and read the winner's.
const INSERT_NEW: &str = concat!(
    "INSERT INTO users (id, auth_id, email, plan, plan_updated_at, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5) ON CONFLICT(auth_id) DO NOTHING RETURNING ",
    user_columns!()
);

const FILL_EMAIL: &str = concat!(
    "UPDATE users SET email = ?2, updated_at = ?3 WHERE auth_id = ?1 AND email IS NULL RETURNING ",
    user_columns!()
);

pub async fn find_by_auth_id(db: &Db, auth_id: &str) -> Result<Option<UserRecord>, ApiError> {
    db.query_one(SELECT_BY_AUTH_ID, &[auth_id.into()]).await
}

/// Returns the caller's row, creating it (plan = the catalog's default tier) on first
/// sight. A missing email is filled in from the token; an existing one is kept (it is
/// kept in sync with Stripe's customer record, not with whatever a token says).
pub async fn get_or_create_by_auth_id(
    db: &Db,
    who: &Identity,
    default_plan: &str,
    now: i64,
    new_id: impl FnOnce() -> Result<String, ApiError>,
) -> Result<UserRecord, ApiError> {
    if let Some(user) = find_by_auth_id(db, &who.auth_id).await? {
        if user.email.is_none() && who.email.is_some() {
            let params = [
                who.auth_id.as_str().into(),
                who.email.clone().into(),
                Param::Int(now),
            ];
            if let Some(updated) = db.query_one(FILL_EMAIL, &params).await? {
                return Ok(updated);
            }
        }
        return Ok(user);
    }
    let params = [
        new_id()?.into(),
        who.auth_id.as_str().into(),
        who.email.clone().into(),
        default_plan.into(),
        Param::Int(now),
    ];
    if let Some(created) = db.query_one::<UserRecord>(INSERT_NEW, &params).await? {
        return Ok(created);
    }
    find_by_auth_id(db, &who.auth_id)
        .await?
        .ok_or_else(|| ApiError::server("user row vanished between insert conflict and read"))
}

//! The `users` table.

use super::db::{Db, FromRow, Param, Row, Stmt};
use crate::auth::jwt::Identity;
use crate::domain::account::UserRecord;
use crate::domain::legacy_plan::LegacyPlan;
use crate::domain::subscription::BillingState;
use crate::error::ApiError;

macro_rules! user_columns {
    () => {
        "id, auth_id, email, plan, stripe_customer_id, stripe_subscription_id, subscription_status, \
         trial_ends_at, current_period_end, cancel_at, scheduled_plan, scheduled_at, \
         plan_updated_at, created_at, updated_at, stripe_synced_at, trial_used, previous_customer_id, kv_written, current_period_start"
    };
}

const SELECT_BY_AUTH_ID: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE auth_id = ?1");

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

/// A new user holding a legacy plan record (see `domain::legacy_plan`), first sight
/// wins like [`INSERT_NEW`]. The legacy customer id is taken only when no other user
/// holds it (`stripe_customer_id` is unique: a conflict must not fail the import).
const INSERT_IMPORTED: &str =
    "INSERT INTO users (id, auth_id, plan, stripe_customer_id, stripe_subscription_id, subscription_status, \
       trial_ends_at, current_period_end, trial_used, legacy_imported_at, plan_updated_at, created_at, updated_at) \
     VALUES (?1, ?2, ?3, (SELECT ?4 WHERE NOT EXISTS (SELECT 1 FROM users WHERE stripe_customer_id = ?4)), \
       ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?10) ON CONFLICT(auth_id) DO NOTHING RETURNING id";

pub async fn find_by_auth_id(db: &Db, auth_id: &str) -> Result<Option<UserRecord>, ApiError> {
    db.query_one(SELECT_BY_AUTH_ID, &[auth_id.into()]).await
}

/// The caller's row if it exists. A missing email is filled in from the token; an
/// existing one is kept (it is kept in sync with Stripe's customer record, not with
/// whatever a token says).
pub async fn find_for(db: &Db, auth_id: &str, email: Option<&str>, now: i64) -> Result<Option<UserRecord>, ApiError> {
    let Some(user) = find_by_auth_id(db, auth_id).await? else { return Ok(None) };
    if user.email.is_none() && email.is_some() {
        let params = [auth_id.into(), email.into(), Param::Int(now)];
        if let Some(updated) = db.query_one(FILL_EMAIL, &params).await? {
            return Ok(Some(updated));
        }
    }
    Ok(Some(user))
}

/// Returns the caller's row, creating it (plan = the catalog's default tier) on first
/// sight, without looking at the legacy plan keys: `Billing::user_for` reads those
/// through (use it for anything a user sees).
pub async fn get_or_create_by_auth_id(
    db: &Db,
    who: &Identity,
    default_plan: &str,
    now: i64,
    new_id: impl FnOnce() -> Result<String, ApiError>,
) -> Result<UserRecord, ApiError> {
    if let Some(user) = find_for(db, &who.auth_id, who.email.as_deref(), now).await? {
        return Ok(user);
    }
    create(db, &who.auth_id, who.email.as_deref(), default_plan, now, new_id()?).await
}

/// Creates the row of `auth_id` with the default plan. Of concurrent first requests
/// exactly one creates it; the others get the winner's row.
pub async fn create(
    db: &Db,
    auth_id: &str,
    email: Option<&str>,
    default_plan: &str,
    now: i64,
    id: String,
) -> Result<UserRecord, ApiError> {
    let params = [id.into(), auth_id.into(), email.into(), default_plan.into(), Param::Int(now)];
    if let Some(created) = db.query_one::<UserRecord>(INSERT_NEW, &params).await? {
        return Ok(created);
    }
    find_by_auth_id(db, auth_id)
        .await?
        .ok_or_else(|| ApiError::server("user row vanished between insert conflict and read"))
}

/// Creating a user holding a legacy record: the row (returned only when this insert
/// created it) and its `migration` audit row (written only then too). The email is
/// filled from the user's token on their next request; `plan_updated_at` is the
/// record's own time when it has one.
pub fn import_stmts(stmts: &mut Vec<Stmt>, id: &str, auth_id: &str, rec: &LegacyPlan, now: i64) {
    stmts.push(Stmt {
        sql: INSERT_IMPORTED,
        params: vec![
            id.into(),
            auth_id.into(),
            rec.plan.into(),
            rec.customer.clone().into(),
            rec.subscription.clone().into(),
            rec.status.clone().into(),
            rec.trial_ends_at.into(),
            rec.current_period_end.into(),
            Param::Int(rec.trial_used as i64),
            Param::Int(now),
            Param::Int(rec.as_of.unwrap_or(now)),
        ],
    });
    stmts.push(Stmt {
        sql: "INSERT INTO plan_changes (user_id, old_plan, new_plan, old_status, new_status, cause, created_at, subscription_id) \
              SELECT id, NULL, plan, NULL, subscription_status, 'migration', ?2, stripe_subscription_id FROM users WHERE id = ?1",
        params: vec![id.into(), Param::Int(now)],
    });
}

const SELECT_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = ?1");
const SELECT_BY_CUSTOMER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE stripe_customer_id = ?1");

pub async fn find_by_id(db: &Db, id: &str) -> Result<Option<UserRecord>, ApiError> {
    db.query_one(SELECT_BY_ID, &[id.into()]).await
}

pub async fn find_by_customer(db: &Db, customer_id: &str) -> Result<Option<UserRecord>, ApiError> {
    db.query_one(SELECT_BY_CUSTOMER, &[customer_id.into()]).await
}

/// [`find_by_customer`] as a statement, to ride in another batch.
pub fn by_customer_stmt(customer_id: &str) -> Stmt {
    Stmt { sql: SELECT_BY_CUSTOMER, params: vec![customer_id.into()] }
}

/// Forgets which legacy KV values were written for the user: the next flush writes
/// every key (an admin re-sync repairs copies that diverged behind plangate's back).
pub fn forget_kv_written_stmt(user_id: &str) -> Stmt {
    Stmt { sql: "UPDATE users SET kv_written = NULL WHERE id = ?1", params: vec![user_id.into()] }
}

impl FromRow for UserRecord {
    fn from_row(row: serde_json::Value) -> Result<UserRecord, String> {
        UserRecord::from_row(row)
    }
}

/// A user read by one of the statements above.
pub fn from_row(row: Row) -> Result<UserRecord, ApiError> {
    UserRecord::from_row(row.0).map_err(super::db::row_error)
}

/// The statements that store `state` for `user_id`, as of `as_of` (unix seconds of the
/// Stripe state: fetch time, or the event's `created` for a payload). Both are guarded
/// by `stripe_synced_at <= as_of`, so an older state never overwrites a newer one; the
/// audit row is written first, reading the old values inside the same transaction, and
/// only when the plan, the status or a scheduled cancellation (`cancel_at`: set by a
/// cancel at the period end, cleared by a resume) really change — so a cancellation is
/// audited once, by whichever of the action and its webhook applies it first.
/// `link_customer` fills an empty `stripe_customer_id`.
pub fn apply_state_stmts(
    user_id: &str,
    state: &BillingState,
    as_of: i64,
    cause: &str,
    link_customer: Option<&str>,
    now: i64,
) -> Vec<Stmt> {
    let audit = Stmt {
        sql: "INSERT INTO plan_changes (user_id, old_plan, new_plan, old_status, new_status, cause, created_at, subscription_id) \
              SELECT id, plan, ?2, subscription_status, ?3, ?4, ?5, ?7 FROM users \
              WHERE id = ?1 AND (stripe_synced_at IS NULL OR stripe_synced_at <= ?6) \
                AND (plan IS NOT ?2 OR subscription_status IS NOT ?3 OR cancel_at IS NOT ?8)",
        params: vec![
            user_id.into(),
            state.plan.as_str().into(),
            state.status.clone().into(),
            cause.into(),
            Param::Int(now),
            Param::Int(as_of),
            state.subscription_id.clone().into(),
            state.cancel_at.into(),
        ],
    };
    let update = Stmt {
        sql: "UPDATE users SET \
                plan_updated_at = CASE WHEN plan IS NOT ?2 OR subscription_status IS NOT ?4 THEN ?12 ELSE plan_updated_at END, \
                plan = ?2, stripe_subscription_id = ?3, subscription_status = ?4, trial_ends_at = ?5, \
                current_period_end = ?6, cancel_at = ?7, scheduled_plan = ?8, scheduled_at = ?9, \
                trial_used = MAX(trial_used, ?10), stripe_synced_at = ?11, updated_at = ?12, \
                stripe_customer_id = COALESCE(stripe_customer_id, ?13), current_period_start = ?14 \
              WHERE id = ?1 AND (stripe_synced_at IS NULL OR stripe_synced_at <= ?11)",
        params: vec![
            user_id.into(),
            state.plan.as_str().into(),
            state.subscription_id.clone().into(),
            state.status.clone().into(),
            state.trial_ends_at.into(),
            state.current_period_end.into(),
            state.cancel_at.into(),
            state.scheduled_plan.clone().into(),
            state.scheduled_at.into(),
            Param::Int(state.trial_used as i64),
            Param::Int(as_of),
            Param::Int(now),
            link_customer.into(),
            state.current_period_start.into(),
        ],
    };
    // The KV copies (legacy keys, entitlements cache — which shows the usage period)
    // are due only when a column they show changes (read before the update, under the same as-of guard): a redelivery
    // that changes nothing costs no KV work. Re-syncs bump unconditionally (outbox::due_stmt).
    let copies_due = Stmt {
        sql: "INSERT INTO kv_outbox (user_id, version, due_at, attempts) \
              SELECT id, 1, ?2, 0 FROM users WHERE id = ?1 AND (stripe_synced_at IS NULL OR stripe_synced_at <= ?3) \
                AND (plan IS NOT ?4 OR subscription_status IS NOT ?5 OR trial_ends_at IS NOT ?6 \
                     OR current_period_end IS NOT ?7 OR trial_used < ?8 OR cancel_at IS NOT ?9 \
                     OR scheduled_plan IS NOT ?10 OR scheduled_at IS NOT ?11 OR current_period_start IS NOT ?12) \
              ON CONFLICT(user_id) DO UPDATE SET version = kv_outbox.version + 1, due_at = MIN(kv_outbox.due_at, ?2)",
        params: vec![
            user_id.into(),
            Param::Int(now),
            Param::Int(as_of),
            state.plan.as_str().into(),
            state.status.clone().into(),
            state.trial_ends_at.into(),
            state.current_period_end.into(),
            Param::Int(state.trial_used as i64),
            state.cancel_at.into(),
            state.scheduled_plan.clone().into(),
            state.scheduled_at.into(),
            state.current_period_start.into(),
        ],
    };
    vec![audit, copies_due, update]
}

/// The audit row of a change to one subscription that is not (or no longer) the one
/// the user's row follows, e.g. a legacy duplicate cancelled now.
pub fn subscription_audit_stmt(
    user_id: &str,
    subscription_id: &str,
    (old_plan, old_status): (&str, &str),
    (new_plan, new_status): (&str, &str),
    cause: &str,
    now: i64,
) -> Stmt {
    Stmt {
        sql: "INSERT INTO plan_changes (user_id, old_plan, new_plan, old_status, new_status, cause, created_at, subscription_id) \
              VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params: vec![
            user_id.into(),
            old_plan.into(),
            new_plan.into(),
            old_status.into(),
            new_status.into(),
            cause.into(),
            Param::Int(now),
            subscription_id.into(),
        ],
    }
}

/// A Stripe customer that no longer exists (deleted in the dashboard, or Stripe
/// answers `resource_missing`): its user keeps their account and trial history but
/// loses the customer, its subscription and the plan it granted (audited first).
/// Deletion is final at Stripe, so no as-of guard holds it back; `as_of` only moves
/// `stripe_synced_at` forward so older payloads cannot resurrect the subscription.
pub fn customer_gone_stmts(customer_id: &str, default_plan: &str, cause: &str, as_of: i64, now: i64) -> Vec<Stmt> {
    let audit = Stmt {
        sql: "INSERT INTO plan_changes (user_id, old_plan, new_plan, old_status, new_status, cause, created_at, subscription_id) \
              SELECT id, plan, ?4, subscription_status, NULL, ?2, ?3, stripe_subscription_id FROM users \
              WHERE stripe_customer_id = ?1",
        params: vec![customer_id.into(), cause.into(), Param::Int(now), default_plan.into()],
    };
    let clear = Stmt {
        sql: "UPDATE users SET previous_customer_id = stripe_customer_id, stripe_customer_id = NULL, stripe_subscription_id = NULL, subscription_status = NULL, \
                plan = ?4, trial_ends_at = NULL, current_period_start = NULL, current_period_end = NULL, cancel_at = NULL, \
                scheduled_plan = NULL, scheduled_at = NULL, \
                plan_updated_at = CASE WHEN plan IS NOT ?4 OR subscription_status IS NOT NULL THEN ?3 ELSE plan_updated_at END, \
                stripe_synced_at = MAX(COALESCE(stripe_synced_at, 0), ?2), updated_at = ?3 \
              WHERE stripe_customer_id = ?1",
        params: vec![customer_id.into(), Param::Int(as_of), Param::Int(now), default_plan.into()],
    };
    vec![super::outbox::due_by_customer_stmt(customer_id, now), audit, clear]
}

/// Links a Stripe customer to a user who has none yet.
pub fn link_customer_stmt(user_id: &str, customer_id: &str, now: i64) -> Stmt {
    Stmt {
        sql: "UPDATE users SET stripe_customer_id = ?2, updated_at = ?3 WHERE id = ?1 AND stripe_customer_id IS NULL",
        params: vec![user_id.into(), customer_id.into(), Param::Int(now)],
    }
}

/// Keeps the email in sync with Stripe's customer record.
pub fn set_email_by_customer_stmt(customer_id: &str, email: Option<&str>, now: i64) -> Stmt {
    Stmt {
        sql: "UPDATE users SET email = ?2, updated_at = ?3 WHERE stripe_customer_id = ?1 AND email IS NOT ?2",
        params: vec![customer_id.into(), email.into(), Param::Int(now)],
    }
}

/// Stores a Stripe customer created for a user who had none; returns the row after.
pub async fn set_customer_if_missing(db: &Db, user_id: &str, customer_id: &str, now: i64) -> Result<(), ApiError> {
    let stmt = link_customer_stmt(user_id, customer_id, now);
    db.execute(stmt.sql, &stmt.params).await?;
    Ok(())
}

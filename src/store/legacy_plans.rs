//! The legacy plan import: the rows it compares with and the statements that overwrite
//! an existing row (a new row is `users::import_stmts`). `APP_KV` is read a page at a
//! time through `kv_store`.

use super::db::{Db, Param, Stmt};
use crate::domain::account::UserRecord;
use crate::domain::legacy_plan::LegacyPlan;
use crate::error::ApiError;

/// Users per [`existing`] query.
pub const BATCH: usize = 25;

/// The rows of up to [`BATCH`] auth ids (one query).
pub async fn existing(db: &Db, auth_ids: &[&str]) -> Result<Vec<UserRecord>, ApiError> {
    let ids = crate::util::json_text(&serde_json::Value::from(auth_ids.to_vec()));
    db.query("SELECT * FROM users WHERE auth_id IN (SELECT value FROM json_each(?1))", &[ids.into()]).await
}

/// Overwrites `s`'s plan columns with `rec`, audited (`migration`) and with the KV
/// copies due (the cached entitlements showed the old plan). Every statement is
/// guarded by the row as it was read (no Stripe state since, same `updated_at` and
/// `plan_updated_at`): a row changed meanwhile is left alone. The last statement
/// returns the row when it was written. A legacy customer id fills an empty one only
/// when no other user holds it.
pub fn update_stmts(stmts: &mut Vec<Stmt>, s: &UserRecord, rec: &LegacyPlan, now: i64) {
    let (id, at, plan_at) = (s.id.as_str(), Param::Int(s.updated_at), Param::Int(s.plan_updated_at));
    let audit = vec![
        id.into(),
        at.clone(),
        plan_at.clone(),
        rec.plan.into(),
        rec.status.clone().into(),
        Param::Int(now),
        rec.subscription.clone().into(),
    ];
    let due = vec![id.into(), at.clone(), plan_at.clone(), Param::Int(now)];
    let update = vec![
        id.into(),
        at,
        plan_at,
        rec.plan.into(),
        rec.status.clone().into(),
        Param::Int(now),
        rec.subscription.clone().into(),
        rec.customer.clone().into(),
        rec.trial_ends_at.into(),
        rec.current_period_end.into(),
        Param::Int(rec.trial_used as i64),
        Param::Int(rec.as_of.unwrap_or(now)),
    ];
    stmts.push(Stmt {
            sql: "INSERT INTO plan_changes (user_id, old_plan, new_plan, old_status, new_status, cause, created_at, subscription_id) \
                  SELECT id, plan, ?4, subscription_status, ?5, 'migration', ?6, ?7 FROM users \
                  WHERE id = ?1 AND stripe_synced_at IS NULL AND updated_at = ?2 AND plan_updated_at = ?3",
            params: audit,
        });
    stmts.push(Stmt {
            sql: "INSERT INTO kv_outbox (user_id, version, due_at, attempts) SELECT id, 1, ?4, 0 FROM users \
                  WHERE id = ?1 AND stripe_synced_at IS NULL AND updated_at = ?2 AND plan_updated_at = ?3 \
                  ON CONFLICT(user_id) DO UPDATE SET version = kv_outbox.version + 1, due_at = MIN(kv_outbox.due_at, ?4)",
            params: due,
        });
    stmts.push(Stmt {
        sql: "UPDATE users SET plan = ?4, subscription_status = ?5, stripe_subscription_id = ?7, \
                    stripe_customer_id = COALESCE(stripe_customer_id, \
                      (SELECT ?8 WHERE NOT EXISTS (SELECT 1 FROM users WHERE stripe_customer_id = ?8))), \
                    trial_ends_at = ?9, current_period_end = ?10, trial_used = MAX(trial_used, ?11), \
                    plan_updated_at = ?12, legacy_imported_at = ?6, updated_at = ?6 \
                  WHERE id = ?1 AND stripe_synced_at IS NULL AND updated_at = ?2 AND plan_updated_at = ?3 RETURNING id",
        params: update,
    });
}

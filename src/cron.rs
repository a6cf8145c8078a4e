//! The `scheduled` handler (crons in `wrangler.toml`): retries failed webhook events
//! with backoff (leaving them `dead` after a day of failures), takes over events whose
//! processing lease expired, reconciles with Stripe's Events API (`delivery_success=false`
//! since the last cursor, a walk over its pages that may span several runs), and deletes
//! processed events past the retention period.
//!
//! One run stays inside a Worker invocation's limits: at most [`RUN_DELIVERIES`]
//! deliveries (retries first, at most [`RUN_RETRIES`] of them) and a few Events API
//! pages; whatever is left is taken up by the next run.

use serde_json::Value;
use worker::Env;

use crate::billing::delivery::{Tally, RUN_DELIVERIES, RUN_RETRIES};
use crate::billing::Billing;
use crate::config::Config;
use crate::error::ApiError;
use crate::store::db::Db;
use crate::store::kv_store::KvStore;
use crate::store::webhooks;
use crate::{clock, log, obj, util};

/// Users whose KV copies are written per run at most (each a few KV operations).
pub const COPIES_PER_RUN: i64 = 100;

/// `scheduled_ms` is the event's scheduled time: the cron's "now" (tests dispatch
/// runs "later" by passing a future time).
pub async fn run(cron: &str, scheduled_ms: f64, env: &Env) {
    let request_id = format!("cron_{}", util::random_hex(8).unwrap_or_default());
    let now =
        if scheduled_ms.is_finite() && scheduled_ms > 0.0 { (scheduled_ms / 1000.0) as i64 } else { clock::now() };
    let cfg = match Config::cached(crate::env_lookup(env)) {
        Ok(c) => c,
        Err(e) => return log::error(&request_id, "cron.config_invalid", obj! {"error": e}),
    };
    let db = match env.d1("DB") {
        Ok(d) => Db::new(d),
        Err(e) => return log::error(&request_id, "cron.no_d1", obj! {"error": e.to_string()}),
    };
    let billing = Billing::new(&db, &cfg, KvStore::from_env(env, "APP_KV"), now, &request_id).reading_legacy_plans();

    let retries = billing.retry_due(RUN_RETRIES).await;
    let left = RUN_DELIVERIES.saturating_sub(retries.as_ref().map_or(0, |t| t.deliveries));
    let reconciled = if cfg.stripe_secret_key.is_some() { Some(billing.reconcile(left).await) } else { None };
    let purged = webhooks::purge_processed(&db, now).await;
    let purged_keys = crate::store::usage::purge_requests(&db, now).await;
    let copies = billing.flush_due_copies(COPIES_PER_RUN).await;
    // A slice of the legacy plan backfill, from where the last one stopped.
    let plans = if cfg.migrate_plans_in_cron {
        let slice = billing.migrate_plans(None, crate::billing::legacy::MAX_PAGE, false, false).await;
        slice.unwrap_or_else(|e| obj! {"error": e.to_string()})
    } else {
        Value::from("off")
    };

    let summary = |r: &Result<Tally, ApiError>| match r {
        Ok(t) => obj! {"processed": t.processed, "failed": t.failed, "skipped": t.skipped, "more": t.more},
        Err(e) => obj! {"error": e.to_string()},
    };
    log::info(
        &request_id,
        "cron.done",
        obj! {
            "cron": cron,
            "retries": summary(&retries),
            "reconcile": reconciled.as_ref().map(summary).unwrap_or_else(|| "skipped: no STRIPE_SECRET_KEY".into()),
            "legacyPlans": plans,
            "kvCopies": copies.as_ref().map(|n| Value::from(*n)).unwrap_or_else(|e| obj! {"error": e.to_string()}),
            "purged": purged.as_ref().map(|n| Value::from(*n)).unwrap_or_else(|e| obj! {"error": e.to_string()}),
            "purgedUsageKeys": purged_keys.as_ref().map(|n| Value::from(*n as u64)).unwrap_or_else(|e| obj! {"error": e.to_string()}),
        },
    );
}

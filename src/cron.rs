//! The `scheduled` handler (crons in `wrangler.toml`): retries failed webhook events
//! with backoff (then leaves them `dead`), takes over events whose processing lease
//! expired, reconciles with Stripe's Events API (`delivery_success=false` since the
//! last cursor), and deletes processed events past the retention period.

use serde_json::{json, Value};
use worker::Env;

use crate::billing::{Billing, Delivery};
use crate::config::Config;
use crate::error::ApiError;
use crate::store::db::Db;
use crate::store::{state, webhooks};
use crate::stripe::client::StripeRequest;
use crate::stripe::events;
use crate::{clock, log, util};

const RETRY_BATCH: i64 = 25;
const RECONCILE_PAGES: usize = 5;
const CURSOR: &str = "reconcile:cursor";
/// First run: look back as far as Stripe retries deliveries.
const FIRST_WINDOW_SECONDS: i64 = 3 * 86_400;
/// Events are listed again for this long after the cursor passes them, in case their
/// first delivery attempt failed after the previous run looked.
const OVERLAP_SECONDS: i64 = 3_600;

#[derive(Default)]
struct Tally {
    processed: u32,
    failed: u32,
    skipped: u32,
}

impl Tally {
    fn add(&mut self, d: &Delivery) {
        match d {
            Delivery::Processed => self.processed += 1,
            Delivery::Failed(_) => self.failed += 1,
            Delivery::Duplicate | Delivery::InProgress | Delivery::Dead => self.skipped += 1,
        }
    }
}

/// `scheduled_ms` is the event's scheduled time: the cron's "now" (tests dispatch
/// runs "later" by passing a future time).
pub async fn run(cron: &str, scheduled_ms: f64, env: &Env) {
    let request_id = format!("cron_{}", util::random_hex(8).unwrap_or_default());
    let now =
        if scheduled_ms.is_finite() && scheduled_ms > 0.0 { (scheduled_ms / 1000.0) as i64 } else { clock::now() };
    let cfg = match Config::from_lookup(|n| env.var(n).ok().map(|v| v.to_string())) {
        Ok(c) => c,
        Err(e) => return log::error(&request_id, "cron.config_invalid", json!({"error": e})),
    };
    let db = match env.d1("DB") {
        Ok(d) => Db::new(d),
        Err(e) => return log::error(&request_id, "cron.no_d1", json!({"error": e.to_string()})),
    };
    let billing = Billing::new(&db, &cfg, env.kv("APP_KV").ok(), now, &request_id);

    let retries = retry_due(&billing).await;
    let reconciled = if cfg.stripe_secret_key.is_some() { Some(reconcile(&billing).await) } else { None };
    let purged = webhooks::purge_processed(&db, now).await;

    let summary = |r: &Result<Tally, ApiError>| match r {
        Ok(t) => json!({"processed": t.processed, "failed": t.failed, "skipped": t.skipped}),
        Err(e) => json!({"error": e.to_string()}),
    };
    log::info(
        &request_id,
        "cron.done",
        json!({
            "cron": cron,
            "retries": summary(&retries),
            "reconcile": reconciled.as_ref().map(summary).unwrap_or(json!("skipped: no STRIPE_SECRET_KEY")),
            "purged": purged.as_ref().map(|n| json!(n)).unwrap_or_else(|e| json!({"error": e.to_string()})),
        }),
    );
}

async fn retry_due(billing: &Billing<'_>) -> Result<Tally, ApiError> {
    let mut tally = Tally::default();
    for row in webhooks::due(billing.db, billing.now, RETRY_BATCH).await? {
        let ev = serde_json::from_str::<Value>(&row.payload)
            .map_err(|e| e.to_string())
            .and_then(events::envelope_from_value);
        match ev {
            Ok(ev) => tally.add(&billing.deliver(&ev, &row.payload, "retry").await?),
            Err(e) => {
                // A stored payload that cannot be parsed will never succeed.
                webhooks::give_up(billing.db, &row.id, &format!("unparsable payload: {e}")).await?;
                tally.failed += 1;
            }
        }
    }
    Ok(tally)
}

async fn reconcile(billing: &Billing<'_>) -> Result<Tally, ApiError> {
    let now = billing.now;
    let cursor =
        state::get(billing.db, CURSOR).await?.and_then(|c| c.parse::<i64>().ok()).unwrap_or(now - FIRST_WINDOW_SECONDS);
    let mut tally = Tally::default();
    let mut newest: Option<i64> = None;
    let mut after: Option<String> = None;
    let mut complete = false;
    for _ in 0..RECONCILE_PAGES {
        let mut req = StripeRequest::get("/v1/events")
            .param("delivery_success", "false")
            .param("created[gte]", cursor.to_string())
            .param("limit", "100");
        if let Some(a) = &after {
            req = req.param("starting_after", a.as_str());
        }
        let page = billing.stripe.send(&req).await.map_err(ApiError::server)?;
        let data = page.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        for raw in &data {
            let Ok(ev) = events::envelope_from_value(raw.clone()) else {
                continue;
            };
            newest = Some(newest.map_or(ev.created, |n| n.max(ev.created)));
            tally.add(&billing.deliver(&ev, &raw.to_string(), "reconcile").await?);
        }
        after = data.last().and_then(|e| events::id_of(e.get("id")));
        if page.get("has_more").and_then(Value::as_bool) != Some(true) || after.is_none() {
            complete = true;
            break;
        }
    }
    // The Events API lists newest first: while older pages remain unread the cursor
    // stays, so the next run reads them (the ones processed now are skipped cheaply).
    if complete {
        let next = cursor.max(newest.unwrap_or(now).min(now) - OVERLAP_SECONDS);
        state::set(billing.db, CURSOR, &next.to_string(), now).await?;
    }
    Ok(tally)
}

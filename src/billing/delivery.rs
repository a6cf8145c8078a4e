//! The delivery pipeline of Stripe events: claim (idempotency, leases), process, record
//! the outcome in the same batch as the effects, retry with backoff (the cron), and
//! reconcile with Stripe's Events API for deliveries Stripe never made.

use serde_json::{json, Value};

use super::Billing;
use crate::error::ApiError;
use crate::log;
use crate::store::{state, webhooks};
use crate::stripe::client::StripeRequest;
use crate::stripe::events::{self, Envelope};

/// The result of one delivery (webhook, cron retry, reconciliation or admin retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Processed,
    Duplicate,
    InProgress,
    /// Failed earlier and its next retry is not due before `retry_at` (unix seconds):
    /// not another attempt. The webhook answers a retryable status.
    NotDue {
        retry_at: i64,
    },
    /// The cron gave up on it after a day of failures; only a delivery from Stripe or
    /// an admin retry processes it again.
    Dead,
    /// Failed and recorded for retry; the cause is for the log.
    Failed(String),
}

impl Billing<'_> {
    /// Claims, processes and records one event.
    pub async fn deliver(&self, ev: &Envelope, payload: &str, source: &str) -> Result<Delivery, ApiError> {
        let token = self.request_id;
        let (attempts, first_failed_at) = match webhooks::claim(self.db, ev, payload, source, token, self.now).await? {
            webhooks::Claim::Claimed { attempts, first_failed_at } => (attempts, first_failed_at),
            webhooks::Claim::AlreadyProcessed => return Ok(Delivery::Duplicate),
            webhooks::Claim::InProgress => return Ok(Delivery::InProgress),
            webhooks::Claim::NotDue { retry_at } => return Ok(Delivery::NotDue { retry_at }),
            webhooks::Claim::Dead => return Ok(Delivery::Dead),
        };
        match self.process(ev).await {
            Ok(outcome) => {
                let mut stmts = outcome.stmts;
                stmts.push(webhooks::processed_stmt(&ev.id, token, self.now));
                if let Err(e) = self.db.batch(stmts).await {
                    let cause = e.to_string();
                    webhooks::mark_failed(self.db, &ev.id, token, attempts, first_failed_at, &cause, self.now).await?;
                    return Ok(Delivery::Failed(cause));
                }
                self.refresh_copies(&outcome.users).await;
                log::info(
                    self.request_id,
                    "stripe.event_processed",
                    json!({"eventId": ev.id, "type": ev.kind, "source": source, "note": outcome.note, "ownRequest": ev.caused_by_plangate()}),
                );
                Ok(Delivery::Processed)
            }
            Err(failure) => {
                if let Some(fallback) = failure.fallback.filter(|f| !f.stmts.is_empty()) {
                    match self.db.batch(fallback.stmts).await {
                        Ok(_) => self.refresh_copies(&fallback.users).await,
                        Err(e) => log::error(
                            self.request_id,
                            "stripe.fallback_failed",
                            json!({"eventId": ev.id, "error": e.to_string()}),
                        ),
                    }
                }
                webhooks::mark_failed(self.db, &ev.id, token, attempts, first_failed_at, &failure.cause, self.now)
                    .await?;
                log::error(
                    self.request_id,
                    "stripe.event_failed",
                    json!({"eventId": ev.id, "type": ev.kind, "source": source, "attempts": attempts, "error": failure.cause}),
                );
                Ok(Delivery::Failed(failure.cause))
            }
        }
    }

    /// Retries failed events whose backoff has passed and takes over expired leases.
    pub async fn retry_due(&self) -> Result<Tally, ApiError> {
        let billing = self;
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

    /// Delivers the events Stripe lists as undelivered since the cursor.
    pub async fn reconcile(&self) -> Result<Tally, ApiError> {
        let billing = self;
        let now = billing.now;
        let cursor = state::get(billing.db, CURSOR)
            .await?
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(now - FIRST_WINDOW_SECONDS);
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
}

const RETRY_BATCH: i64 = 25;
const RECONCILE_PAGES: usize = 5;
const CURSOR: &str = "reconcile:cursor";
/// First run: look back as far as Stripe retries deliveries.
const FIRST_WINDOW_SECONDS: i64 = 3 * 86_400;
/// Events are listed again for this long after the cursor passes them, in case their
/// first delivery attempt failed after the previous run looked.
const OVERLAP_SECONDS: i64 = 3_600;

#[derive(Default)]
pub struct Tally {
    pub processed: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl Tally {
    fn add(&mut self, d: &Delivery) {
        match d {
            Delivery::Processed => self.processed += 1,
            Delivery::Failed(_) => self.failed += 1,
            Delivery::Duplicate | Delivery::InProgress | Delivery::NotDue { .. } | Delivery::Dead => self.skipped += 1,
        }
    }
}

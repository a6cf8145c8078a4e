//! The delivery pipeline of Stripe events: claim (idempotency, leases), process, record
//! the outcome in the same batch as the effects, retry with backoff (the cron), and
//! reconcile with Stripe's Events API for deliveries Stripe never made.

use serde_json::Value;

use super::Billing;
use crate::error::ApiError;
use crate::store::{state, users, webhooks};
use crate::stripe::client::{StripeError, StripeRequest};
use crate::stripe::events::{self, Envelope, EventKind};
use crate::util::Columns;
use crate::{clock, log};

/// The result of one delivery (webhook, cron retry, reconciliation or admin retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Processed,
    /// Nothing left for this delivery to do: processed already or, for the cron and the
    /// reconciliation only, `dead` (a delivery from Stripe or an admin retry takes a
    /// dead event again, see `webhooks::claim`, so neither is ever answered this for one).
    Duplicate,
    InProgress,
    /// Failed earlier and its next retry is not due before `retry_at` (unix seconds):
    /// not another attempt. The webhook answers a retryable status.
    NotDue {
        retry_at: i64,
    },
    /// Failed and recorded for retry; the cause is for the log.
    Failed(String),
}

impl Billing<'_> {
    /// Claims, processes and records one event.
    pub async fn deliver(&self, ev: &Envelope, payload: &str, source: &str) -> Result<Delivery, ApiError> {
        if EventKind::of(&ev.kind) == EventKind::Unknown {
            // Recorded only: one D1 statement, new or duplicate.
            return Ok(match webhooks::record_only(self.db, ev, payload, source, self.now).await? {
                true => Delivery::Processed,
                false => Delivery::Duplicate,
            });
        }
        let token = self.request_id;
        // The user of the event's customer is read with the claim: one round trip less
        // for every event that needs it (see `sync::user_by_customer`).
        let customer = events::customer_of(&ev.object).or_else(|| {
            (ev.object.get("object").and_then(Value::as_str) == Some("customer"))
                .then(|| events::id_of(ev.object.get("id")))
                .flatten()
        });
        let also = customer.as_deref().map(users::by_customer_stmt);
        let (claim, rows) = webhooks::claim(self.db, ev, payload, source, token, self.now, also).await?;
        let (attempts, first_failed_at) = match claim {
            webhooks::Claim::Claimed { attempts, first_failed_at } => {
                // A row that does not decode is not taken: processing reads it again
                // and fails the event (retried) rather than the request.
                if let Ok(user) = rows.into_iter().next().map(users::from_row).transpose() {
                    *self.prefetched.borrow_mut() = customer.map(|c| (c, user));
                }
                (attempts, first_failed_at)
            }
            // Dead: the cron gave up on it (only its own sources find it so).
            webhooks::Claim::AlreadyProcessed | webhooks::Claim::Dead => return Ok(Delivery::Duplicate),
            webhooks::Claim::InProgress => return Ok(Delivery::InProgress),
            webhooks::Claim::NotDue { retry_at } => return Ok(Delivery::NotDue { retry_at }),
        };
        let processed = self.process(ev).await;
        self.prefetched.borrow_mut().take();
        match processed {
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
                    crate::obj! {
                        "eventId": ev.id.as_str(),
                        "type": ev.kind.as_str(),
                        "source": source,
                        "note": outcome.note,
                        "ownRequest": ev.caused_by_plangate(),
                    },
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
                            crate::obj! {"eventId": ev.id.as_str(), "error": e.to_string()},
                        ),
                    }
                }
                webhooks::mark_failed(self.db, &ev.id, token, attempts, first_failed_at, &failure.cause, self.now)
                    .await?;
                log::error(
                    self.request_id,
                    "stripe.event_failed",
                    crate::obj! {
                        "eventId": ev.id.as_str(),
                        "type": ev.kind.as_str(),
                        "source": source,
                        "attempts": attempts,
                        "error": failure.cause.as_str(),
                    },
                );
                Ok(Delivery::Failed(failure.cause))
            }
        }
    }

    /// Retries failed events whose backoff has passed and takes over expired leases,
    /// oldest first, at most `max` of them (the rest are due in the next run).
    pub async fn retry_due(&self, max: u32) -> Result<Tally, ApiError> {
        let billing = self;
        let mut tally = Tally::default();
        let rows = webhooks::due(billing.db, billing.now, i64::from(max)).await?;
        tally.more = rows.len() as u32 >= max;
        for row in rows {
            let ev = serde_json::from_str::<Value>(&row.payload)
                .map_err(|e| e.to_string())
                .and_then(events::envelope_from_value);
            match ev {
                Ok(ev) => tally.add(&billing.deliver(&ev, &row.payload, "retry").await?),
                Err(e) => {
                    // A stored payload that cannot be parsed will never succeed.
                    webhooks::give_up(billing.db, &row.id, &format!("unparsable payload: {e}")).await?;
                    tally.failed += 1;
                    tally.deliveries += 1;
                }
            }
        }
        Ok(tally)
    }

    /// Delivers the events Stripe lists as undelivered (`delivery_success=false`) that
    /// plangate never recorded, at most `max` per call and at most [`RECONCILE_PAGES`]
    /// pages of the Events API.
    ///
    /// The Events API lists newest first. A walk starts from the newest event at or
    /// after the cursor and goes back page by page (`starting_after`); where a call
    /// stops (budget or pages spent), the walk's position is kept in `app_state` and the
    /// next call carries on from there. Only a completed walk moves the cursor (to the
    /// newest event it saw, minus an hour of overlap), so events created during a walk
    /// — newer than its first page — are listed by the next walk.
    pub async fn reconcile(&self, max: u32) -> Result<Tally, ApiError> {
        let mut tally = Tally::default();
        if max == 0 {
            tally.more = true;
            return Ok(tally);
        }
        let saved = state::get(self.db, WALK).await?;
        let walk = saved.as_deref().and_then(|w| match Walk::parse(w) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn(self.request_id, "reconcile.walk_unreadable", crate::obj! {"error": e});
                None
            }
        });
        let mut walk = match walk {
            Some(w) => w,
            None => {
                // Stripe's clock, not the run's scheduled time (which tests move).
                let started = clock::now();
                let cursor = state::get(self.db, CURSOR).await?.and_then(|c| c.parse::<i64>().ok());
                Walk { gte: cursor.unwrap_or(started - FIRST_WINDOW_SECONDS), after: None, newest: None, started }
            }
        };
        let walked = self.walk(&mut walk, max, &mut tally).await;
        // Whatever happened, keep the position reached: what was delivered is recorded.
        match walked {
            Ok(true) => {
                let newest = walk.newest.unwrap_or(walk.started).min(walk.started);
                let next = walk.gte.max(newest - OVERLAP_SECONDS);
                state::set(self.db, CURSOR, Some(&next.to_string()), self.now).await?;
                state::set(self.db, WALK, None, self.now).await?;
            }
            Ok(false) | Err(_) => {
                tally.more = true;
                state::set(self.db, WALK, Some(&walk.text()), self.now).await?;
            }
        }
        walked.map(|_| tally)
    }

    /// Reads pages of the walk from its position; `true` once its last page is read.
    async fn walk(&self, walk: &mut Walk, max: u32, tally: &mut Tally) -> Result<bool, ApiError> {
        for _ in 0..RECONCILE_PAGES {
            let mut req = StripeRequest::get("/v1/events")
                .param("delivery_success", "false")
                .param("created[gte]", walk.gte.to_string())
                .param("limit", "100");
            if let Some(a) = &walk.after {
                req = req.param("starting_after", a.as_str());
            }
            let page = match self.stripe.send(&req).await {
                Ok(page) => page,
                Err(StripeError::Api { status, .. }) if walk.after.is_some() && (400..500).contains(&status) => {
                    // The event the walk stopped at is gone: start this walk over.
                    log::warn(
                        self.request_id,
                        "reconcile.walk_restarted",
                        crate::obj! {"after": walk.after.as_deref(), "status": status},
                    );
                    walk.after = None;
                    continue;
                }
                Err(e) => return Err(ApiError::server(e)),
            };
            let data = page.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
            let ids: Vec<String> = data.iter().filter_map(|e| events::id_of(e.get("id"))).collect();
            let known = webhooks::known(self.db, &ids).await?;
            for raw in &data {
                let Some(id) = events::id_of(raw.get("id")) else {
                    continue;
                };
                // Recorded events are the retries' business (or processed, or dead).
                if !known.contains(&id) {
                    match events::envelope_from_value(raw.clone()) {
                        Ok(ev) => {
                            if tally.deliveries >= max {
                                return Ok(false);
                            }
                            tally.add(&self.deliver(&ev, &crate::util::json_text(raw), "reconcile").await?);
                        }
                        Err(_) => tally.skipped += 1,
                    }
                } else {
                    tally.skipped += 1;
                }
                if let Some(created) = raw.get("created").and_then(Value::as_i64) {
                    walk.newest = Some(walk.newest.map_or(created, |n| n.max(created)));
                }
                walk.after = Some(id);
            }
            if data.is_empty() || page.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Deliveries one cron run makes at most, retries and reconciliation together. Each
/// costs a few Stripe calls, D1 queries and KV writes, and one Worker invocation may
/// make a bounded number of subrequests (1,000 on the paid plan) and D1 queries; what
/// is left over is done by the next run.
pub const RUN_DELIVERIES: u32 = 40;
/// Of which retries take at most this many, so reconciliation always gets a share.
pub const RUN_RETRIES: u32 = 25;
/// Events API pages (of 100) one reconciliation reads at most.
pub const RECONCILE_PAGES: usize = 5;
const CURSOR: &str = "reconcile:cursor";
/// The walk in progress (JSON [`Walk`]); absent between walks.
const WALK: &str = "reconcile:walk";
/// First run: look back as far as Stripe retries deliveries.
const FIRST_WINDOW_SECONDS: i64 = 3 * 86_400;
/// Events are listed again for this long after the cursor passes them, in case their
/// first delivery attempt failed after the previous run looked.
const OVERLAP_SECONDS: i64 = 3_600;

/// A reconciliation walk over the Events API, kept between cron runs (as JSON, its
/// fields by name).
#[derive(Debug)]
struct Walk {
    /// `created[gte]` of the walk: the cursor when it began.
    gte: i64,
    /// The last event handled; the walk goes on after it.
    after: Option<String>,
    /// The newest `created` the walk has seen (its first page's).
    newest: Option<i64>,
    /// When the walk began (wall clock).
    started: i64,
}

impl Walk {
    fn text(&self) -> String {
        let after = self.after.as_deref();
        crate::util::json_text(
            &crate::obj! {"gte": self.gte, "after": after, "newest": self.newest, "started": self.started},
        )
    }

    fn parse(text: &str) -> Result<Walk, String> {
        let mut c = Columns::of(serde_json::from_str(text).map_err(|e| e.to_string())?, "the walk")?;
        let r = Walk {
            gte: c.int("gte"),
            after: c.opt_text("after"),
            newest: c.opt_int("newest"),
            started: c.int("started"),
        };
        c.done(r)
    }
}

#[derive(Default)]
pub struct Tally {
    pub processed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Deliveries made (what the run's budget counts).
    pub deliveries: u32,
    /// Stopped at its budget: the next run carries on.
    pub more: bool,
}

impl Tally {
    fn add(&mut self, d: &Delivery) {
        self.deliveries += 1;
        match d {
            Delivery::Processed => self.processed += 1,
            Delivery::Failed(_) => self.failed += 1,
            Delivery::Duplicate | Delivery::InProgress | Delivery::NotDue { .. } => self.skipped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Walk;

    #[test]
    fn a_kept_walk_reads_back_and_a_walk_kept_by_earlier_versions_still_reads() {
        let w = Walk { gte: 1, after: Some("evt_1".into()), newest: None, started: 2 };
        let back = Walk::parse(&w.text()).unwrap();
        assert_eq!((back.gte, back.after.as_deref(), back.newest, back.started), (1, Some("evt_1"), None, 2));
        let old = Walk::parse(r#"{"gte":5,"after":null,"newest":7,"started":6}"#).unwrap();
        assert_eq!((old.gte, old.after, old.newest, old.started), (5, None, Some(7), 6));
        assert!(Walk::parse(r#"{"gte":5,"after":null,"newest":7}"#).unwrap_err().contains("started"));
        assert!(Walk::parse(r#"{"gte":"5","started":6}"#).unwrap_err().contains("gte"));
        assert!(Walk::parse("[1]").is_err() && Walk::parse("{").is_err());
    }
}

//! Applying what Stripe says to D1: webhook deliveries, retries, reconciliation and
//! re-syncs all go through here, so there is one code path from Stripe state to a
//! user's row.
//!
//! Subscription state is never taken blindly from a payload: subscription-bearing
//! events re-fetch the subscription from Stripe and apply that (as of the fetch time).
//! When Stripe cannot be reached, a subscription event's payload is applied only if it
//! is not older than the state already stored, and the event is still marked failed so
//! a retry confirms it against Stripe. Users are linked by `client_reference_id`,
//! `metadata.user_id` or the stored customer id, never by email.

use serde_json::Value;

use super::Billing;
use crate::domain::account::UserRecord;
use crate::domain::subscription::{best, state_from, Subscription};
use crate::error::ApiError;
use crate::log;
use crate::store::db::Stmt;
use crate::store::payments::{self, PaymentWrite};
use crate::store::{kv, outbox, state, users};
use crate::stripe::client::{StripeError, StripeRequest};
use crate::stripe::events::{self, Envelope, EventKind};

/// Writes an event causes, committed in one batch with its `processed` mark.
#[derive(Default)]
pub struct Outcome {
    pub stmts: Vec<Stmt>,
    /// Users whose row may have changed: their KV copies are refreshed after commit.
    pub users: Vec<String>,
    pub note: &'static str,
    /// The subscription (as Stripe answered) whose state the statements store.
    pub applied: Option<(Subscription, String)>,
}

impl Outcome {
    fn noop(note: &'static str) -> Self {
        Outcome { note, ..Outcome::default() }
    }
}

pub(super) struct Failure {
    pub cause: String,
    /// Writes that are still safe to commit (order-guarded payload state).
    pub fallback: Option<Outcome>,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure { cause: e.to_string(), fallback: None }
    }
}

impl From<StripeError> for Failure {
    fn from(e: StripeError) -> Self {
        Failure { cause: e.to_string(), fallback: None }
    }
}

impl Billing<'_> {
    pub(super) async fn process(&self, ev: &Envelope) -> Result<Outcome, Failure> {
        let cause = format!("webhook:{}", ev.id);
        match EventKind::of(&ev.kind) {
            EventKind::SubscriptionChanged | EventKind::SubscriptionDeleted => {
                let payload = events::parse_subscription(&ev.object, self.now)
                    .ok_or_else(|| Failure { cause: "event object is not a subscription".into(), fallback: None })?;
                let id = payload.id.clone();
                self.subscription_event(ev, &id, None, Some(payload), &cause).await
            }
            EventKind::InvoicePaid => match events::invoice_subscription(&ev.object) {
                Some(id) => {
                    let mut outcome = self.subscription_event(ev, &id, None, None, &cause).await?;
                    // The period's credits, once per (subscription, period start), in
                    // the same batch as the state the invoice confirms.
                    if let (Some(invoice), Some(user), Some((sub, plan))) =
                        (events::parse_invoice(&ev.object), outcome.users.first(), outcome.applied.as_ref())
                    {
                        let grant =
                            self.period_grant_stmts(user, &id, &invoice, sub.current_period_start, plan, &ev.id)?;
                        outcome.stmts.extend(grant);
                    }
                    Ok(outcome)
                }
                None => Ok(Outcome::noop("invoice without subscription")),
            },
            EventKind::InvoicePaymentFailed => match events::invoice_subscription(&ev.object) {
                Some(id) => self.subscription_event(ev, &id, None, None, &cause).await,
                None => Ok(Outcome::noop("invoice without subscription")),
            },
            EventKind::CheckoutCompleted => {
                let cs = events::parse_checkout_session(&ev.object).ok_or_else(|| Failure {
                    cause: "event object is not a checkout session".into(),
                    fallback: None,
                })?;
                let hint = cs.client_reference_id.clone().or(cs.metadata_user_id.clone());
                match (&cs.mode[..], &cs.subscription) {
                    ("subscription", Some(sub)) => self.subscription_event(ev, sub, hint, None, &cause).await,
                    _ => self.checkout_payment(ev, &cs, hint).await,
                }
            }
            EventKind::CustomerUpdated => self.customer_updated(ev).await,
            EventKind::CustomerDeleted => self.customer_deleted(ev).await,
            EventKind::PaymentIntentSucceeded | EventKind::PaymentIntentFailed => {
                let p = events::parse_payment_intent(&ev.object)
                    .ok_or_else(|| Failure { cause: "event object is not a payment intent".into(), fallback: None })?;
                let status =
                    if EventKind::of(&ev.kind) == EventKind::PaymentIntentSucceeded { "succeeded" } else { "failed" };
                self.record_payment(ev, &p, status).await
            }
            EventKind::ChargeRefunded => {
                let p = events::parse_charge(&ev.object)
                    .ok_or_else(|| Failure { cause: "event object is not a charge".into(), fallback: None })?;
                let full = matches!((p.amount, p.amount_refunded), (Some(a), Some(r)) if r >= a);
                self.record_payment(ev, &p, if full { "refunded" } else { "partially_refunded" }).await
            }
            EventKind::Unknown => Ok(Outcome::noop("event type not handled; recorded")),
        }
    }

    async fn fetch_subscription(&self, id: &str) -> Result<Option<Subscription>, StripeError> {
        if !StripeRequest::is_safe_id(id) {
            return Ok(None);
        }
        let req = StripeRequest::get(format!("/v1/subscriptions/{id}")).param("expand[]", "schedule");
        match self.stripe.send(&req).await {
            Ok(v) => Ok(events::parse_subscription(&v, self.now)),
            Err(StripeError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All subscriptions of a customer, any status.
    pub async fn customer_subscriptions(&self, customer: &str) -> Result<Vec<Subscription>, StripeError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let mut req = StripeRequest::get("/v1/subscriptions")
                .param("customer", customer)
                .param("status", "all")
                .param("limit", "100")
                .param("expand[]", "data.schedule")
                .param("expand[]", "data.latest_invoice");
            if let Some(a) = &after {
                req = req.param("starting_after", a.as_str());
            }
            let page = self.stripe.send(&req).await?;
            let data = page.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
            out.extend(data.iter().filter_map(|s| events::parse_subscription(s, self.now)));
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                break;
            }
            after = data.last().and_then(|s| events::id_of(s.get("id")));
            if after.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn subscription_event(
        &self,
        ev: &Envelope,
        sub_id: &str,
        hint: Option<String>,
        payload: Option<Subscription>,
        cause: &str,
    ) -> Result<Outcome, Failure> {
        match self.fetch_subscription(sub_id).await {
            // As of the answer's arrival (the Workers clock moves on I/O), not of the
            // request's start or a cron run's scheduled time.
            Ok(Some(sub)) => self.apply_subscription(&sub, hint, crate::clock::now(), true, cause).await,
            Ok(None) => Ok(Outcome::noop("subscription not found at Stripe")),
            Err(e) => {
                // Stripe is unreachable: apply the payload only if it is not older than
                // what is stored (the SQL guard), and fail so a retry confirms it.
                let fallback = match payload {
                    Some(p) => self.apply_subscription(&p, hint, ev.created, false, cause).await.ok(),
                    None => None,
                };
                Err(Failure { cause: e.to_string(), fallback })
            }
        }
    }

    /// The user whose row holds `customer`. The first lookup of the customer a delivery
    /// read with its claim takes that row (read one Stripe call earlier; every write
    /// the event causes is guarded in SQL on the row's state, not on this read).
    async fn user_by_customer(&self, customer: &str) -> Result<Option<UserRecord>, ApiError> {
        let taken = self.prefetched.borrow_mut().take_if(|(c, _)| c == customer);
        match taken {
            Some((_, user)) => Ok(user),
            None => users::find_by_customer(self.db, customer).await,
        }
    }

    /// The plangate user a Stripe object belongs to, and the customer id to link to
    /// them if their row has none yet.
    async fn resolve_user(
        &self,
        hint: Option<&str>,
        customer: &str,
    ) -> Result<Option<(UserRecord, Option<String>)>, ApiError> {
        // The customer's owner, when there is one, is the answer whatever the hint
        // (client_reference_id / metadata.user_id) says: a hint must never move another
        // customer's subscription onto someone else's row. A hint is trusted only for a
        // user without a customer yet, who is then linked to this one.
        if let Some(owner) = self.user_by_customer(customer).await? {
            if let Some(hinted) = hint.filter(|h| *h != owner.id) {
                log::warn(
                    self.request_id,
                    "stripe.hint_ignored_customer_owned_by_another_user",
                    crate::obj! {"customer": customer, "hintUser": hinted, "owner": owner.id.as_str()},
                );
            }
            return Ok(Some((owner, None)));
        }
        let Some(user_id) = hint else {
            return Ok(None);
        };
        let Some(user) = users::find_by_id(self.db, user_id).await? else {
            return Ok(None);
        };
        match user.stripe_customer_id.as_deref() {
            None => Ok(Some((user, Some(customer.to_string())))),
            Some(other) => {
                log::warn(
                    self.request_id,
                    "stripe.hint_ignored_user_has_another_customer",
                    crate::obj! {"customer": customer, "hintUser": user.id.as_str(), "userCustomer": other},
                );
                Ok(None)
            }
        }
    }

    async fn apply_subscription(
        &self,
        sub: &Subscription,
        hint: Option<String>,
        as_of: i64,
        fetched: bool,
        cause: &str,
    ) -> Result<Outcome, Failure> {
        let hint = hint.or_else(|| sub.user_id.clone());
        let Some((user, link)) = self.resolve_user(hint.as_deref(), &sub.customer).await? else {
            return Ok(Outcome::noop("no plangate user for this customer"));
        };
        let other_current = user.stripe_subscription_id.as_deref().is_some_and(|s| s != sub.id);
        if other_current && !sub.status.is_live() && !fetched {
            return Ok(Outcome::noop("ended subscription is not the user's current one"));
        }
        // Several subscriptions, or this one ended: decide from all of the customer's.
        let listed;
        let chosen = if fetched && (other_current || !sub.status.is_live()) {
            listed = self.customer_subscriptions(&sub.customer).await?;
            best(&listed, &self.cfg.prices).unwrap_or(sub)
        } else {
            sub
        };
        if other_current && chosen.id != sub.id && !chosen.status.is_live() && !sub.status.is_live() {
            return Ok(Outcome::noop("ended subscription is not the user's current one"));
        }
        let state = state_from(chosen, &self.catalog, &self.cfg.prices)
            .map_err(|e| Failure { cause: e.to_string(), fallback: None })?;
        // A customer deleted at Stripe is never linked again (an old subscription of
        // it may still name the user).
        let linkable = user.previous_customer_id.as_deref() != Some(sub.customer.as_str());
        Ok(Outcome {
            stmts: users::apply_state_stmts(
                &user.id,
                &state,
                as_of,
                cause,
                link.as_deref().filter(|_| linkable),
                self.now,
            ),
            users: vec![user.id],
            note: "subscription state applied",
            applied: fetched.then(|| (sub.clone(), state.plan.clone())),
        })
    }

    async fn checkout_payment(
        &self,
        ev: &Envelope,
        cs: &events::CheckoutSession,
        hint: Option<String>,
    ) -> Result<Outcome, Failure> {
        let mut stmts = Vec::new();
        let mut touched = Vec::new();
        let user = match (&hint, &cs.customer) {
            (_, Some(customer)) => self.resolve_user(hint.as_deref(), customer).await?,
            (Some(uid), None) => users::find_by_id(self.db, uid).await?.map(|u| (u, None)),
            (None, None) => None,
        };
        let linkable = |u: &UserRecord, c: &str| u.previous_customer_id.as_deref() != Some(c);
        if let Some((u, Some(customer))) = user.as_ref().filter(|(u, c)| c.as_deref().is_some_and(|c| linkable(u, c))) {
            stmts.push(users::link_customer_stmt(&u.id, customer, self.now));
            touched.push(u.id.clone());
        }
        let id = cs.payment_intent.as_deref().unwrap_or(&cs.id);
        stmts.push(payments::upsert_stmt(
            &PaymentWrite {
                id,
                user_id: user.as_ref().map(|(u, _)| u.id.as_str()),
                customer_id: cs.customer.as_deref(),
                checkout_session_id: Some(&cs.id),
                amount: cs.amount_total,
                amount_refunded: None,
                currency: cs.currency.as_deref(),
                status: if cs.payment_status.as_deref() == Some("paid") { "succeeded" } else { "completed" },
                event_id: &ev.id,
                event_created: ev.created,
            },
            self.now,
        ));
        // A paid pack: its credits, keyed on the payment intent (shared with
        // `payment_intent.succeeded`). A Checkout without a payment intent (nothing to
        // pay) is keyed on itself; with an amount due, the payment intent will come.
        let pack = cs.metadata_pack.as_deref().and_then(|p| self.catalog.pack(p));
        // `no_payment_required`: a free purchase (a 100 % discount), which has no payment intent.
        let paid = matches!(cs.payment_status.as_deref(), Some("paid" | "no_payment_required")) && cs.mode == "payment";
        let keyable = cs.payment_intent.is_some() || cs.amount_total == Some(0);
        if let (Some(pack), true, true, Some((u, _))) = (pack, paid, keyable, user.as_ref()) {
            stmts.extend(self.pack_grant_stmts(&u.id, id, pack, &ev.id)?);
            touched.push(u.id.clone());
        }
        Ok(Outcome { stmts, users: touched, note: "checkout payment recorded", applied: None })
    }

    async fn record_payment(&self, ev: &Envelope, p: &events::Payment, status: &str) -> Result<Outcome, Failure> {
        let user = match (&p.user_id, &p.customer) {
            (Some(uid), _) => users::find_by_id(self.db, uid).await?,
            (None, Some(c)) => self.user_by_customer(c).await?,
            (None, None) => None,
        };
        let user_id = user.as_ref().map(|u| u.id.clone());
        let mut outcome = Outcome {
            stmts: vec![payments::upsert_stmt(
                &PaymentWrite {
                    id: &p.payment_intent,
                    user_id: user.as_ref().map(|u| u.id.as_str()),
                    customer_id: p.customer.as_deref(),
                    checkout_session_id: None,
                    amount: p.amount,
                    amount_refunded: p.amount_refunded,
                    currency: p.currency.as_deref(),
                    status,
                    event_id: &ev.id,
                    event_created: ev.created,
                },
                self.now,
            )],
            users: Vec::new(),
            note: "payment recorded",
            applied: None,
        };
        let pack = p.pack.as_deref().and_then(|id| self.catalog.pack(id));
        match (status, pack, user_id) {
            ("succeeded", Some(pack), Some(uid)) => {
                outcome.stmts.extend(self.pack_grant_stmts(&uid, &p.payment_intent, pack, &ev.id)?);
                outcome.users.push(uid);
            }
            ("refunded" | "partially_refunded", _, uid) => {
                outcome.stmts.extend(self.refund_stmts(uid.as_deref(), &p.payment_intent, &ev.id)?);
                outcome.users.extend(uid);
            }
            _ => {}
        }
        Ok(outcome)
    }

    async fn customer_updated(&self, ev: &Envelope) -> Result<Outcome, Failure> {
        let Some(id) = events::id_of(ev.object.get("id")).filter(|id| StripeRequest::is_safe_id(id)) else {
            return Ok(Outcome::noop("customer without id"));
        };
        let customer = match self.stripe.send(&StripeRequest::get(format!("/v1/customers/{id}"))).await {
            Ok(c) => c,
            Err(StripeError::Api { status: 404, .. }) => return Ok(Outcome::noop("customer not found at Stripe")),
            Err(e) => return Err(e.into()),
        };
        if customer.get("deleted").and_then(Value::as_bool) == Some(true) {
            return Ok(Outcome::noop("customer deleted"));
        }
        let email = customer.get("email").and_then(Value::as_str).filter(|e| !e.is_empty() && e.len() <= 320);
        Ok(Outcome {
            stmts: vec![users::set_email_by_customer_stmt(&id, email, self.now)],
            users: Vec::new(),
            note: "customer email synced",
            applied: None,
        })
    }

    /// A customer deleted at Stripe (e.g. in the dashboard): its user loses the
    /// customer and what it paid for, audited. The signed event is enough: deletion is
    /// final, so there is nothing to re-fetch. The next billing action creates a new
    /// customer.
    async fn customer_deleted(&self, ev: &Envelope) -> Result<Outcome, Failure> {
        let Some(id) = events::id_of(ev.object.get("id")) else {
            return Ok(Outcome::noop("customer without id"));
        };
        let Some(user) = self.user_by_customer(&id).await? else {
            return Ok(Outcome::noop("deleted customer belongs to no plangate user"));
        };
        let default_plan = self.catalog.id(self.catalog.default_tier());
        Ok(Outcome {
            stmts: users::customer_gone_stmts(&id, default_plan, &format!("webhook:{}", ev.id), ev.created, self.now),
            users: vec![user.id],
            note: "customer deleted: customer and subscription cleared",
            applied: None,
        })
    }

    /// Re-reads a user's subscriptions from Stripe and stores the truth.
    pub async fn resync_user(&self, user: &UserRecord, cause: &str) -> Result<bool, ApiError> {
        let Some(customer) = user.stripe_customer_id.as_deref() else {
            return Ok(false);
        };
        let subs = self.customer_subscriptions(customer).await.map_err(ApiError::server)?;
        self.apply_best(user, &subs, cause).await
    }

    /// Stores the state of the best of `subs` (or of no subscription) for `user`.
    pub async fn apply_best(&self, user: &UserRecord, subs: &[Subscription], cause: &str) -> Result<bool, ApiError> {
        let state = match best(subs, &self.cfg.prices) {
            Some(s) => state_from(s, &self.catalog, &self.cfg.prices).map_err(ApiError::server)?,
            None => crate::domain::subscription::no_subscription(&self.catalog),
        };
        // `subs` were just read: as of now (the clock has moved past that answer).
        let as_of = crate::clock::now();
        let mut stmts = users::apply_state_stmts(&user.id, &state, as_of, cause, None, self.now);
        // A re-sync also repairs a KV copy that diverged: due whatever changed.
        stmts.push(outbox::due_stmt(&user.id, self.now));
        stmts.push(users::forget_kv_written_stmt(&user.id));
        self.db.batch(stmts).await?;
        self.refresh_copies(std::slice::from_ref(&user.id)).await;
        Ok(true)
    }

    /// After D1 commits: the users whose KV copies are due (their outbox rows are
    /// already bumped in the same batch) are written after the response when a sink
    /// collects them, else now. Either way the outbox guarantees they converge.
    pub async fn refresh_copies(&self, user_ids: &[String]) {
        match self.deferred {
            Some(sink) => sink.borrow_mut().extend(user_ids.iter().cloned()),
            None => self.flush_copies(user_ids).await,
        }
    }

    /// Writes the KV copies of `user_ids` from their current D1 rows: the entitlements
    /// cache is dropped and, while `DUAL_WRITE_KV` is on, the legacy plan keys are
    /// rewritten. A user whose row changes during the write is written again (up to
    /// three passes; then the cron finishes). Failures are logged and counted, never
    /// returned: D1 already holds the truth and the outbox keeps the copy due.
    pub async fn flush_copies(&self, user_ids: &[String]) {
        for (i, user_id) in user_ids.iter().enumerate() {
            if user_ids[..i].contains(user_id) {
                continue; // a request touches a handful of users: a scan beats a set
            }
            for _pass in 0..3 {
                match self.flush_one(user_id).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        log::error(
                            self.request_id,
                            "kv.copy_failed",
                            crate::obj! {"userId": user_id.as_str(), "error": e},
                        );
                        if let Err(e) = state::increment(self.db, "counter:kv_dual_write_failed", self.now).await {
                            log::error(self.request_id, "kv.counter_failed", crate::obj! {"error": e.to_string()});
                        }
                        break;
                    }
                }
            }
        }
    }

    /// The cron's part: every user whose copy is still due.
    pub async fn flush_due_copies(&self, limit: i64) -> Result<usize, ApiError> {
        let due = outbox::due(self.db, self.now, limit).await?;
        self.flush_copies(&due).await;
        Ok(due.len())
    }

    /// One pass for one user. `Ok(true)`: the row changed while we wrote, go again.
    async fn flush_one(&self, user_id: &str) -> Result<bool, String> {
        let now = crate::clock::now().max(self.now);
        let Some((version, attempts)) =
            outbox::claim(self.db, user_id, self.request_id, now).await.map_err(|e| e.to_string())?
        else {
            return Ok(false); // nothing due, or another flusher holds it
        };
        let written = crate::util::with_timeout(self.write_copies(user_id), outbox::WRITE_TIMEOUT_MS).await;
        match written.unwrap_or_else(|| Err("KV writes timed out".into())) {
            Ok(record) => {
                let record = record.as_ref().map(|(was, now)| (was, now.as_str()));
                outbox::complete(self.db, user_id, self.request_id, version, record)
                    .await
                    .map(|done| !done)
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                if let Err(e2) = outbox::failed(self.db, user_id, self.request_id, attempts, now).await {
                    log::error(
                        self.request_id,
                        "kv.outbox_release_failed",
                        crate::obj! {"userId": user_id, "error": e2.to_string()},
                    );
                }
                Err(e)
            }
        }
    }

    /// Drops the entitlements cache and writes the legacy keys whose value differs from
    /// what the last completed flush wrote. Returns that record as read and the new one
    /// (`None` when no legacy key is kept).
    async fn write_copies(&self, user_id: &str) -> Result<Option<(Option<String>, String)>, String> {
        let store = self.kv.as_ref().ok_or("APP_KV is not bound")?;
        let Some(user) = users::find_by_id(self.db, user_id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // A tombstone rather than a delete: a read racing this flush cannot cache the old answer.
        let tombstone = kv::entitlements_tombstone(crate::clock::now());
        let put = store.put_bytes(&kv::entitlements_key(&user.auth_id), tombstone.as_bytes());
        put.map_err(|e| e.to_string())?
            .expiration_ttl(kv::ENTITLEMENTS_TTL_SECONDS as u64)
            .execute()
            .await
            .map_err(|e| e.to_string())?;
        let mut ops = 1;
        if !self.cfg.dual_write_kv {
            log::info(self.request_id, "kv.copies_written", crate::obj! {"userId": user_id, "kvOps": ops});
            return Ok(None);
        }
        let values = kv::legacy_plan_values(&user);
        for (key, value) in kv::changed_values(&values, user.kv_written.as_deref()) {
            let r = match value {
                Some(v) => match store.put_bytes(key, v.as_bytes()) {
                    Ok(put) => put.execute().await,
                    Err(e) => Err(e),
                },
                None => store.delete(key).await,
            };
            r.map_err(|e| format!("{key}: {e}"))?;
            ops += 1;
        }
        log::info(self.request_id, "kv.copies_written", crate::obj! {"userId": user_id, "kvOps": ops});
        Ok(Some((user.kv_written, kv::written_record(&values))))
    }

    /// Stores the subscription Stripe answered with after one of plangate's own
    /// calls, at once (not only when the webhook arrives): audit row, KV copies.
    /// Returns the state stored.
    pub async fn apply_answer(
        &self,
        user: &UserRecord,
        answer: &Value,
        cause: &str,
    ) -> Result<crate::domain::subscription::BillingState, ApiError> {
        let sub = events::parse_subscription(answer, self.now)
            .ok_or_else(|| ApiError::server("Stripe answered with something that is not a subscription"))?;
        let state = state_from(&sub, &self.catalog, &self.cfg.prices).map_err(ApiError::server)?;
        let as_of = crate::clock::now(); // the answer's arrival, not the request's start
        let stmts = users::apply_state_stmts(&user.id, &state, as_of, cause, Some(&sub.customer), self.now);
        self.db.batch(stmts).await?;
        self.refresh_copies(std::slice::from_ref(&user.id)).await;
        Ok(state)
    }
}

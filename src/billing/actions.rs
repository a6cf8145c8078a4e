//! What users ask for: upgrade, checkout, portal, cancel, resume, downgrade, sync.
//! Users change plans through plangate only; it talks to Stripe itself and never
//! leaves a customer with two subscriptions.
//!
//! Every action runs under the user's billing lock (a second concurrent one gets
//! `409 BILLING_IN_PROGRESS`) and works on the user's row as re-read *inside* the lock.
//! Each Stripe POST carries an idempotency key derived from the user, the action and
//! the user's `billing_seq`; the customer's creation is keyed on the user alone, so no
//! two actions, racing or retried after a failure, can create a second customer. D1
//! changes only after Stripe confirmed, from Stripe's answer.
//!
//! A customer deleted in the Stripe dashboard is noticed when Stripe answers
//! `resource_missing` for it: the stored customer is cleared (audited) and the action
//! runs once more with a new one.

use std::future::Future;

use futures_util::FutureExt;

use serde_json::Value;

use super::Billing;
use crate::auth::jwt::Identity;
use crate::domain::account::UserRecord;
use crate::domain::plans::Tier;
use crate::domain::subscription::{best, tier_of, Subscription};
use crate::domain::upgrade::{self, CheckoutGuard, Downgrade, Pending, Upgrade};
use crate::error::ApiError;
use crate::store::{locks, users};
use crate::stripe::client::{idempotency_key, StripeError, StripeRequest};
use crate::stripe::events;
use crate::{log, obj};

/// Internal code of a Stripe `resource_missing` answer about the stored customer.
/// Keys of requests that name the customer include it: the run after a replacement
/// must not be answered with Stripe's saved answer for the deleted one.
const CUSTOMER_MISSING: &str = "CUSTOMER_MISSING";

/// The answer of `/api/upgrade-plan`.
pub enum UpgradeResult {
    /// Send the browser to Stripe Checkout.
    Redirect { url: String },
    /// Changed in place; D1 already holds Stripe's answer.
    Updated { plan: String, subscription_id: String, customer_id: String, pending_payment: bool },
}

/// Where a Checkout sends the browser back to, validated by the route.
pub struct CheckoutReturn {
    /// `None`: the caller gave none and no allowed origin can serve as the default.
    pub url: Option<String>,
    pub source: Option<String>,
}

/// A Stripe failure as the client sees it: 502 with the action's code; card errors
/// keep Stripe's message (meant for the customer), everything else is logged only.
fn stripe_failure(code: &'static str, what: &str, e: StripeError) -> ApiError {
    match &e {
        StripeError::Api { kind, message, .. } if kind == "card_error" => {
            ApiError::coded(502, code, format!("{what} failed: {message}"))
        }
        StripeError::Api { code: Some(c), .. } if c == "resource_missing" => ApiError::CodedServer {
            status: 502,
            code: CUSTOMER_MISSING,
            public: "The billing customer is missing at Stripe",
            cause: format!("{what}: {e}"),
        },
        StripeError::NotConfigured => ApiError::server(e),
        _ => ApiError::CodedServer {
            status: 502,
            code,
            public: "Stripe could not complete the request; try again or sync the plan",
            cause: format!("{what}: {e}"),
        },
    }
}

fn no_active_subscription() -> ApiError {
    ApiError::coded(409, "NO_ACTIVE_SUBSCRIPTION", "There is no active subscription to change")
}

fn payment_pending(p: Pending) -> ApiError {
    ApiError::PaymentPending { subscription_status: p.status, invoice_url: p.invoice_url }
}

fn already_subscribed(plan: String) -> ApiError {
    ApiError::CodedPlan {
        status: 409,
        code: "ALREADY_SUBSCRIBED",
        message: "You already have a subscription; change it with /api/upgrade-plan".into(),
        plan,
    }
}

/// A key for one request of the user's action number `seq` (see migrations/0003).
fn key(user: &UserRecord, seq: i64, parts: &[&str]) -> String {
    let seq = seq.to_string();
    let mut all = vec![parts[0], user.id.as_str(), seq.as_str()];
    all.extend_from_slice(&parts[1..]);
    idempotency_key(&all)
}

/// The key of the one customer creation a user ever gets (per replaced customer):
/// the same whatever the action or its sequence number.
pub fn customer_key(user_id: &str, replaces: Option<&str>) -> String {
    match replaces {
        None => idempotency_key(&["customer", user_id]),
        Some(old) => idempotency_key(&["customer", user_id, "replaces", old]),
    }
}

fn with_param(url: &str, param: &str) -> String {
    let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
    let sep = if base.contains('?') { '&' } else { '?' };
    match fragment {
        Some(f) => format!("{base}{sep}{param}#{f}"),
        None => format!("{base}{sep}{param}"),
    }
}

struct CheckoutSpec<'a> {
    price: &'a str,
    trial_days: u32,
    return_url: String,
    source: Option<&'a str>,
}

/// What a checkout session is for, recorded in its metadata so an open one can be
/// recognised: same offer → reuse its URL; another offer → expire it first.
fn offer(spec: &CheckoutSpec<'_>) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}|{}|{}", spec.price, spec.trial_days, spec.return_url));
    hex::encode(&digest[..8])
}

impl Billing<'_> {
    /// The caller's row. On first sight (no row) it is created, holding the user's
    /// legacy plan keys from `APP_KV` when there are any (see `legacy`), else the
    /// default plan; a user with a row is never read from KV.
    pub async fn user_for(&self, who: &Identity) -> Result<UserRecord, ApiError> {
        let email = who.email.as_deref();
        if let Some(user) = users::find_for(self.db, &who.auth_id, email, self.now).await? {
            return Ok(user);
        }
        let created = self.first_sight(&who.auth_id, email, true).await?;
        created.ok_or_else(|| ApiError::server("first sight created no row"))
    }

    /// Runs `action` holding the user's billing lock, with the user's row as it is
    /// once the lock is held and the action's sequence number (part of every
    /// idempotency key it sends).
    ///
    /// Generic over the action, so it is one copy per action in the Wasm: what does
    /// not depend on the action is in `lock` and `unlock`, which exist once.
    async fn locked<T, F>(
        &self,
        user_id: &str,
        name: &str,
        action: impl FnOnce(UserRecord, i64) -> F,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let (user, seq) = self.lock(user_id, name).await?;
        let result = action(user, seq).await;
        self.unlock(user_id).await;
        result
    }

    /// Takes the user's billing lock and reads the user's row under it; returns the row
    /// and the action's sequence number. On any failure the lock is not held.
    async fn lock(&self, user_id: &str, name: &str) -> Result<(UserRecord, i64), ApiError> {
        let Some(seq) = locks::acquire(self.db, user_id, self.request_id, name, self.now).await? else {
            return Err(ApiError::coded(
                409,
                "BILLING_IN_PROGRESS",
                "Another billing action for this account is in progress; try again in a moment",
            ));
        };
        let e = match users::find_by_id(self.db, user_id).await {
            Ok(Some(user)) => return Ok((user, seq)),
            Ok(None) => ApiError::server(format!("user {user_id} vanished under its billing lock")),
            Err(e) => e,
        };
        self.unlock(user_id).await;
        Err(e)
    }

    async fn unlock(&self, user_id: &str) {
        if let Err(e) = locks::release(self.db, user_id, self.request_id).await {
            log::error(
                self.request_id,
                "billing.lock_release_failed",
                obj! {"userId": user_id, "error": e.to_string()},
            );
        }
    }

    /// Runs `body` with the user's Stripe customer (created once per user). When Stripe
    /// says that customer is missing (deleted in the dashboard), the stored one is
    /// cleared and `body` runs once more with a new customer.
    async fn with_customer<T>(
        &self,
        user: UserRecord,
        body: impl AsyncFn(&UserRecord, &str) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let customer = self.customer(&user).await?;
        match body(&user, &customer).await {
            Err(e) if e.code() == CUSTOMER_MISSING => match self.replace_customer(&user, &customer).await? {
                Some((user, customer)) => body(&user, &customer).await,
                None => Err(e),
            },
            other => other,
        }
    }

    /// After Stripe answered that `customer` is missing: when Stripe confirms it is gone,
    /// clears it (audited) and returns the user's row and new customer; `None` when it
    /// is not gone. Not generic, so it exists once for every `with_customer`.
    async fn replace_customer(
        &self,
        user: &UserRecord,
        customer: &str,
    ) -> Result<Option<(UserRecord, String)>, ApiError> {
        if !self.customer_is_gone(customer).await? {
            return Ok(None);
        }
        let as_of = crate::clock::now(); // Stripe's answer, not the request's start
        log::warn(
            self.request_id,
            "billing.customer_missing_recreated",
            obj! {"userId": user.id.as_str(), "customer": customer},
        );
        let default_plan = self.catalog.id(self.catalog.default_tier());
        let gone = users::customer_gone_stmts(customer, default_plan, "api:customer_missing", as_of, self.now);
        self.db.batch(gone).await?;
        self.refresh_copies(std::slice::from_ref(&user.id)).await;
        let user = users::find_by_id(self.db, &user.id).await?.ok_or_else(|| ApiError::server("user vanished"))?;
        let customer = self.customer(&user).await?;
        Ok(Some((user, customer)))
    }

    /// Stripe says the customer does not exist (or was deleted).
    async fn customer_is_gone(&self, customer: &str) -> Result<bool, ApiError> {
        if !StripeRequest::is_safe_id(customer) {
            return Ok(false);
        }
        match self.stripe.send(&StripeRequest::get(format!("/v1/customers/{customer}"))).await {
            // Only Stripe's own word: a 404 means another account or mode (a wrong key),
            // where clearing every customer would wipe paid plans.
            Ok(c) => Ok(c.get("deleted").and_then(Value::as_bool) == Some(true)),
            Err(e) => Err(stripe_failure("UPDATE_FAILED", "read customer", e)),
        }
    }

    /// The user's Stripe customer: the stored one, else one created with a key that
    /// depends on the user only (and the deleted customer it replaces), so every action
    /// that gets here (racing, or retried after a failure to store the id) gets the
    /// same customer back from Stripe.
    async fn customer(&self, user: &UserRecord) -> Result<String, ApiError> {
        let replaces = user.previous_customer_id.as_deref();
        if let Some(c) = &user.stripe_customer_id {
            return Ok(c.clone());
        }
        // Only what never changes goes with the per-user key: the email can be filled in
        // between a lost answer and the retry, and Stripe refuses a key reused with other
        // parameters (`idempotency_error`). The email follows in its own request.
        let req = StripeRequest::post("/v1/customers", customer_key(&user.id, replaces))
            .param("metadata[user_id]", user.id.as_str());
        let created = self.stripe.send(&req).await.map_err(|e| ApiError::CodedServer {
            status: 500,
            code: "CUSTOMER_NOT_FOUND",
            public: "Could not create the billing customer; nothing was changed",
            cause: format!("create customer: {e}"),
        })?;
        let id = events::id_of(created.get("id")).ok_or_else(|| ApiError::server("customer answer without id"))?;
        users::set_customer_if_missing(self.db, &user.id, &id, self.now).await?;
        if let Some(email) = user.email.as_deref().filter(|_| StripeRequest::is_safe_id(&id)) {
            use sha2::{Digest, Sha256};
            let tag = hex::encode(&Sha256::digest(email.as_bytes())[..8]);
            let req =
                StripeRequest::post(format!("/v1/customers/{id}"), idempotency_key(&["customer_email", &id, &tag]))
                    .param("email", email);
            if let Err(e) = self.stripe.send(&req).await {
                // Receipts go without an email until the next try; nothing is billed wrong.
                log::warn(
                    self.request_id,
                    "billing.customer_email_failed",
                    obj! {"customer": id.as_str(), "error": e.to_string()},
                );
            }
        }
        let stored = users::find_by_id(self.db, &user.id).await?.and_then(|u| u.stripe_customer_id);
        stored.ok_or_else(|| ApiError::server("customer id not stored"))
    }

    fn subscriptions<'b>(
        &'b self,
        customer: &'b str,
        code: &'static str,
    ) -> impl Future<Output = Result<Vec<Subscription>, ApiError>> + 'b {
        self.customer_subscriptions(customer).map(move |r| r.map_err(|e| stripe_failure(code, "list subscriptions", e)))
    }

    async fn call(&self, req: StripeRequest, code: &'static str, what: &str) -> Result<Value, ApiError> {
        self.stripe.send(&req).await.map_err(|e| stripe_failure(code, what, e))
    }

    /// A Checkout Session for `spec`. At most one open session per customer: paying two
    /// open sessions would make two subscriptions. A session that cannot be expired is
    /// read again: one paid meanwhile means the customer is subscribed (409).
    async fn create_checkout(
        &self,
        user: &UserRecord,
        seq: i64,
        customer: &str,
        spec: CheckoutSpec<'_>,
    ) -> Result<String, ApiError> {
        let offer = offer(&spec);
        let open = StripeRequest::get("/v1/checkout/sessions")
            .param("customer", customer)
            .param("status", "open")
            .param("limit", "100");
        let listed = self.call(open, "CHECKOUT_FAILED", "list checkout sessions").await?;
        let mut reuse = None;
        for session in listed.get("data").and_then(Value::as_array).into_iter().flatten() {
            // Only subscription Checkouts compete with this one (a one-off payment does not).
            if session.get("mode").and_then(Value::as_str) != Some("subscription") {
                continue;
            }
            let url = session.get("url").and_then(Value::as_str);
            let same =
                session.get("metadata").and_then(|m| m.get("offer")).and_then(Value::as_str) == Some(offer.as_str());
            if let (true, Some(url), None) = (same, url, &reuse) {
                reuse = Some(url.to_string()); // kept; every other open one is expired
                continue;
            }
            let Some(id) = events::id_of(session.get("id")).filter(|id| StripeRequest::is_safe_id(id)) else {
                continue;
            };
            let req =
                StripeRequest::post(format!("/v1/checkout/sessions/{id}/expire"), key(user, seq, &["expire", &id]));
            let expired = self.stripe.send(&req).await;
            if expired.as_ref().is_ok_and(|s| s.get("status").and_then(Value::as_str) == Some("expired")) {
                continue;
            }
            // Not expired by us: it may have been paid (or expired) meanwhile.
            let now = self.call(
                StripeRequest::get(format!("/v1/checkout/sessions/{id}")),
                "CHECKOUT_FAILED",
                "read checkout session",
            );
            match now.await?.get("status").and_then(Value::as_str) {
                Some("expired") => continue,
                Some("complete") => break, // the listing below sees its subscription
                _ => {
                    let cause = match expired {
                        Err(e) => e.to_string(),
                        Ok(_) => "expire answered without expiring".into(),
                    };
                    return Err(ApiError::CodedServer {
                        status: 502,
                        code: "CHECKOUT_FAILED",
                        public: "Stripe could not complete the request; try again or sync the plan",
                        cause: format!("expire checkout session {id}: {cause}"),
                    });
                }
            }
        }
        // No other session can be paid any more, so the subscriptions listed now are the
        // truth: one paid since the caller's guard looked (before or while the sessions
        // were listed or expired) shows here, and no second Checkout is offered.
        let subs = self.subscriptions(customer, "CHECKOUT_FAILED").await?;
        if subs.iter().any(|s| s.status.is_live()) {
            return Err(self.subscribed_meanwhile(user, customer, &subs).await);
        }
        if let Some(p) = upgrade::pending(&subs) {
            return Err(payment_pending(p));
        }
        if let Some(url) = reuse {
            return Ok(url);
        }
        let mut req = StripeRequest::post("/v1/checkout/sessions", key(user, seq, &["checkout", customer, &offer]))
            .param("mode", "subscription")
            .param("customer", customer)
            .param("client_reference_id", user.id.as_str())
            .param("line_items[0][price]", spec.price)
            .param("line_items[0][quantity]", "1")
            .param("success_url", with_param(&spec.return_url, "checkout=success"))
            .param("cancel_url", with_param(&spec.return_url, "checkout=cancel"))
            .param("metadata[user_id]", user.id.as_str())
            .param("metadata[offer]", offer.as_str())
            .param("subscription_data[metadata][user_id]", user.id.as_str());
        if spec.trial_days > 0 {
            req = req.param("subscription_data[trial_period_days]", spec.trial_days.to_string());
        }
        if let Some(source) = spec.source {
            req = req.param("metadata[source]", source);
        }
        let session = self.call(req, "CHECKOUT_FAILED", "create checkout session").await?;
        session
            .get("url")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::server("checkout session without url"))
    }

    /// A Checkout was paid while we were about to offer another: store what Stripe now
    /// says and answer `ALREADY_SUBSCRIBED` with the plan it grants.
    async fn subscribed_meanwhile(&self, user: &UserRecord, customer: &str, subs: &[Subscription]) -> ApiError {
        if let Err(e) = self.apply_best(user, subs, "api:checkout").await {
            return e;
        }
        let plan = match best(subs, &self.cfg.prices) {
            Some(s) if s.status == crate::domain::subscription::SubStatus::Trialing => {
                crate::domain::plans::TRIAL_PLAN.to_string()
            }
            Some(s) => tier_of(s, &self.cfg.prices).map(|t| self.catalog.id(t).to_string()).unwrap_or_default(),
            None => "unknown".into(),
        };
        log::warn(
            self.request_id,
            "billing.checkout_completed_meanwhile",
            obj! {"userId": user.id.as_str(), "customer": customer},
        );
        already_subscribed(plan)
    }

    /// `/api/upgrade-plan`: Checkout without a live subscription, else an in-place
    /// change (ending a trial now), never a second subscription.
    pub async fn upgrade(&self, who: &Identity, target: Tier, ret: CheckoutReturn) -> Result<UpgradeResult, ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "upgrade", |user, seq| async move {
            self.with_customer(user, async |user, customer| {
                let subs = self.subscriptions(customer, "UPDATE_FAILED").await?;
                let (decision, others) = upgrade::decide_upgrade(&subs, &self.catalog, &self.cfg.prices, target);
                if !others.is_empty() {
                    log::warn(
                        self.request_id,
                        "billing.multiple_live_subscriptions",
                        obj! {"userId": user.id.as_str(), "customer": customer, "ignored": others},
                    );
                }
                match decision {
                    Upgrade::Checkout { price } => {
                        let return_url =
                            ret.url.clone().ok_or_else(|| ApiError::InvalidRequest("returnUrl is required".into()))?;
                        let spec =
                            CheckoutSpec { price: &price, trial_days: 0, return_url, source: ret.source.as_deref() };
                        let url = self.create_checkout(user, seq, customer, spec).await?;
                        Ok(UpgradeResult::Redirect { url })
                    }
                    Upgrade::Update { subscription_id, item_id, price, end_trial, release_schedule } => {
                        let cancelling = subs.iter().find(|s| s.id == subscription_id && s.cancel_pending());
                        if let Some(sub) = cancelling {
                            // Upgrading is staying: undo the pending cancellation first (it
                            // releases a schedule too), or the user pays for the upgrade
                            // and still loses the plan at the period end.
                            self.set_cancel_at_period_end(user, seq, sub, false, "api:upgrade").await?;
                        } else if let Some(schedule) = release_schedule {
                            self.release_schedule(user, seq, &schedule).await?;
                        }
                        let mut req = StripeRequest::post(
                            format!("/v1/subscriptions/{subscription_id}"),
                            key(user, seq, &["upgrade", &subscription_id, &price]),
                        )
                        .param("items[0][id]", item_id.as_str())
                        .param("items[0][price]", price.as_str())
                        .param("proration_behavior", "always_invoice")
                        .param("payment_behavior", "pending_if_incomplete")
                        .param("expand[]", "schedule");
                        if end_trial {
                            req = req.param("trial_end", "now");
                        }
                        let answer = self.call(req, "UPDATE_FAILED", "update subscription").await?;
                        let state = self.apply_answer(user, &answer, "api:upgrade").await?;
                        let pending_payment = answer.get("pending_update").is_some_and(|p| !p.is_null());
                        Ok(UpgradeResult::Updated {
                            plan: state.plan,
                            subscription_id,
                            customer_id: customer.to_string(),
                            pending_payment,
                        })
                    }
                    Upgrade::PaymentPending(p) => Err(payment_pending(p)),
                    Upgrade::AlreadyOnPlan => {
                        Err(ApiError::coded(409, "ALREADY_ON_PLAN", format!("Already on {}", self.catalog.id(target))))
                    }
                    Upgrade::DowngradeNotAllowed { current } => Err(ApiError::coded(
                        409,
                        "DOWNGRADE_NOT_ALLOWED",
                        format!(
                            "{} is below the current plan {}; use /api/downgrade-plan",
                            self.catalog.id(target),
                            self.catalog.id(current)
                        ),
                    )),
                    Upgrade::SubscriptionItemMissing { subscription_id } => Err(ApiError::CodedServer {
                        status: 500,
                        code: "SUBSCRIPTION_ITEM_MISSING",
                        public: "The subscription has no item to change",
                        cause: format!("subscription {subscription_id} has no priced item"),
                    }),
                    Upgrade::NotConfigured(why) => Err(ApiError::server(why)),
                }
            })
            .await
        })
        .await
    }

    /// `/api/stripe-checkout`: Checkout, guarded against a second subscription.
    /// `target: None` is the `trial` plan: the entry tier with its trial, once per user.
    pub async fn checkout(&self, who: &Identity, target: Option<Tier>, return_url: String) -> Result<String, ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "checkout", |user, seq| async move {
            self.with_customer(user, async |user, customer| {
                let subs = self.subscriptions(customer, "CHECKOUT_FAILED").await?;
                let want_trial = target.is_none();
                let trial_used = user.trial_used != 0 || subs.iter().any(|s| s.trial_end.is_some());
                match upgrade::guard_checkout(&subs, &self.catalog, &self.cfg.prices, target, want_trial, trial_used) {
                    CheckoutGuard::Proceed { price, trial_days } => {
                        let spec =
                            CheckoutSpec { price: &price, trial_days, return_url: return_url.clone(), source: None };
                        self.create_checkout(user, seq, customer, spec).await
                    }
                    CheckoutGuard::AlreadySubscribed { plan } => Err(already_subscribed(plan)),
                    CheckoutGuard::PaymentPending(p) => Err(payment_pending(p)),
                    CheckoutGuard::TrialAlreadyUsed => {
                        Err(ApiError::coded(409, "TRIAL_ALREADY_USED", "The free trial has already been used"))
                    }
                    CheckoutGuard::NotConfigured(why) => Err(ApiError::server(why)),
                }
            })
            .await
        })
        .await
    }

    /// `/api/credits/checkout`: a Stripe Checkout (payment mode) for a credit pack.
    /// Its credits are granted when Stripe reports the payment (see `billing::credits`);
    /// the pack and the user ride in the session's and the payment intent's metadata.
    /// One-off payments never make a second subscription, so open sessions are left be.
    pub async fn buy_pack(
        &self,
        who: &Identity,
        pack: &crate::domain::plans::PackDef,
        price: &str,
        return_url: String,
    ) -> Result<(String, String), ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "credits_checkout", |user, seq| async move {
            self.with_customer(user, async |user, customer| {
                let req = StripeRequest::post(
                    "/v1/checkout/sessions",
                    key(user, seq, &["pack", customer, pack.id, price, &return_url]),
                )
                .param("mode", "payment")
                .param("customer", customer)
                .param("client_reference_id", user.id.as_str())
                .param("line_items[0][price]", price)
                .param("line_items[0][quantity]", "1")
                .param("success_url", with_param(&return_url, "credits=success"))
                .param("cancel_url", with_param(&return_url, "credits=cancel"))
                .param("metadata[user_id]", user.id.as_str())
                .param("metadata[pack]", pack.id)
                .param("payment_intent_data[metadata][user_id]", user.id.as_str())
                .param("payment_intent_data[metadata][pack]", pack.id);
                let session = self.call(req, "CHECKOUT_FAILED", "create credits checkout session").await?;
                let url = session.get("url").and_then(Value::as_str).map(str::to_string);
                let id = events::id_of(session.get("id"));
                match (url, id) {
                    (Some(url), Some(id)) => Ok((url, id)),
                    _ => Err(ApiError::server("checkout session without url or id")),
                }
            })
            .await
        })
        .await
    }

    /// `/api/billing-portal`: a Stripe customer portal session URL.
    pub async fn portal(&self, who: &Identity, return_url: String) -> Result<String, ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "portal", |user, seq| async move {
            self.with_customer(user, async |user, customer| {
                let req = StripeRequest::post(
                    "/v1/billing_portal/sessions",
                    key(user, seq, &["portal", customer, self.request_id]),
                )
                .param("customer", customer)
                .param("return_url", return_url.as_str());
                let session = self.call(req, "PORTAL_FAILED", "create portal session").await?;
                let url = session
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::server("portal session without url"))?;
                Ok(url.to_string())
            })
            .await
        })
        .await
    }

    /// The user's subscriptions (any status), or 409 without a customer.
    async fn own_subscriptions(&self, user: &UserRecord) -> Result<Vec<Subscription>, ApiError> {
        let customer = user.stripe_customer_id.as_deref().ok_or_else(no_active_subscription)?;
        self.subscriptions(customer, "UPDATE_FAILED").await
    }

    /// The best live subscription to act on, or 409 `NO_ACTIVE_SUBSCRIPTION`.
    async fn live_subscription(&self, user: &UserRecord) -> Result<(Subscription, Vec<Subscription>), ApiError> {
        let subs = self.own_subscriptions(user).await?;
        let live: Vec<Subscription> = subs.iter().filter(|s| s.status.is_live()).cloned().collect();
        let chosen = best(&live, &self.cfg.prices).cloned().ok_or_else(no_active_subscription)?;
        Ok((chosen, subs))
    }

    /// Detaches a subscription schedule (a pending downgrade) from its subscription.
    async fn release_schedule(&self, user: &UserRecord, seq: i64, schedule: &str) -> Result<(), ApiError> {
        let req = StripeRequest::post(
            format!("/v1/subscription_schedules/{schedule}/release"),
            key(user, seq, &["release", schedule]),
        );
        self.call(req, "UPDATE_FAILED", "release schedule").await?;
        Ok(())
    }

    async fn set_cancel_at_period_end(
        &self,
        user: &UserRecord,
        seq: i64,
        sub: &Subscription,
        cancel: bool,
        cause: &str,
    ) -> Result<Value, ApiError> {
        // Stripe refuses cancellation changes on a subscription a schedule manages (e.g.
        // a scheduled downgrade): cancelling supersedes the schedule, so release it first.
        if let Some(schedule) = &sub.schedule_id {
            self.release_schedule(user, seq, schedule).await?;
        }
        let flag = if cancel { "true" } else { "false" };
        let mut req = StripeRequest::post(
            format!("/v1/subscriptions/{}", sub.id),
            key(user, seq, &["cancel_at_period_end", &sub.id, flag]),
        )
        .param("cancel_at_period_end", flag)
        .param("expand[]", "schedule");
        if !cancel && sub.cancel_at.is_some() && !sub.cancel_at_period_end {
            // A cancellation set for a date (not the period end) is undone by unsetting it.
            req = req.param("cancel_at", "");
        }
        let answer = self.call(req, "UPDATE_FAILED", "update cancel_at_period_end").await?;
        self.apply_answer(user, &answer, cause).await?;
        Ok(answer)
    }

    /// Ends a subscription now (a legacy duplicate, or one still waiting for its first
    /// payment), recorded in `plan_changes` with its id.
    async fn cancel_now(&self, user: &UserRecord, seq: i64, sub: &Subscription, cause: &str) -> Result<(), ApiError> {
        if let Some(schedule) = &sub.schedule_id {
            self.release_schedule(user, seq, schedule).await?; // a schedule-managed one cannot be deleted
        }
        let answer = match self.stripe.send(&StripeRequest::delete(format!("/v1/subscriptions/{}", sub.id))).await {
            Ok(a) => a,
            Err(StripeError::Api { status: 404, .. }) => obj! {"status": "canceled"}, // gone
            // Refused (already canceled, or not cancellable): read what Stripe has now.
            Err(StripeError::Api { status: 400, .. }) => {
                let req = StripeRequest::get(format!("/v1/subscriptions/{}", sub.id));
                self.call(req, "UPDATE_FAILED", "read subscription").await?
            }
            Err(e) => return Err(stripe_failure("UPDATE_FAILED", "cancel subscription", e)),
        };
        let status = answer.get("status").and_then(Value::as_str).unwrap_or("unknown");
        let after = crate::domain::subscription::SubStatus::parse(status);
        if after.is_live() || after.may_become_live() {
            // Stripe refused to end it (e.g. a schedule manages it): never report success.
            return Err(ApiError::CodedServer {
                status: 502,
                code: "UPDATE_FAILED",
                public: "Stripe could not complete the request; try again or sync the plan",
                cause: format!("subscription {} is still {status} after cancel", sub.id),
            });
        }
        let old_plan = tier_of(sub, &self.cfg.prices).map(|t| self.catalog.id(t)).unwrap_or("unknown");
        let new_plan = self.catalog.id(self.catalog.default_tier());
        self.db
            .batch(vec![users::subscription_audit_stmt(
                &user.id,
                &sub.id,
                (old_plan, sub.status.as_str()),
                (new_plan, status),
                cause,
                self.now,
            )])
            .await?;
        log::info(
            self.request_id,
            "billing.subscription_canceled_now",
            obj! {"userId": user.id.as_str(), "subscription": sub.id.as_str()},
        );
        Ok(())
    }

    /// `/api/cancel-subscription`: the best live subscription ends at the end of its
    /// period; every other one billing the customer ends now (see `decide_cancel`). Each
    /// leaves a `plan_changes` row with its id: the best one through `apply_answer` (its
    /// `cancel_at` changes), the others through `cancel_now`.
    pub async fn cancel(&self, who: &Identity) -> Result<UserRecord, ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "cancel", |user, seq| async move {
            let subs = self.own_subscriptions(&user).await?;
            let plan = upgrade::decide_cancel(&subs, &self.cfg.prices).ok_or_else(no_active_subscription)?;
            if let Some(sub) = plan.at_period_end.as_ref().filter(|s| !s.cancel_pending()) {
                self.set_cancel_at_period_end(&user, seq, sub, true, "api:cancel").await?;
            }
            for sub in &plan.immediately {
                self.cancel_now(&user, seq, sub, "api:cancel").await?;
            }
            self.reread(&user.id).await
        })
        .await
    }

    /// `/api/resume-subscription`: undo a pending cancellation before the period ends.
    pub async fn resume(&self, who: &Identity) -> Result<UserRecord, ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "resume", |user, seq| async move {
            let (sub, _) = self.live_subscription(&user).await?;
            if sub.cancel_pending() {
                self.set_cancel_at_period_end(&user, seq, &sub, false, "api:resume").await?;
            }
            self.reread(&user.id).await
        })
        .await
    }

    /// `/api/downgrade-plan`: the lower tier from the end of the current period (a
    /// subscription schedule); the free tier cancels at the period end. Returns the
    /// action taken (`cancel_scheduled` or `downgrade_scheduled`) and the row after.
    pub async fn downgrade(&self, who: &Identity, target: Tier) -> Result<(&'static str, UserRecord), ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "downgrade", |user, seq| async move {
            let (_, subs) = self.live_subscription(&user).await?;
            match upgrade::decide_downgrade(&subs, &self.catalog, &self.cfg.prices, target) {
                Downgrade::CancelAtPeriodEnd { subscription_id } => {
                    let sub = subs
                        .iter()
                        .find(|s| s.id == subscription_id)
                        .ok_or_else(|| ApiError::server("chosen subscription missing"))?;
                    if !sub.cancel_pending() {
                        self.set_cancel_at_period_end(&user, seq, sub, true, "api:downgrade").await?;
                    }
                    Ok(("cancel_scheduled", self.reread(&user.id).await?))
                }
                Downgrade::Schedule { subscription_id, existing_schedule, current_price, target_price, at } => {
                    if let Some(schedule) = existing_schedule {
                        self.release_schedule(&user, seq, &schedule).await?;
                    }
                    let req = StripeRequest::post(
                        "/v1/subscription_schedules",
                        key(&user, seq, &["schedule", &subscription_id, &target_price]),
                    )
                    .param("from_subscription", subscription_id.as_str());
                    let schedule = self.call(req, "UPDATE_FAILED", "create schedule").await?;
                    let schedule_id =
                        events::id_of(schedule.get("id")).ok_or_else(|| ApiError::server("schedule without id"))?;
                    let start = schedule
                        .get("phases")
                        .and_then(|p| p.get(0))
                        .and_then(|p| p.get("start_date"))
                        .and_then(Value::as_i64)
                        .ok_or_else(|| ApiError::server("schedule without a current phase"))?;
                    let req = StripeRequest::post(
                        format!("/v1/subscription_schedules/{schedule_id}"),
                        key(&user, seq, &["phases", &schedule_id, &target_price]),
                    )
                    .param("end_behavior", "release")
                    .param("phases[0][items][0][price]", current_price.as_str())
                    .param("phases[0][items][0][quantity]", "1")
                    .param("phases[0][start_date]", start.to_string())
                    .param("phases[0][end_date]", at.to_string())
                    .param("phases[0][proration_behavior]", "none")
                    .param("phases[1][items][0][price]", target_price.as_str())
                    .param("phases[1][items][0][quantity]", "1")
                    .param("phases[1][proration_behavior]", "none");
                    self.call(req, "UPDATE_FAILED", "set schedule phases").await?;
                    let fetched = StripeRequest::get(format!("/v1/subscriptions/{subscription_id}"))
                        .param("expand[]", "schedule");
                    let answer = self.call(fetched, "UPDATE_FAILED", "read subscription").await?;
                    self.apply_answer(&user, &answer, "api:downgrade").await?;
                    Ok(("downgrade_scheduled", self.reread(&user.id).await?))
                }
                Downgrade::NotLower => Err(ApiError::coded(
                    409,
                    "NOT_A_DOWNGRADE",
                    format!("{} is not below the current plan; use /api/upgrade-plan", self.catalog.id(target)),
                )),
                Downgrade::NoSubscription => Err(no_active_subscription()),
                Downgrade::NotConfigured(why) => Err(ApiError::server(why)),
            }
        })
        .await
    }

    /// `/api/sync-stripe-plan`: re-read the caller's subscriptions from Stripe and
    /// store the truth. Returns whether there was a customer to sync, and the row.
    pub async fn sync_own(&self, who: &Identity) -> Result<(bool, UserRecord), ApiError> {
        let user = self.user_for(who).await?;
        self.locked(&user.id, "sync", |user, _seq| async move {
            let Some(customer) = user.stripe_customer_id.as_deref() else {
                return Ok((false, user));
            };
            let subs = self.subscriptions(customer, "UPDATE_FAILED").await?;
            self.apply_best(&user, &subs, "api:sync").await?;
            Ok((true, self.reread(&user.id).await?))
        })
        .await
    }

    fn reread<'b>(&'b self, user_id: &'b str) -> impl Future<Output = Result<UserRecord, ApiError>> + 'b {
        users::find_by_id(self.db, user_id).map(|r| r?.ok_or_else(|| ApiError::server("user vanished")))
    }
}

#[cfg(test)]
mod tests {
    use super::{customer_key, with_param};

    #[test]
    fn checkout_result_params_are_added_before_the_fragment() {
        assert_eq!(
            with_param("https://a.example/billing", "checkout=success"),
            "https://a.example/billing?checkout=success"
        );
        assert_eq!(with_param("https://a.example/b?x=1", "checkout=cancel"), "https://a.example/b?x=1&checkout=cancel");
        assert_eq!(
            with_param("https://a.example/b#top", "checkout=success"),
            "https://a.example/b?checkout=success#top"
        );
    }

    #[test]
    fn a_user_gets_one_customer_key_whatever_the_action_and_a_new_one_per_replaced_customer() {
        assert_eq!(customer_key("usr_1", None), "plangate:customer:usr_1");
        assert_eq!(customer_key("usr_1", Some("cus_old")), "plangate:customer:usr_1:replaces:cus_old");
        assert_ne!(customer_key("usr_1", None), customer_key("usr_2", None));
    }
}

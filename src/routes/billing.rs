//! Billing actions: users change plans through plangate only, which talks to Stripe
//! itself and never leaves a customer with two subscriptions.
//!
//! Every action runs under a per-user lock (a second concurrent action gets
//! `409 BILLING_IN_PROGRESS`), sends each Stripe POST with an idempotency key derived
//! from the user, the action and the user's `billing_seq`, and changes D1 only after
//! Stripe confirmed, from Stripe's answer.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::billing::Billing;
use crate::domain::account::UserRecord;
use crate::domain::plans::{Catalog, Tier, TRIAL_PLAN};
use crate::domain::subscription::{best, Subscription};
use crate::domain::upgrade::{self, CheckoutGuard, Downgrade, Upgrade};
use crate::error::ApiError;
use crate::log;
use crate::store::{locks, users};
use crate::stripe::client::{idempotency_key, StripeError, StripeRequest};
use crate::stripe::events;

const RETURN_URL_MAX: usize = 2048;

/// The caller's row (created on first sight, like `/api/plan/me`).
async fn caller(ctx: &Ctx<'_>) -> Result<UserRecord, ApiError> {
    let who = ctx.identity().await?;
    let catalog = Catalog::builtin();
    users::get_or_create_by_auth_id(ctx.db, &who, catalog.id(catalog.default_tier()), ctx.now, || {
        Ok(format!("usr_{}", crate::util::random_hex(12)?))
    })
    .await
}

/// Runs `action` holding the user's billing lock; it gets the action's sequence
/// number, which every idempotency key it sends includes.
async fn locked<T, F: std::future::Future<Output = Result<T, ApiError>>>(
    ctx: &Ctx<'_>,
    user: &UserRecord,
    name: &str,
    action: impl FnOnce(i64) -> F,
) -> Result<T, ApiError> {
    let Some(seq) = locks::acquire(ctx.db, &user.id, ctx.request_id, name, ctx.now).await? else {
        return Err(ApiError::coded(
            409,
            "BILLING_IN_PROGRESS",
            "Another billing action for this account is in progress; try again in a moment",
        ));
    };
    let result = action(seq).await;
    if let Err(e) = locks::release(ctx.db, &user.id, ctx.request_id).await {
        log::error(ctx.request_id, "billing.lock_release_failed", json!({"userId": user.id, "error": e.to_string()}));
    }
    result
}

/// A Stripe failure as the client sees it: 502 with the action's code; card errors
/// keep Stripe's message (meant for the customer), everything else is logged only.
fn stripe_failure(code: &'static str, what: &str, e: StripeError) -> ApiError {
    match &e {
        StripeError::Api { kind, message, .. } if kind == "card_error" => {
            ApiError::coded(502, code, format!("{what} failed: {message}"))
        }
        StripeError::NotConfigured => ApiError::server(e),
        _ => ApiError::CodedServer {
            status: 502,
            code,
            public: "Stripe could not complete the request; try again or sync the plan",
            cause: format!("{what}: {e}"),
        },
    }
}

fn parse_tier(name: &str, allow_default: bool) -> Result<Tier, ApiError> {
    let catalog = Catalog::builtin();
    catalog.parse(name).filter(|t| allow_default || *t != catalog.default_tier()).ok_or_else(|| {
        ApiError::coded(400, "INVALID_PLAN", format!("Unknown plan `{}`", name.chars().take(40).collect::<String>()))
    })
}

/// `returnUrl` must be on an allowed origin (no open redirects through Stripe).
fn return_url(ctx: &Ctx<'_>, given: Option<&str>) -> Result<String, ApiError> {
    let url = match given {
        Some(u) => u.trim().to_string(),
        None => match ctx.cfg.allowed_origins.first() {
            Some(origin) => format!("{origin}/"),
            None => return Err(ApiError::InvalidRequest("returnUrl is required".into())),
        },
    };
    let origin_end = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| url[start..].find(['/', '?', '#']).map(|j| start + j).or(Some(url.len())));
    let allowed = origin_end.is_some_and(|end| ctx.cfg.origin_allowed(&url[..end]));
    if url.len() > RETURN_URL_MAX || url.chars().any(|c| c.is_whitespace() || c.is_control()) || !allowed {
        return Err(ApiError::InvalidRequest("returnUrl must be a URL on one of the allowed origins".into()));
    }
    Ok(url)
}

fn with_param(url: &str, param: &str) -> String {
    let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
    let sep = if base.contains('?') { '&' } else { '?' };
    match fragment {
        Some(f) => format!("{base}{sep}{param}#{f}"),
        None => format!("{base}{sep}{param}"),
    }
}

/// The user's Stripe customer, created once (metadata `user_id`). Concurrent first
/// calls share one idempotency key, so Stripe creates one customer for all of them.
async fn ensure_customer(billing: &Billing<'_>, user: &UserRecord, seq: i64) -> Result<String, ApiError> {
    if let Some(c) = &user.stripe_customer_id {
        return Ok(c.clone());
    }
    let mut req = StripeRequest::post("/v1/customers", key(user, seq, &["customer"]))
        .param("metadata[user_id]", user.id.as_str());
    if let Some(email) = &user.email {
        req = req.param("email", email.as_str());
    }
    let created = billing.stripe.send(&req).await.map_err(|e| ApiError::CodedServer {
        status: 500,
        code: "CUSTOMER_NOT_FOUND",
        public: "Could not create the billing customer; nothing was changed",
        cause: format!("create customer: {e}"),
    })?;
    let id = events::id_of(created.get("id")).ok_or_else(|| ApiError::server("customer answer without id"))?;
    users::set_customer_if_missing(billing.db, &user.id, &id, billing.now).await?;
    let stored = users::find_by_id(billing.db, &user.id).await?.and_then(|u| u.stripe_customer_id);
    stored.ok_or_else(|| ApiError::server("customer id not stored"))
}

async fn subscriptions(
    billing: &Billing<'_>,
    customer: &str,
    code: &'static str,
) -> Result<Vec<Subscription>, ApiError> {
    billing.customer_subscriptions(customer).await.map_err(|e| stripe_failure(code, "list subscriptions", e))
}

async fn post(billing: &Billing<'_>, req: StripeRequest, code: &'static str, what: &str) -> Result<Value, ApiError> {
    billing.stripe.send(&req).await.map_err(|e| stripe_failure(code, what, e))
}

/// A key for one request of the user's action number `seq` (see migrations/0003).
fn key(user: &UserRecord, seq: i64, parts: &[&str]) -> String {
    let seq = seq.to_string();
    let mut all = vec![parts[0], user.id.as_str(), seq.as_str()];
    all.extend_from_slice(&parts[1..]);
    idempotency_key(&all)
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

/// A Checkout Session for `spec`. At most one open session per customer: paying two
/// open sessions would make two subscriptions.
async fn create_checkout(
    billing: &Billing<'_>,
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
    let listed =
        billing.stripe.send(&open).await.map_err(|e| stripe_failure("CHECKOUT_FAILED", "list checkout sessions", e))?;
    for session in listed.get("data").and_then(Value::as_array).into_iter().flatten() {
        let url = session.get("url").and_then(Value::as_str);
        let same = session.get("metadata").and_then(|m| m.get("offer")).and_then(Value::as_str) == Some(offer.as_str());
        match (same, url) {
            (true, Some(url)) => return Ok(url.to_string()),
            _ => {
                let Some(id) = events::id_of(session.get("id")).filter(|id| StripeRequest::is_safe_id(id)) else {
                    continue;
                };
                let req =
                    StripeRequest::post(format!("/v1/checkout/sessions/{id}/expire"), key(user, seq, &["expire", &id]));
                match billing.stripe.send(&req).await {
                    // Already completed or expired meanwhile: nothing left to expire.
                    Ok(_) | Err(StripeError::Api { status: 400, .. }) => {}
                    Err(e) => return Err(stripe_failure("CHECKOUT_FAILED", "expire checkout session", e)),
                }
            }
        }
    }
    let mut req = StripeRequest::post("/v1/checkout/sessions", key(user, seq, &["checkout", &offer]))
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
    let session = post(billing, req, "CHECKOUT_FAILED", "create checkout session").await?;
    session
        .get("url")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::server("checkout session without url"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpgradeBody {
    target_plan: String,
    return_url: Option<String>,
    source: Option<String>,
}

/// `POST /api/upgrade-plan {targetPlan, returnUrl?, source?}`
pub async fn upgrade_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body: UpgradeBody = ctx.json_body()?;
    let target = parse_tier(&body.target_plan, false)?;
    // Validated before anything happens: bad input changes nothing.
    let given_return = body.return_url.as_deref().map(|u| return_url(ctx, Some(u))).transpose()?;
    let source = body.source.as_deref().map(|s| s.chars().take(64).collect::<String>());
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "upgrade", move |seq| async move {
        let customer = ensure_customer(&billing, user, seq).await?;
        let subs = subscriptions(&billing, &customer, "UPDATE_FAILED").await?;
        let (decision, others) = upgrade::decide_upgrade(&subs, &billing.catalog, &ctx.cfg.prices, target);
        if !others.is_empty() {
            log::warn(
                ctx.request_id,
                "billing.multiple_live_subscriptions",
                json!({"userId": user.id, "customer": customer, "ignored": others}),
            );
        }
        match decision {
            Upgrade::Checkout { price } => {
                let return_url = match given_return {
                    Some(u) => u,
                    None => return_url(ctx, None)?,
                };
                let spec = CheckoutSpec { price: &price, trial_days: 0, return_url, source: source.as_deref() };
                let url = create_checkout(&billing, user, seq, &customer, spec).await?;
                Ok(Reply::ok(json!({"ok": true, "action": "redirect", "url": url})))
            }
            Upgrade::Update { subscription_id, item_id, price, end_trial, release_schedule } => {
                if let Some(schedule) = release_schedule {
                    release_schedule_of(&billing, user, seq, &schedule).await?;
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
                let answer = post(&billing, req, "UPDATE_FAILED", "update subscription").await?;
                let state = billing.apply_answer(user, &answer, "api:upgrade").await?;
                let pending = answer.get("pending_update").is_some_and(|p| !p.is_null());
                Ok(Reply::ok(json!({
                    "ok": true, "action": "updated", "plan": state.plan, "subscriptionId": subscription_id,
                    "customerId": customer, "pendingPayment": pending
                })))
            }
            Upgrade::AlreadyOnPlan => {
                Err(ApiError::coded(409, "ALREADY_ON_PLAN", format!("Already on {}", billing.catalog.id(target))))
            }
            Upgrade::DowngradeNotAllowed { current } => Err(ApiError::coded(
                409,
                "DOWNGRADE_NOT_ALLOWED",
                format!(
                    "{} is below the current plan {}; use /api/downgrade-plan",
                    billing.catalog.id(target),
                    billing.catalog.id(current)
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
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckoutBody {
    plan: String,
    return_url: Option<String>,
}

/// `POST /api/stripe-checkout {plan, returnUrl?}`: Checkout, guarded against a second
/// subscription. `plan: "trial"` is the entry tier with its trial, once per user.
pub async fn stripe_checkout(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body: CheckoutBody = ctx.json_body()?;
    let want_trial = body.plan == TRIAL_PLAN;
    let target = if want_trial { None } else { Some(parse_tier(&body.plan, false)?) };
    let return_url = return_url(ctx, body.return_url.as_deref())?;
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "checkout", move |seq| async move {
        let customer = ensure_customer(&billing, user, seq).await?;
        let subs = subscriptions(&billing, &customer, "CHECKOUT_FAILED").await?;
        let trial_used = user.trial_used != 0 || subs.iter().any(|s| s.trial_end.is_some());
        match upgrade::guard_checkout(&subs, &billing.catalog, &ctx.cfg.prices, target, want_trial, trial_used) {
            CheckoutGuard::Proceed { price, trial_days } => {
                let spec = CheckoutSpec { price: &price, trial_days, return_url, source: None };
                let url = create_checkout(&billing, user, seq, &customer, spec).await?;
                Ok(Reply::ok(json!({"ok": true, "url": url})))
            }
            CheckoutGuard::AlreadySubscribed { plan } => Err(ApiError::CodedPlan {
                status: 409,
                code: "ALREADY_SUBSCRIBED",
                message: "You already have a subscription; change it with /api/upgrade-plan".into(),
                plan,
            }),
            CheckoutGuard::TrialAlreadyUsed => {
                Err(ApiError::coded(409, "TRIAL_ALREADY_USED", "The free trial has already been used"))
            }
            CheckoutGuard::NotConfigured(why) => Err(ApiError::server(why)),
        }
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortalBody {
    return_url: Option<String>,
}

/// `POST /api/billing-portal {returnUrl}` → `{ok, url}`.
pub async fn billing_portal(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body: PortalBody = ctx.json_body()?;
    let return_url = return_url(ctx, body.return_url.as_deref())?;
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "portal", move |seq| async move {
        let customer = ensure_customer(&billing, user, seq).await?;
        let req = StripeRequest::post("/v1/billing_portal/sessions", key(user, seq, &["portal", ctx.request_id]))
            .param("customer", customer.as_str())
            .param("return_url", return_url.as_str());
        let session = post(&billing, req, "PORTAL_FAILED", "create portal session").await?;
        let url =
            session.get("url").and_then(Value::as_str).ok_or_else(|| ApiError::server("portal session without url"))?;
        Ok(Reply::ok(json!({"ok": true, "url": url})))
    })
    .await
}

fn no_active_subscription() -> ApiError {
    ApiError::coded(409, "NO_ACTIVE_SUBSCRIPTION", "There is no active subscription to change")
}

/// The caller's live subscription to act on, or 409 `NO_ACTIVE_SUBSCRIPTION`.
async fn live_subscription(
    billing: &Billing<'_>,
    user: &UserRecord,
) -> Result<(Subscription, Vec<Subscription>), ApiError> {
    let customer = user.stripe_customer_id.as_deref().ok_or_else(no_active_subscription)?;
    let subs = subscriptions(billing, customer, "UPDATE_FAILED").await?;
    let live: Vec<Subscription> = subs.iter().filter(|s| s.status.is_live()).cloned().collect();
    let chosen = best(&live, &billing.cfg.prices).cloned().ok_or_else(no_active_subscription)?;
    Ok((chosen, subs))
}

/// Detaches a subscription schedule (a pending downgrade) from its subscription.
async fn release_schedule_of(
    billing: &Billing<'_>,
    user: &UserRecord,
    seq: i64,
    schedule: &str,
) -> Result<(), ApiError> {
    let req = StripeRequest::post(
        format!("/v1/subscription_schedules/{schedule}/release"),
        key(user, seq, &["release", schedule]),
    );
    post(billing, req, "UPDATE_FAILED", "release schedule").await?;
    Ok(())
}

async fn set_cancel_at_period_end(
    billing: &Billing<'_>,
    user: &UserRecord,
    seq: i64,
    sub: &Subscription,
    cancel: bool,
    cause: &str,
) -> Result<Value, ApiError> {
    // Stripe refuses cancellation changes on a subscription a schedule manages (e.g.
    // a scheduled downgrade): cancelling supersedes the schedule, so release it first.
    if let Some(schedule) = &sub.schedule_id {
        release_schedule_of(billing, user, seq, schedule).await?;
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
    let answer = post(billing, req, "UPDATE_FAILED", "update cancel_at_period_end").await?;
    billing.apply_answer(user, &answer, cause).await?;
    Ok(answer)
}

async fn plan_reply(ctx: &Ctx<'_>, user_id: &str, extra: Value) -> Result<Reply, ApiError> {
    let user = users::find_by_id(ctx.db, user_id).await?.ok_or_else(|| ApiError::server("user vanished"))?;
    let mut body = serde_json::to_value(user.plan_view()).map_err(ApiError::server)?;
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    Ok(Reply::ok(body).header("Cache-Control", "private, no-store"))
}

/// `POST /api/cancel-subscription`: cancel at the end of the current period.
pub async fn cancel_subscription(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "cancel", move |seq| async move {
        let (sub, _) = live_subscription(&billing, user).await?;
        if !sub.cancel_pending() {
            set_cancel_at_period_end(&billing, user, seq, &sub, true, "api:cancel").await?;
        }
        plan_reply(ctx, &user.id, json!({"action": "cancel_scheduled"})).await
    })
    .await
}

/// `POST /api/resume-subscription`: undo a pending cancellation before the period ends.
pub async fn resume_subscription(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "resume", move |seq| async move {
        let (sub, _) = live_subscription(&billing, user).await?;
        if sub.cancel_pending() {
            set_cancel_at_period_end(&billing, user, seq, &sub, false, "api:resume").await?;
        }
        plan_reply(ctx, &user.id, json!({"action": "resumed"})).await
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DowngradeBody {
    target_plan: String,
}

/// `POST /api/downgrade-plan {targetPlan}`: the lower tier from the end of the current
/// period (a subscription schedule); `free` cancels at the period end.
pub async fn downgrade_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body: DowngradeBody = ctx.json_body()?;
    let target = parse_tier(&body.target_plan, true)?;
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "downgrade", move |seq| async move {
        let (_, subs) = live_subscription(&billing, user).await?;
        match upgrade::decide_downgrade(&subs, &billing.catalog, &ctx.cfg.prices, target) {
            Downgrade::CancelAtPeriodEnd { subscription_id } => {
                let sub = subs
                    .iter()
                    .find(|s| s.id == subscription_id)
                    .cloned()
                    .ok_or_else(|| ApiError::server("chosen subscription missing"))?;
                if !sub.cancel_pending() {
                    set_cancel_at_period_end(&billing, user, seq, &sub, true, "api:downgrade").await?;
                }
                plan_reply(ctx, &user.id, json!({"action": "cancel_scheduled"})).await
            }
            Downgrade::Schedule { subscription_id, existing_schedule, current_price, target_price, at } => {
                if let Some(schedule) = existing_schedule {
                    release_schedule_of(&billing, user, seq, &schedule).await?;
                }
                let req = StripeRequest::post(
                    "/v1/subscription_schedules",
                    key(user, seq, &["schedule", &subscription_id, &target_price]),
                )
                .param("from_subscription", subscription_id.as_str());
                let schedule = post(&billing, req, "UPDATE_FAILED", "create schedule").await?;
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
                    key(user, seq, &["phases", &schedule_id, &target_price]),
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
                post(&billing, req, "UPDATE_FAILED", "set schedule phases").await?;
                let fetched =
                    StripeRequest::get(format!("/v1/subscriptions/{subscription_id}")).param("expand[]", "schedule");
                let answer = billing
                    .stripe
                    .send(&fetched)
                    .await
                    .map_err(|e| stripe_failure("UPDATE_FAILED", "read subscription", e))?;
                billing.apply_answer(user, &answer, "api:downgrade").await?;
                plan_reply(ctx, &user.id, json!({"action": "downgrade_scheduled"})).await
            }
            Downgrade::NotLower => Err(ApiError::coded(
                409,
                "NOT_A_DOWNGRADE",
                format!("{} is not below the current plan; use /api/upgrade-plan", billing.catalog.id(target)),
            )),
            Downgrade::NoSubscription => Err(no_active_subscription()),
            Downgrade::NotConfigured(why) => Err(ApiError::server(why)),
        }
    })
    .await
}

/// `POST /api/sync-stripe-plan`: re-read the caller's subscriptions from Stripe and
/// store the truth (the same path the webhook re-fetch and admin re-sync use).
pub async fn sync_stripe_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let user = caller(ctx).await?;
    let user = &user;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    locked(ctx, user, "sync", move |_seq| async move {
        if let Some(customer) = user.stripe_customer_id.as_deref() {
            let subs = subscriptions(&billing, customer, "UPDATE_FAILED").await?;
            billing.apply_best(user, &subs, "api:sync").await?;
        }
        plan_reply(ctx, &user.id, json!({"synced": user.stripe_customer_id.is_some()})).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::with_param;

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
}

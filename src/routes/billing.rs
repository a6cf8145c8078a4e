//! Billing action routes: parse and validate the input (bad input changes nothing),
//! call the one function in `billing::actions`, shape the reply. An action that may
//! change the plan drops the caller's cached entitlements before answering, so the
//! page's next read shows the change.

use serde_json::Value;

use super::{Ctx, Reply};
use crate::billing::actions::{CheckoutReturn, UpgradeResult};
use crate::domain::account::UserRecord;
use crate::domain::plans::{Catalog, Tier, TRIAL_PLAN};
use crate::error::ApiError;
use crate::obj;

const RETURN_URL_MAX: usize = 2048;

fn parse_tier(name: &str, allow_default: bool) -> Result<Tier, ApiError> {
    let catalog = Catalog::builtin();
    catalog.parse(name).filter(|t| allow_default || *t != catalog.default_tier()).ok_or_else(|| {
        ApiError::coded(400, "INVALID_PLAN", format!("Unknown plan `{}`", name.chars().take(40).collect::<String>()))
    })
}

/// `returnUrl` must be on an allowed origin (no open redirects through Stripe). Without
/// one, the first allowed origin; `Ok(None)` when there is none.
fn return_url(ctx: &Ctx<'_>, given: Option<&str>) -> Result<Option<String>, ApiError> {
    let url = match given {
        Some(u) => u.trim().to_string(),
        None => return Ok(ctx.cfg.allowed_origins.first().map(|origin| format!("{origin}/"))),
    };
    let origin_end = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| url[start..].find(['/', '?', '#']).map(|j| start + j).or(Some(url.len())));
    let allowed = origin_end.is_some_and(|end| ctx.cfg.origin_allowed(&url[..end]));
    if url.len() > RETURN_URL_MAX || url.chars().any(|c| c.is_whitespace() || c.is_control()) || !allowed {
        return Err(ApiError::InvalidRequest("returnUrl must be a URL on one of the allowed origins".into()));
    }
    Ok(Some(url))
}

pub(super) fn required_return_url(ctx: &Ctx<'_>, given: Option<&str>) -> Result<String, ApiError> {
    return_url(ctx, given)?.ok_or_else(|| ApiError::InvalidRequest("returnUrl is required".into()))
}

fn plan_reply(user: &UserRecord, extra: Value) -> Result<Reply, ApiError> {
    let mut body = user.plan_view().to_json();
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    Ok(Reply::ok(body).header("Cache-Control", "private, no-store"))
}

/// `POST /api/upgrade-plan {targetPlan, returnUrl?, source?}`
pub async fn upgrade_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.json_body()?;
    let target = parse_tier(body.str("targetPlan")?, false)?;
    let url = return_url(ctx, body.opt_str("returnUrl")?)?;
    let source = body.opt_str("source")?.map(|s| s.chars().take(64).collect::<String>());
    let who = ctx.identity().await?;
    let result = ctx.billing().upgrade(&who, target, CheckoutReturn { url, source }).await?;
    ctx.forget_entitlements(&who.auth_id).await;
    match result {
        UpgradeResult::Redirect { url } => Ok(Reply::ok(obj! {"ok": true, "action": "redirect", "url": url})),
        UpgradeResult::Updated { plan, subscription_id, customer_id, pending_payment } => Ok(Reply::ok(obj! {
            "ok": true, "action": "updated", "plan": plan, "subscriptionId": subscription_id,
            "customerId": customer_id, "pendingPayment": pending_payment
        })),
    }
}

/// `POST /api/stripe-checkout {plan, returnUrl?}`: `plan: "trial"` is the entry tier
/// with its trial, once per user.
pub async fn stripe_checkout(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.json_body()?;
    let plan = body.str("plan")?;
    let target = if plan == TRIAL_PLAN { None } else { Some(parse_tier(plan, false)?) };
    let url = required_return_url(ctx, body.opt_str("returnUrl")?)?;
    let who = ctx.identity().await?;
    let url = ctx.billing().checkout(&who, target, url).await?;
    Ok(Reply::ok(obj! {"ok": true, "url": url}))
}

/// `POST /api/billing-portal {returnUrl}` → `{ok, url}`.
pub async fn billing_portal(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let url = required_return_url(ctx, ctx.json_body()?.opt_str("returnUrl")?)?;
    let who = ctx.identity().await?;
    let url = ctx.billing().portal(&who, url).await?;
    Ok(Reply::ok(obj! {"ok": true, "url": url}))
}

/// `POST /api/cancel-subscription`: cancel at the end of the current period (other
/// subscriptions billing the same customer end now).
pub async fn cancel_subscription(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let user = ctx.billing().cancel(&who).await?;
    ctx.forget_entitlements(&who.auth_id).await;
    plan_reply(&user, obj! {"action": "cancel_scheduled"})
}

/// `POST /api/resume-subscription`: undo a pending cancellation before the period ends.
pub async fn resume_subscription(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let user = ctx.billing().resume(&who).await?;
    ctx.forget_entitlements(&who.auth_id).await;
    plan_reply(&user, obj! {"action": "resumed"})
}

/// `POST /api/downgrade-plan {targetPlan}`
pub async fn downgrade_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let target = parse_tier(ctx.json_body()?.str("targetPlan")?, true)?;
    let who = ctx.identity().await?;
    let (action, user) = ctx.billing().downgrade(&who, target).await?;
    ctx.forget_entitlements(&who.auth_id).await;
    plan_reply(&user, obj! {"action": action})
}

/// `POST /api/sync-stripe-plan`: re-read the caller's subscriptions from Stripe.
pub async fn sync_stripe_plan(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let (synced, user) = ctx.billing().sync_own(&who).await?;
    ctx.forget_entitlements(&who.auth_id).await;
    plan_reply(&user, obj! {"synced": synced})
}

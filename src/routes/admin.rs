//! `/api/admin/*`: operator endpoints behind `Authorization: Bearer <ADMIN_TOKEN>`.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Ctx, Reply};
use crate::billing::{Billing, Delivery};
use crate::error::ApiError;
use crate::store::{state, users, webhooks};
use crate::stripe::client::StripeRequest;
use crate::stripe::events;

/// Constant-time comparison of the presented token with `ADMIN_TOKEN` (both hashed
/// first, so neither length nor content leaks through timing).
fn tokens_match(presented: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(presented.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn authorize(ctx: &Ctx<'_>) -> Result<(), ApiError> {
    let presented = crate::auth::bearer_token(ctx.authorization.as_deref())?;
    let Some(expected) = ctx.cfg.admin_token.as_deref() else {
        return Err(ApiError::Forbidden("the admin API is disabled (no ADMIN_TOKEN)"));
    };
    if tokens_match(presented, expected) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin token required"))
    }
}

/// `GET /api/admin/webhook-events?status=failed|dead|processing|processed&limit=N`
pub async fn list_events(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    authorize(ctx)?;
    let status = ctx.query("status").unwrap_or_else(|| "failed".into());
    if !["failed", "dead", "processing", "processed"].contains(&status.as_str()) {
        return Err(ApiError::InvalidRequest("status must be failed, dead, processing or processed".into()));
    }
    let limit = match ctx.query("limit") {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest("limit must be a whole number from 1 to 500".into()))?,
    };
    let rows = webhooks::list(ctx.db, &status, limit).await?;
    let kv_failures = state::get(ctx.db, "counter:kv_dual_write_failed").await?.unwrap_or_else(|| "0".into());
    Ok(Reply::ok(json!({"ok": true, "status": status, "events": rows, "kvDualWriteFailures": kv_failures})))
}

/// `POST /api/admin/webhook-events/{id}/retry`: process a failed or dead event now.
pub async fn retry_event(ctx: &Ctx<'_>, id: &str) -> Result<Reply, ApiError> {
    authorize(ctx)?;
    let row = webhooks::get(ctx.db, id).await?.ok_or(ApiError::NotFound)?;
    if row.status == "processed" {
        return Err(ApiError::coded(409, "ALREADY_PROCESSED", format!("event {id} is already processed")));
    }
    let value: serde_json::Value = serde_json::from_str(&row.payload).map_err(ApiError::server)?;
    let ev = events::envelope_from_value(value).map_err(ApiError::server)?;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    let (status, error) = match billing.deliver(&ev, &row.payload, "admin").await? {
        Delivery::Processed => ("processed", None),
        Delivery::Duplicate => ("processed", None),
        Delivery::InProgress => ("in_progress", None),
        // An admin retry takes a failed event whenever it is due; this is another
        // attempt failing it between the claim and its read.
        Delivery::NotDue { .. } => ("failed", Some("another attempt just failed it".to_string())),
        Delivery::Dead => ("dead", None),
        Delivery::Failed(cause) => ("failed", Some(cause)),
    };
    Ok(Reply::ok(json!({"ok": error.is_none(), "eventId": id, "status": status, "error": error})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResyncBody {
    user_id: Option<String>,
    #[serde(default)]
    all: bool,
}

/// Subscriptions listed per `{"all":true}` call at most (pages of 100).
const RESYNC_MAX_PAGES: usize = 50;

/// `POST /api/admin/resync {"userId":"usr_…"}` or `{"all":true}`: re-read subscriptions
/// from Stripe and store the truth.
pub async fn resync(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    authorize(ctx)?;
    let body: ResyncBody = ctx.json_body()?;
    let billing = Billing::new(ctx.db, ctx.cfg, ctx.app_kv(), ctx.now, ctx.request_id);
    match (body.user_id, body.all) {
        (Some(user_id), false) => {
            let user = users::find_by_id(ctx.db, &user_id).await?.ok_or(ApiError::NotFound)?;
            let synced = billing.resync_user(&user, "admin").await?;
            let user = users::find_by_id(ctx.db, &user_id).await?.ok_or(ApiError::NotFound)?;
            Ok(Reply::ok(json!({"ok": true, "synced": synced, "plan": user.plan_view()})))
        }
        (None, true) => {
            // status=all listing, paginated; grouped by customer so each user's best
            // subscription is chosen among all of theirs.
            let mut by_customer: std::collections::BTreeMap<String, Vec<_>> = Default::default();
            let mut after: Option<String> = None;
            let mut pages = 0;
            let mut complete = false;
            while pages < RESYNC_MAX_PAGES {
                pages += 1;
                let mut req = StripeRequest::get("/v1/subscriptions").param("status", "all").param("limit", "100");
                req = req.param("expand[]", "data.schedule");
                if let Some(a) = &after {
                    req = req.param("starting_after", a.as_str());
                }
                let page = billing.stripe.send(&req).await.map_err(ApiError::server)?;
                let data = page.get("data").and_then(|d| d.as_array()).cloned().unwrap_or_default();
                for s in data.iter().filter_map(|s| events::parse_subscription(s, ctx.now)) {
                    by_customer.entry(s.customer.clone()).or_default().push(s);
                }
                after = data.last().and_then(|s| events::id_of(s.get("id")));
                if page.get("has_more").and_then(|h| h.as_bool()) != Some(true) || after.is_none() {
                    complete = true;
                    break;
                }
            }
            if !complete {
                // A customer's subscriptions may sit on unread pages: applying a
                // partial list could downgrade a paying user. Re-sync users one by one.
                return Err(ApiError::coded(
                    409,
                    "RESYNC_INCOMPLETE",
                    format!("More than {} subscriptions: re-sync users by userId instead", RESYNC_MAX_PAGES * 100),
                ));
            }
            let (mut synced, mut unlinked) = (0, 0);
            for (customer, subs) in &by_customer {
                match users::find_by_customer(ctx.db, customer).await? {
                    Some(user) => {
                        billing.apply_best(&user, subs, "admin").await?;
                        synced += 1;
                    }
                    None => unlinked += 1,
                }
            }
            Ok(Reply::ok(json!({
                "ok": true, "customers": by_customer.len(), "synced": synced,
                "unlinkedCustomers": unlinked, "complete": complete
            })))
        }
        _ => Err(ApiError::InvalidRequest("give either userId or all:true".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn admin_tokens_must_match_exactly() {
        assert!(tokens_match("s3cret-token", "s3cret-token"));
        assert!(!tokens_match("s3cret-toke", "s3cret-token"));
        assert!(!tokens_match("", "s3cret-token"));
        assert!(!tokens_match("S3cret-token", "s3cret-token"));
    }
}

//! `/api/admin/*`: operator endpoints behind `Authorization: Bearer <ADMIN_TOKEN>`.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Ctx, Reply};
use crate::billing::{resync, Delivery};
use crate::error::ApiError;
use crate::obj;
use crate::store::webhooks::{self, EventRow};
use crate::store::{state, users};
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
    let limit = ctx.query_limit(50, 500)?;
    let rows = webhooks::list(ctx.db, &status, limit).await?;
    let kv_failures = state::get(ctx.db, "counter:kv_dual_write_failed").await?.unwrap_or_else(|| "0".into());
    let kv_due = crate::store::outbox::pending(ctx.db).await?;
    let events: Vec<Value> = rows.iter().map(event_json).collect();
    Ok(Reply::ok(obj! {
        "ok": true, "status": status, "events": events, "kvDualWriteFailures": kv_failures, "kvCopiesDue": kv_due
    }))
}

/// One event as the admin API lists it: its columns but the payload. Built here
/// rather than with `EventRow`'s `Serialize`, which would be a serializer of its own.
fn event_json(e: &EventRow) -> Value {
    obj! {
        "id": e.id.as_str(), "type": e.kind.as_str(), "created": e.created, "status": e.status.as_str(),
        "attempts": e.attempts, "last_error": e.last_error.as_deref(),
        "received_at": e.received_at, "processed_at": e.processed_at, "next_attempt_at": e.next_attempt_at,
        "first_failed_at": e.first_failed_at, "source": e.source.as_str(),
    }
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
    let billing = ctx.billing();
    let (status, error) = match billing.deliver(&ev, &row.payload, "admin").await? {
        Delivery::Processed => ("processed", None),
        Delivery::Duplicate => ("processed", None),
        Delivery::InProgress => ("in_progress", None),
        // An admin retry takes a failed event whenever it is due; this is another
        // attempt failing it between the claim and its read.
        Delivery::NotDue { .. } => ("failed", Some("another attempt just failed it".to_string())),
        Delivery::Failed(cause) => ("failed", Some(cause)),
    };
    Ok(Reply::ok(obj! {"ok": error.is_none(), "eventId": id, "status": status, "error": error}))
}

/// `POST /api/admin/resync {"userId":"usr_…"}`: re-read one user's subscriptions from
/// Stripe and store the truth. `{"all":true,"limit"?:N,"cursor"?:"…"}`: the same for
/// the next N users with a Stripe customer; answers `{synced, failed, cursor, done}` —
/// call again with `cursor` until `done`.
pub async fn resync(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    authorize(ctx)?;
    let body = ctx.json_body()?;
    body.only(&["userId", "all", "limit", "cursor"])?;
    // `limit`: users per call with `all` (default 40, at most 100); `cursor`: the
    // `cursor` of the previous answer.
    let (user_id, all, limit, cursor) =
        (body.opt_str("userId")?, body.flag("all")?, body.opt_int("limit")?, body.opt_str("cursor")?);
    let billing = ctx.billing();
    match (user_id, all) {
        (Some(user_id), false) if limit.is_none() && cursor.is_none() => {
            let user = users::find_by_id(ctx.db, user_id).await?.ok_or(ApiError::NotFound)?;
            let synced = billing.resync_user(&user, "admin").await?;
            let user = users::find_by_id(ctx.db, user_id).await?.ok_or(ApiError::NotFound)?;
            Ok(Reply::ok(obj! {"ok": true, "synced": synced, "plan": user.plan_view().to_json()}))
        }
        (None, true) => {
            let limit = super::page_limit(limit, resync::DEFAULT_PAGE.into(), resync::MAX_PAGE.into())? as u32;
            let page = billing.resync_page(cursor, limit).await?;
            Ok(Reply::ok(obj! {
                "ok": true, "synced": page.synced, "failed": page.failed,
                "done": page.cursor.is_none(), "cursor": page.cursor,
            }))
        }
        _ => Err(ApiError::InvalidRequest(
            "give either userId, or all:true (with limit and cursor to page through users)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{event_json, tokens_match};
    use crate::store::db::FromRow;
    use crate::store::webhooks::EventRow;

    #[test]
    fn admin_tokens_must_match_exactly() {
        assert!(tokens_match("s3cret-token", "s3cret-token"));
        assert!(!tokens_match("s3cret-toke", "s3cret-token"));
        assert!(!tokens_match("", "s3cret-token"));
        assert!(!tokens_match("S3cret-token", "s3cret-token"));
    }

    #[test]
    fn a_listed_event_has_every_column_of_the_row_but_the_payload() {
        let row = EventRow::from_row(serde_json::json!({
            "id": "evt_1", "type": "invoice.paid", "created": 1700000000, "status": "failed", "attempts": 2,
            "last_error": "stripe 500", "payload": "{\"secret\":1}", "received_at": 1700000001,
            "processed_at": null, "next_attempt_at": 1700000100, "first_failed_at": 1700000002, "source": "webhook"
        }))
        .unwrap();
        // Every column under its own name, but the payload.
        assert_eq!(
            event_json(&row),
            serde_json::json!({
                "id": "evt_1", "type": "invoice.paid", "created": 1700000000, "status": "failed", "attempts": 2,
                "last_error": "stripe 500", "received_at": 1700000001, "processed_at": null,
                "next_attempt_at": 1700000100, "first_failed_at": 1700000002, "source": "webhook"
            })
        );
        assert!(event_json(&row).get("payload").is_none());
        assert_eq!(event_json(&row)["type"], "invoice.paid");
    }
}

//! `POST /api/stripe-webhook`: how plangate learns what customers paid for.
//!
//! The signature is checked on the raw body before anything is parsed; a bad one is a
//! 400 that writes nothing. An endpoint without a secret refuses every delivery with
//! 500 `WEBHOOK_NOT_CONFIGURED` (Stripe keeps retrying until it is configured). A
//! processing failure answers 500 so Stripe retries; the event is also kept `failed`
//! for the cron.

use serde_json::json;

use super::{Ctx, Reply};
use crate::billing::Delivery;
use crate::error::ApiError;
use crate::stripe::{events, signature};

pub async fn stripe(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    if ctx.cfg.webhook_secrets.is_empty() {
        return Err(ApiError::CodedServer {
            status: 500,
            code: "WEBHOOK_NOT_CONFIGURED",
            public: "Webhook endpoint is not configured",
            cause: "STRIPE_WEBHOOK_SECRET is empty: delivery refused".into(),
        });
    }
    let header = ctx.header("Stripe-Signature");
    signature::verify(&ctx.body, header.as_deref(), &ctx.cfg.webhook_secrets, ctx.cfg.webhook_tolerance, ctx.now)
        .map_err(|e| ApiError::coded(400, "INVALID_SIGNATURE", format!("Invalid Stripe signature: {}", e.reason())))?;
    let payload = std::str::from_utf8(&ctx.body)
        .map_err(|_| ApiError::coded(400, "INVALID_PAYLOAD", "Webhook body is not UTF-8"))?;
    let ev = events::parse_envelope(payload.as_bytes())
        .map_err(|why| ApiError::coded(400, "INVALID_PAYLOAD", format!("Invalid event: {why}")))?;

    let billing = ctx.billing();
    match billing.deliver(&ev, payload, "webhook").await? {
        Delivery::Processed => Ok(Reply::ok(json!({"ok": true, "received": true, "status": "processed"}))),
        Delivery::Duplicate => Ok(Reply::ok(json!({"ok": true, "received": true, "status": "duplicate"}))),
        // Given up after too many failures: listed for an admin, who retries it.
        Delivery::Dead => Ok(Reply::ok(json!({"ok": true, "received": true, "status": "dead"}))),
        // Another delivery holds the lease; if it fails, the cron retries the event.
        Delivery::InProgress => {
            Ok(Reply::ok(json!({"ok": true, "received": true, "status": "in_progress"})).with_status(202))
        }
        Delivery::Failed(cause) => Err(ApiError::CodedServer {
            status: 500,
            code: "WEBHOOK_FAILED",
            public: "Webhook processing failed; it will be retried",
            cause: format!("event {}: {cause}", ev.id),
        }),
    }
}

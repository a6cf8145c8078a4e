//! `POST /api/stripe-webhook`: how plangate learns what customers paid for.
//!
//! The signature is checked on the raw body before anything is parsed; a bad one is a
//! 400 that writes nothing. An endpoint without a secret refuses every delivery with
//! 500 `WEBHOOK_NOT_CONFIGURED` (Stripe keeps retrying until it is configured). A
//! processing failure answers 500 so Stripe retries; the event is also kept `failed`
//! for the cron. A re-delivery of a failed event before its next retry is due is
//! answered 503 `WEBHOOK_RETRY_LATER` (with `Retry-After`) without trying again: the
//! attempts of one backoff window count once, so re-deliveries cannot use up the
//! retries during an outage. A delivery of a `dead` event is tried again.

use super::{Ctx, Reply};
use crate::billing::Delivery;
use crate::error::ApiError;
use crate::stripe::{events, signature};
use crate::{log, obj};

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
        Delivery::Processed => Ok(Reply::ok(obj! {"ok": true, "received": true, "status": "processed"})),
        Delivery::Duplicate => Ok(Reply::ok(obj! {"ok": true, "received": true, "status": "duplicate"})),
        // Another delivery holds the lease; if it fails, the cron retries the event.
        Delivery::InProgress => {
            Ok(Reply::ok(obj! {"ok": true, "received": true, "status": "in_progress"}).with_status(202))
        }
        // Not an error of this delivery: Stripe (which ignores Retry-After and keeps its
        // own, slower schedule) retries, and so does the cron from `retry_at`.
        Delivery::NotDue { retry_at } => {
            let wait = retry_after_seconds(retry_at, ctx.now);
            log::info(
                ctx.request_id,
                "stripe.event_retry_later",
                obj! {"eventId": ev.id.as_str(), "retryAt": retry_at},
            );
            Ok(Reply::ok(obj! {
                "ok": false,
                "code": "WEBHOOK_RETRY_LATER",
                "message": "This event failed recently; it is retried when its backoff has passed",
                "retryAfter": wait,
            })
            .with_status(503)
            .header("Retry-After", wait.to_string()))
        }
        Delivery::Failed(cause) => Err(ApiError::CodedServer {
            status: 500,
            code: "WEBHOOK_FAILED",
            public: "Webhook processing failed; it will be retried",
            cause: format!("event {}: {cause}", ev.id),
        }),
    }
}

/// Seconds until `retry_at`, at least 1 (the `Retry-After` value).
fn retry_after_seconds(retry_at: i64, now: i64) -> i64 {
    retry_at.saturating_sub(now).max(1)
}

#[cfg(test)]
mod tests {
    use super::retry_after_seconds;

    #[test]
    fn retry_after_is_the_wait_until_the_next_attempt_and_never_zero() {
        assert_eq!(retry_after_seconds(1_000_120, 1_000_000), 120);
        assert_eq!(retry_after_seconds(1_000_000, 1_000_000), 1);
        assert_eq!(retry_after_seconds(999_000, 1_000_000), 1);
    }
}

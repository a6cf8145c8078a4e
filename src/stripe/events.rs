//! Stripe objects parsed tolerantly: unknown fields ignored, unknown enum values kept,
//! fields that moved between API versions looked for in both places, expandable fields
//! accepted as an id or as an object.

use serde_json::Value;

use crate::domain::subscription::{NextPhase, SubStatus, Subscription};

/// The envelope of a webhook event or of an Events API entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub kind: String,
    pub created: i64,
    pub object: Value,
    /// `request.idempotency_key`: set when an API request caused the event. A
    /// `plangate:` prefix marks plangate's own calls.
    pub idempotency_key: Option<String>,
}

impl Envelope {
    /// Caused by one of plangate's own Stripe calls (already applied from the answer).
    pub fn caused_by_plangate(&self) -> bool {
        self.idempotency_key.as_deref().is_some_and(|k| k.starts_with(crate::stripe::client::IDEMPOTENCY_PREFIX))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CheckoutCompleted,
    SubscriptionChanged,
    SubscriptionDeleted,
    InvoicePaid,
    InvoicePaymentFailed,
    CustomerUpdated,
    CustomerDeleted,
    PaymentIntentSucceeded,
    PaymentIntentFailed,
    ChargeRefunded,
    /// Recorded and acknowledged, nothing else.
    Unknown,
}

impl EventKind {
    pub fn of(kind: &str) -> EventKind {
        match kind {
            "checkout.session.completed" => EventKind::CheckoutCompleted,
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.trial_will_end"
            | "customer.subscription.paused"
            | "customer.subscription.resumed"
            | "customer.subscription.pending_update_applied"
            | "customer.subscription.pending_update_expired" => EventKind::SubscriptionChanged,
            "customer.subscription.deleted" => EventKind::SubscriptionDeleted,
            "invoice.paid" | "invoice.payment_succeeded" => EventKind::InvoicePaid,
            "invoice.payment_failed" => EventKind::InvoicePaymentFailed,
            "customer.updated" => EventKind::CustomerUpdated,
            "customer.deleted" => EventKind::CustomerDeleted,
            "payment_intent.succeeded" => EventKind::PaymentIntentSucceeded,
            "payment_intent.payment_failed" => EventKind::PaymentIntentFailed,
            "charge.refunded" => EventKind::ChargeRefunded,
            _ => EventKind::Unknown,
        }
    }
}

fn safe_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses an event. Errors are safe to return to the sender.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, String> {
    // `from_str` after a UTF-8 check rather than `from_slice`: one serde_json reader in the Wasm.
    let text = std::str::from_utf8(bytes).map_err(|_| "body is not JSON".to_string())?;
    let v: Value = serde_json::from_str(text).map_err(|_| "body is not JSON".to_string())?;
    envelope_from_value(v)
}

pub fn envelope_from_value(v: Value) -> Result<Envelope, String> {
    let obj = v.as_object().ok_or("event is not a JSON object")?;
    let id = obj.get("id").and_then(Value::as_str).filter(|s| safe_id(s)).ok_or("event has no valid `id`")?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("event has no valid `type`")?;
    let created =
        obj.get("created").and_then(Value::as_i64).filter(|c| *c > 0).ok_or("event has no valid `created`")?;
    let object = obj
        .get("data")
        .and_then(|d| d.get("object"))
        .filter(|o| o.is_object())
        .cloned()
        .ok_or("event has no `data.object`")?;
    let idempotency_key = obj
        .get("request")
        .and_then(|r| r.get("idempotency_key"))
        .and_then(Value::as_str)
        .filter(|k| k.len() <= 255)
        .map(str::to_string);
    Ok(Envelope { id: id.to_string(), kind: kind.to_string(), created, object, idempotency_key })
}

/// An expandable field: `"cus_1"` or `{"id":"cus_1",…}`.
pub fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if safe_id(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).filter(|s| safe_id(s)).map(str::to_string),
        _ => None,
    }
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

fn int_field(v: &Value, name: &str) -> Option<i64> {
    v.get(name).and_then(Value::as_i64)
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("items").and_then(|i| i.get("data")).and_then(Value::as_array).into_iter().flatten()
}

/// The next phase of an expanded subscription schedule (`expand[]=schedule`).
fn next_phase(schedule: Option<&Value>, now: i64) -> Option<NextPhase> {
    let phases = schedule?.get("phases")?.as_array()?;
    phases
        .iter()
        .filter_map(|p| {
            let starts_at = int_field(p, "start_date")?;
            let price = p.get("items")?.as_array()?.first().and_then(|i| id_of(i.get("price")))?;
            (starts_at > now).then_some(NextPhase { price_id: price, starts_at })
        })
        .min_by_key(|p| p.starts_at)
}

/// The hosted page of an expanded `latest_invoice` that can still be paid.
fn open_invoice_url(invoice: Option<&Value>) -> Option<String> {
    let invoice = invoice?.as_object()?;
    if invoice.get("status").and_then(Value::as_str) != Some("open") {
        return None;
    }
    let url = invoice.get("hosted_invoice_url")?.as_str()?;
    (url.starts_with("https://") && url.len() <= 2048).then(|| url.to_string())
}

/// A subscription object, in any API version plangate has seen.
pub fn parse_subscription(v: &Value, now: i64) -> Option<Subscription> {
    if v.get("object").and_then(Value::as_str).is_some_and(|o| o != "subscription") {
        return None;
    }
    let id = id_of(v.get("id"))?;
    let customer = id_of(v.get("customer"))?;
    let status = SubStatus::parse(v.get("status").and_then(Value::as_str)?);
    let (item_ids, price_ids): (Vec<String>, Vec<String>) = items(v)
        .filter_map(|i| {
            let price = id_of(i.get("price")).or_else(|| id_of(i.get("plan")))?;
            Some((id_of(i.get("id")).unwrap_or_default(), price))
        })
        .unzip();
    // Moved from the subscription to its items in API 2025-03-31.basil.
    let current_period_end = int_field(v, "current_period_end")
        .or_else(|| items(v).filter_map(|i| int_field(i, "current_period_end")).max());
    let current_period_start = int_field(v, "current_period_start")
        .or_else(|| items(v).filter_map(|i| int_field(i, "current_period_start")).max());
    Some(Subscription {
        id,
        customer,
        status,
        price_ids,
        item_ids,
        schedule_id: id_of(v.get("schedule")),
        current_period_start,
        current_period_end,
        cancel_at_period_end: v.get("cancel_at_period_end").and_then(Value::as_bool).unwrap_or(false),
        cancel_at: int_field(v, "cancel_at"),
        trial_end: int_field(v, "trial_end"),
        created: int_field(v, "created").unwrap_or(0),
        user_id: v.get("metadata").and_then(|m| str_field(m, "user_id")),
        next_phase: next_phase(v.get("schedule").filter(|s| s.is_object()), now),
        open_invoice_url: open_invoice_url(v.get("latest_invoice")),
    })
}

/// `checkout.session.completed`'s object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub mode: String,
    pub customer: Option<String>,
    pub subscription: Option<String>,
    /// Set by plangate to the user id.
    pub client_reference_id: Option<String>,
    pub metadata_user_id: Option<String>,
    pub payment_intent: Option<String>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    pub payment_status: Option<String>,
    /// `metadata.pack`: the credit pack a payment-mode Checkout of plangate sells.
    pub metadata_pack: Option<String>,
}

pub fn parse_checkout_session(v: &Value) -> Option<CheckoutSession> {
    Some(CheckoutSession {
        id: id_of(v.get("id"))?,
        mode: str_field(v, "mode").unwrap_or_else(|| "payment".into()),
        customer: id_of(v.get("customer")),
        subscription: id_of(v.get("subscription")),
        client_reference_id: str_field(v, "client_reference_id"),
        metadata_user_id: v.get("metadata").and_then(|m| str_field(m, "user_id")),
        payment_intent: id_of(v.get("payment_intent")),
        amount_total: int_field(v, "amount_total"),
        currency: str_field(v, "currency"),
        payment_status: str_field(v, "payment_status"),
        metadata_pack: v.get("metadata").and_then(|m| str_field(m, "pack")),
    })
}

/// What an `invoice.paid` says about the period it paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidInvoice {
    pub id: String,
    pub paid: bool,
    pub amount_paid: i64,
    /// The start of the period its (first) subscription line covers.
    pub period_start: Option<i64>,
    /// The price of that line.
    pub price: Option<String>,
    /// Why Stripe invoiced: `subscription_create`, `subscription_cycle` (a new
    /// period), `subscription_update` (a proration mid-period), `manual`…
    pub billing_reason: Option<String>,
}

pub fn parse_invoice(v: &Value) -> Option<PaidInvoice> {
    let line = v.get("lines").and_then(|l| l.get("data")).and_then(Value::as_array).and_then(|d| d.first());
    let price = line.and_then(|l| {
        id_of(l.get("price"))
            .or_else(|| id_of(l.get("plan")))
            .or_else(|| l.get("pricing").and_then(|p| p.get("price_details")).and_then(|p| id_of(p.get("price"))))
    });
    Some(PaidInvoice {
        id: id_of(v.get("id"))?,
        paid: v.get("paid").and_then(Value::as_bool) == Some(true) || str_field(v, "status").as_deref() == Some("paid"),
        amount_paid: int_field(v, "amount_paid").unwrap_or(0),
        period_start: line.and_then(|l| l.get("period")).and_then(|p| int_field(p, "start")),
        price,
        billing_reason: str_field(v, "billing_reason"),
    })
}

/// The subscription an invoice belongs to (moved under `parent` in API 2025-03-31).
pub fn invoice_subscription(v: &Value) -> Option<String> {
    id_of(v.get("subscription"))
        .or_else(|| {
            id_of(v.get("parent").and_then(|p| p.get("subscription_details")).and_then(|s| s.get("subscription")))
        })
        .or_else(|| {
            v.get("lines").and_then(|l| l.get("data")).and_then(Value::as_array).into_iter().flatten().find_map(
                |line| {
                    id_of(line.get("subscription")).or_else(|| {
                        id_of(
                            line.get("parent")
                                .and_then(|p| p.get("subscription_item_details"))
                                .and_then(|s| s.get("subscription")),
                        )
                    })
                },
            )
        })
}

pub fn customer_of(v: &Value) -> Option<String> {
    id_of(v.get("customer"))
}

/// A payment (payment intent or charge) for the payments record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_intent: String,
    pub customer: Option<String>,
    pub amount: Option<i64>,
    pub amount_refunded: Option<i64>,
    pub currency: Option<String>,
    pub user_id: Option<String>,
    /// `metadata.pack` of a payment intent of plangate's pack Checkout.
    pub pack: Option<String>,
}

pub fn parse_payment_intent(v: &Value) -> Option<Payment> {
    Some(Payment {
        payment_intent: id_of(v.get("id"))?,
        customer: customer_of(v),
        amount: int_field(v, "amount_received").filter(|a| *a > 0).or_else(|| int_field(v, "amount")),
        amount_refunded: None,
        currency: str_field(v, "currency"),
        user_id: v.get("metadata").and_then(|m| str_field(m, "user_id")),
        pack: v.get("metadata").and_then(|m| str_field(m, "pack")),
    })
}

pub fn parse_charge(v: &Value) -> Option<Payment> {
    Some(Payment {
        payment_intent: id_of(v.get("payment_intent")).or_else(|| id_of(v.get("id")))?,
        customer: customer_of(v),
        amount: int_field(v, "amount"),
        amount_refunded: int_field(v, "amount_refunded"),
        currency: str_field(v, "currency"),
        user_id: v.get("metadata").and_then(|m| str_field(m, "user_id")),
        pack: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_paid_invoice_names_its_period_start_and_price() {
        let v = json!({"id": "in_1", "object": "invoice", "status": "paid", "amount_paid": 900,
                       "lines": {"data": [{"period": {"start": 1_700_000_000, "end": 1_702_592_000}, "price": {"id": "price_pro"}}]}});
        let i = parse_invoice(&v).unwrap();
        assert_eq!(
            (i.paid, i.amount_paid, i.period_start, i.price.as_deref()),
            (true, 900, Some(1_700_000_000), Some("price_pro"))
        );
        // Newer API versions: the price under `pricing.price_details`; `paid` as a flag.
        let v = json!({"id": "in_2", "paid": true, "amount_paid": 0,
                       "lines": {"data": [{"period": {"start": 5}, "pricing": {"price_details": {"price": "price_x"}}}]}});
        let i = parse_invoice(&v).unwrap();
        assert_eq!((i.paid, i.amount_paid, i.price.as_deref()), (true, 0, Some("price_x")));
        let open = parse_invoice(&json!({"id": "in_3", "status": "open"})).unwrap();
        assert_eq!((open.paid, open.period_start, open.price), (false, None, None));
        assert!(parse_invoice(&json!({"status": "paid"})).is_none());
    }

    #[test]
    fn an_envelope_needs_id_type_created_and_an_object() {
        let ok = br#"{"id":"evt_1","type":"customer.subscription.updated","created":1700000000,"data":{"object":{"id":"sub_1"}}}"#;
        let e = parse_envelope(ok).unwrap();
        assert_eq!(
            (e.id.as_str(), e.kind.as_str(), e.created),
            ("evt_1", "customer.subscription.updated", 1_700_000_000)
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt 1","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":7,"created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":"yesterday","data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":"sub_1"}}"#,
            br#"{"id":"evt_1","type":"x","created":1}"#,
        ] {
            assert!(parse_envelope(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn events_caused_by_plangate_are_recognised_by_their_idempotency_key() {
        let own = br#"{"id":"evt_2","type":"x","created":1,"data":{"object":{}},"request":{"id":"req_1","idempotency_key":"plangate:upgrade:usr_1:0:sub_1:price_pro"}}"#;
        assert!(parse_envelope(own).unwrap().caused_by_plangate());
        let dashboard = br#"{"id":"evt_3","type":"x","created":1,"data":{"object":{}},"request":{"id":null,"idempotency_key":null}}"#;
        assert!(!parse_envelope(dashboard).unwrap().caused_by_plangate());
        let other =
            br#"{"id":"evt_4","type":"x","created":1,"data":{"object":{}},"request":{"idempotency_key":"abc"}}"#;
        assert!(!parse_envelope(other).unwrap().caused_by_plangate());
    }

    #[test]
    fn event_kinds_map_and_unknown_types_are_kept_as_unknown() {
        assert_eq!(EventKind::of("invoice.payment_succeeded"), EventKind::InvoicePaid);
        assert_eq!(EventKind::of("customer.subscription.trial_will_end"), EventKind::SubscriptionChanged);
        assert_eq!(EventKind::of("product.created"), EventKind::Unknown);
    }

    #[test]
    fn a_subscription_is_read_in_the_old_and_the_new_api_shape() {
        let old = json!({"id":"sub_1","object":"subscription","customer":"cus_1","status":"active",
            "current_period_end": 1_800_000_000, "cancel_at_period_end": false, "created": 1_700_000_000,
            "metadata": {"user_id": "usr_1"},
            "items":{"data":[{"price":{"id":"price_pro"}}]}});
        let s = parse_subscription(&old, 0).unwrap();
        assert_eq!(s.current_period_end, Some(1_800_000_000));
        assert_eq!(s.price_ids, ["price_pro"]);
        assert_eq!(s.user_id.as_deref(), Some("usr_1"));
        let new = json!({"id":"sub_1","customer":{"id":"cus_1"},"status":"trialing","trial_end":1_750_000_000,
            "items":{"data":[{"price":"price_ess","current_period_end":1_810_000_000}]}});
        let s = parse_subscription(&new, 0).unwrap();
        assert_eq!(
            (s.customer.as_str(), s.current_period_end, s.trial_end),
            ("cus_1", Some(1_810_000_000), Some(1_750_000_000))
        );
        assert_eq!(s.status, SubStatus::Trialing);
        let weird = json!({"id":"sub_1","customer":"cus_1","status":"frozen_solid","items":{"data":[]}});
        assert_eq!(parse_subscription(&weird, 0).unwrap().status, SubStatus::Other("frozen_solid".into()));
        assert!(parse_subscription(&json!({"id":"sub_1","status":"active"}), 0).is_none());
        assert!(parse_subscription(&json!({"object":"invoice","id":"in_1","customer":"cus_1","status":"paid"}), 0)
            .is_none());
    }

    #[test]
    fn the_next_schedule_phase_is_found_in_an_expanded_schedule() {
        let v = json!({"id":"sub_1","customer":"cus_1","status":"active","items":{"data":[{"price":"price_pro"}]},
            "schedule":{"id":"sub_sched_1","phases":[
                {"start_date":100,"end_date":200,"items":[{"price":"price_pro"}]},
                {"start_date":200,"items":[{"price":{"id":"price_ess"}}]}]}});
        let s = parse_subscription(&v, 150).unwrap();
        assert_eq!(s.next_phase, Some(NextPhase { price_id: "price_ess".into(), starts_at: 200 }));
        let unexpanded = json!({"id":"sub_1","customer":"cus_1","status":"active","schedule":"sub_sched_1"});
        assert_eq!(parse_subscription(&unexpanded, 150).unwrap().next_phase, None);
    }

    #[test]
    fn an_invoice_names_its_subscription_in_any_api_version() {
        assert_eq!(invoice_subscription(&json!({"subscription":"sub_1"})).as_deref(), Some("sub_1"));
        assert_eq!(
            invoice_subscription(&json!({"parent":{"subscription_details":{"subscription":"sub_2"}}})).as_deref(),
            Some("sub_2")
        );
        assert_eq!(
            invoice_subscription(
                &json!({"lines":{"data":[{"parent":{"subscription_item_details":{"subscription":"sub_3"}}}]}})
            )
            .as_deref(),
            Some("sub_3")
        );
        assert_eq!(invoice_subscription(&json!({"subscription":null})), None);
    }

    #[test]
    fn checkout_sessions_and_payments_are_read_tolerantly() {
        let cs = parse_checkout_session(&json!({"id":"cs_1","mode":"subscription","customer":"cus_1",
            "subscription":"sub_1","client_reference_id":"usr_1","metadata":{}}))
        .unwrap();
        assert_eq!(cs.client_reference_id.as_deref(), Some("usr_1"));
        assert_eq!(cs.subscription.as_deref(), Some("sub_1"));
        let pi =
            parse_payment_intent(&json!({"id":"pi_1","amount":500,"amount_received":500,"currency":"eur"})).unwrap();
        assert_eq!((pi.payment_intent.as_str(), pi.amount), ("pi_1", Some(500)));
        let ch =
            parse_charge(&json!({"id":"ch_1","payment_intent":"pi_1","amount":500,"amount_refunded":200})).unwrap();
        assert_eq!((ch.payment_intent.as_str(), ch.amount_refunded), ("pi_1", Some(200)));
    }
}

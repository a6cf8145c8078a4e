//! Stripe objects and events for the webhook tests, and ways to deliver them.

use serde_json::{json, Value};

use crate::support::{agent, get, now, send, token, unique, App, Resp};
use crate::{PRICE_ESSENTIAL, WEBHOOK_SECRET};

/// A plangate user (created through `/api/plan/me`) with fresh Stripe ids.
pub struct Customer {
    pub auth_id: String,
    pub user_id: String,
    pub customer: String,
    pub subscription: String,
}

pub fn new_customer(app: &App, label: &str) -> Customer {
    let auth_id = unique(label);
    let r = get(&app.url("/api/plan/me"), Some(&token(&auth_id)));
    assert_eq!(r.status, 200, "{}", r.body);
    let user_id =
        app.sql(&format!("SELECT id FROM users WHERE auth_id = '{auth_id}'"))[0]["id"].as_str().unwrap().to_string();
    let tag = auth_id.replace('-', "");
    Customer { auth_id, user_id, customer: format!("cus_{tag}"), subscription: format!("sub_{tag}") }
}

/// A subscription object as Stripe's API (2024-06-20) returns it.
pub fn subscription(c: &Customer, status: &str, price: &str) -> Value {
    json!({
        "id": c.subscription, "object": "subscription", "customer": c.customer, "status": status,
        "created": now() - 1000, "current_period_end": now() + 30 * 86400, "cancel_at_period_end": false,
        "cancel_at": null, "trial_end": null, "metadata": {"user_id": c.user_id},
        "items": {"object": "list", "data": [{"id": format!("si_{}", c.subscription), "price": {"id": price}}]}
    })
}

pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "api_version": "2024-06-20",
           "livemode": false, "data": {"object": object}})
}

pub fn checkout_completed(c: &Customer) -> Value {
    json!({"id": format!("cs_{}", c.subscription), "object": "checkout.session", "mode": "subscription",
           "customer": c.customer, "subscription": c.subscription, "client_reference_id": c.user_id,
           "payment_status": "paid", "metadata": {}})
}

pub fn sign(body: &[u8], secret: &str) -> String {
    plangate::stripe::signature::sign_for_test(body, secret, now())
}

pub fn post_webhook(app: &App, body: &[u8], signature: Option<&str>) -> Resp {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(s) = signature {
        headers.push(("Stripe-Signature", s));
    }
    send(&agent(), "POST", &app.url("/api/stripe-webhook"), &headers, Some(body))
}

/// Delivers `event` signed with the current secret.
pub fn deliver(app: &App, event: &Value) -> Resp {
    let body = event.to_string();
    post_webhook(app, body.as_bytes(), Some(&sign(body.as_bytes(), WEBHOOK_SECRET)))
}

pub fn user_row(app: &App, user_id: &str) -> Value {
    app.sql(&format!("SELECT * FROM users WHERE id = '{user_id}'")).remove(0)
}

pub fn event_row(app: &App, event_id: &str) -> Option<Value> {
    app.sql(&format!("SELECT * FROM webhook_events WHERE id = '{event_id}'")).into_iter().next()
}

/// Runs the cron now (or at `at`, unix seconds) and waits for it to finish.
pub fn run_cron(app: &App, at: Option<i64>) {
    let mut url = app.url("/cdn-cgi/handler/scheduled?cron=*/5+*+*+*+*");
    if let Some(t) = at {
        url.push_str(&format!("&time={}", t * 1000));
    }
    let r = send(&agent(), "GET", &url, &[], None);
    assert!(r.status < 300, "scheduled trigger: {} {}", r.status, r.body);
}

/// A subscribed user: checkout + subscription delivered, fake holding `essential` active.
pub fn subscribed(app: &App, stripe: &crate::support::stripe_fake::StripeFake, label: &str) -> Customer {
    let c = new_customer(app, label);
    stripe.put_subscription(subscription(&c, "active", PRICE_ESSENTIAL));
    let r = deliver(
        app,
        &event(&format!("evt_co_{}", c.subscription), "checkout.session.completed", now(), checkout_completed(&c)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    c
}

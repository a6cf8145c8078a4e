//! Stripe objects and events for the webhook tests, and ways to deliver them.

use serde_json::{json, Value};

use crate::support::stripe_fake::StripeFake;
use crate::support::{agent, get, now, send, token, unique, App, Resp};
use crate::{ADMIN_TOKEN, ALLOWED_ORIGIN_FOR_TESTS, PRICE_ESSENTIAL, WEBHOOK_SECRET};

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
        "created": now() - 1000, "current_period_start": now() - 1000, "current_period_end": now() + 30 * 86400,
        "cancel_at_period_end": false,
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

// ---------------------------------------------------------------------------------
// Entitlements, usage and credits (issue 9).

/// `subscription` for the billing period `[start, end)`.
pub fn subscription_in(c: &Customer, status: &str, price: &str, start: i64, end: i64) -> Value {
    let mut sub = subscription(c, status, price);
    sub["current_period_start"] = json!(start);
    sub["current_period_end"] = json!(end);
    sub
}

/// A fresh event id.
pub fn event_id(label: &str) -> String {
    format!("evt_{}", unique(label).replace('-', ""))
}

/// Stripe holds `sub` from now on and says so: the fake keeps it and a
/// `customer.subscription.updated` is delivered (plangate re-fetches it from the fake).
pub fn stripe_says(app: &App, stripe: &StripeFake, sub: Value) {
    stripe.put_subscription(sub.clone());
    let r = deliver(app, &event(&event_id("sub"), "customer.subscription.updated", now(), sub));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Delivers every event, each answered 200.
pub fn deliver_all(app: &App, events: &[Value]) {
    for ev in events {
        let r = deliver(app, ev);
        assert_eq!(r.status, 200, "{} {}: {}", ev["type"], ev["id"], r.body);
    }
}

/// `send` again while wrangler's dev proxy answers that it was swapping the Worker:
/// it answers non-GET requests in flight then with this 503 (`Retry-After: 0`) without
/// a Worker answer, under heavy load too. Only for requests that are safe to repeat
/// (idempotency key, event id, or read-only); at most 3 more tries, each reported.
pub fn retrying_dev_restarts(mut send_once: impl FnMut() -> Resp) -> Resp {
    let mut r = send_once();
    for _ in 0..3 {
        if !(r.status == 503 && r.body.starts_with("Your worker restarted mid-request")) {
            break;
        }
        eprintln!("wrangler dev restarted the Worker mid-request: sending again");
        r = send_once();
    }
    r
}

/// A request with a bearer token (a user's JWT, a service token or ADMIN_TOKEN).
pub fn request(app: &App, method: &str, path: &str, bearer: Option<&str>, body: Option<&Value>) -> Resp {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let b = body.map(|b| b.to_string());
    retrying_dev_restarts(|| send(&agent(), method, &app.url(path), &headers, b.as_deref().map(str::as_bytes)))
}

/// POSTs `body` as the user.
pub fn user_post(app: &App, c: &Customer, path: &str, body: Value) -> Resp {
    request(app, "POST", path, Some(&token(&c.auth_id)), Some(&body))
}

pub fn user_get(app: &App, c: &Customer, path: &str) -> Resp {
    request(app, "GET", path, Some(&token(&c.auth_id)), None)
}

pub fn admin_post(app: &App, path: &str, body: Value) -> Resp {
    request(app, "POST", path, Some(ADMIN_TOKEN), Some(&body))
}

pub fn admin_get(app: &App, path: &str) -> Resp {
    request(app, "GET", path, Some(ADMIN_TOKEN), None)
}

pub fn entitlements(app: &App, c: &Customer) -> Resp {
    user_get(app, c, "/api/entitlements")
}

/// `GET /api/entitlements` until it is a cache hit (the cache may be written after the
/// response): the next change must then invalidate it. Returns the cached body.
pub fn cached_entitlements(app: &App, c: &Customer) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = entitlements(app, c);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.header("X-Entitlements-Cache") == Some("hit") {
            return r.json();
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "never a cache hit: {:?}", r.headers);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `GET /api/entitlements` until `fresh` holds, for at most 5 s (webhook effects drop
/// the cache after their response). Returns the last body.
pub fn entitlements_when(app: &App, c: &Customer, fresh: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = entitlements(app, c);
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        if fresh(&body) || start.elapsed() > std::time::Duration::from_secs(5) {
            return body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn consume(app: &App, c: &Customer, feature: &str, amount: i64, key: &str) -> Resp {
    user_post(app, c, "/api/usage/consume", json!({"feature": feature, "amount": amount, "idempotencyKey": key}))
}

pub fn spend(app: &App, c: &Customer, amount: i64, key: &str) -> Resp {
    user_post(app, c, "/api/credits/spend", json!({"amount": amount, "reason": "e2e spend", "idempotencyKey": key}))
}

pub fn adjust(app: &App, user_id: &str, delta: i64, reason: &str) -> Resp {
    admin_post(app, "/api/admin/credits/adjust", json!({"userId": user_id, "delta": delta, "reason": reason}))
}

/// Gives the user `delta` credits through the admin API.
pub fn give_credits(app: &App, c: &Customer, delta: i64) {
    let r = adjust(app, &c.user_id, delta, "e2e grant");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The balance `GET /api/credits` reports.
pub fn balance(app: &App, c: &Customer) -> i64 {
    let r = user_get(app, c, "/api/credits");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["balance"].as_i64().unwrap_or_else(|| panic!("no balance: {}", r.body))
}

/// SUM(delta) of the user's ledger.
pub fn ledger_sum(app: &App, user_id: &str) -> i64 {
    app.count(&format!("SELECT COALESCE(SUM(delta), 0) FROM credit_transactions WHERE user_id = '{user_id}'"))
}

/// The user's ledger rows of one reason, oldest first.
pub fn ledger(app: &App, user_id: &str, reason: &str) -> Vec<Value> {
    app.sql(&format!(
        "SELECT * FROM credit_transactions WHERE user_id = '{user_id}' AND reason = '{reason}' ORDER BY created_at, rowid"
    ))
}

/// A ledger row's `metadata` (stored as JSON text).
pub fn metadata(row: &Value) -> Value {
    match &row["metadata"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|e| panic!("metadata is not JSON ({e}): {s}")),
        other => other.clone(),
    }
}

/// An id (text or integer) as text, to compare ids the API and SQL render differently.
pub fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `f(i)` on `n` threads released together by a barrier.
pub fn at_once<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let f = std::sync::Arc::new(f);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The user starts buying `pack`: `POST /api/credits/checkout`. Returns the answer and
/// the fake's session.
pub fn checkout_pack(app: &App, stripe: &StripeFake, c: &Customer, pack: &str) -> (Value, Value) {
    let r = user_post(
        app,
        c,
        "/api/credits/checkout",
        json!({"pack": pack, "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/credits")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let session = stripe.session_by_url(body["url"].as_str().expect("a url")).expect("session exists at the fake");
    (body, session)
}

/// The user buys and pays `pack`. Returns Stripe's events (`checkout.session.completed`,
/// `payment_intent.succeeded`), not delivered, and the payment intent id.
pub fn buy_pack(app: &App, stripe: &StripeFake, c: &Customer, pack: &str) -> (Vec<Value>, String) {
    let (_, session) = checkout_pack(app, stripe, c, pack);
    let events = stripe.complete_payment_checkout(session["id"].as_str().unwrap());
    let pi = events[1]["data"]["object"]["id"].as_str().unwrap().to_string();
    (events, pi)
}

/// A user on `plan` through a subscription Checkout paid at the fake (webhooks
/// delivered). Returns the subscription id.
pub fn on_plan(app: &App, stripe: &StripeFake, label: &str, plan: &str) -> (Customer, String) {
    let c = new_customer(app, label);
    let r = user_post(
        app,
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": plan, "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/billing")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "redirect", "{}", r.body);
    let session = stripe.session_by_url(r.json()["url"].as_str().unwrap()).unwrap();
    let events = stripe.complete_checkout(session["id"].as_str().unwrap());
    deliver_all(app, &events);
    let sub = events[1]["data"]["object"]["id"].as_str().unwrap().to_string();
    assert_eq!(user_row(app, &c.user_id)["plan"], plan);
    (c, sub)
}

/// `[start, end)` of the UTC calendar month holding `t`, as the API formats times.
pub fn month_of(t: i64) -> (String, String) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,datetime as d;t=d.datetime.fromtimestamp(int(sys.argv[1]),d.timezone.utc);\
             s=t.replace(day=1,hour=0,minute=0,second=0,microsecond=0);\
             e=s.replace(year=s.year+1,month=1) if s.month==12 else s.replace(month=s.month+1);\
             print(s.strftime('%Y-%m-%dT%H:%M:%SZ'),e.strftime('%Y-%m-%dT%H:%M:%SZ'))",
        ])
        .arg(t.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (a, b) = text.trim().split_once(' ').unwrap();
    (a.to_string(), b.to_string())
}

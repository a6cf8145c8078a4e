//! A stateful Stripe fake on loopback: serves subscriptions, customers and events the
//! test puts in it, fails on request for chosen ids, and records every request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub const SECRET_KEY: &str = "sk_test_plangate_fake";
pub const WEBHOOK_SECRET: &str = "whsec_e2e_current";
/// A second, older secret: deliveries signed with either pass (rotation).
pub const WEBHOOK_SECRET_OLD: &str = "whsec_e2e_previous";
pub const ADMIN_TOKEN: &str = "admin-e2e-token-0123456789";
pub const PRICE_ESSENTIAL: &str = "price_essential_e2e";
pub const PRICE_PRO: &str = "price_pro_e2e";
pub const PRICE_PREMIUM: &str = "price_premium_e2e";
/// The credit packs' prices (the development values of `STRIPE_PRICE_PACK_*`).
pub const PRICE_PACK_SMALL: &str = "price_pack_small_dev";
pub const PRICE_PACK_LARGE: &str = "price_pack_large_dev";
/// What the fake charges for a pack (cents, USD).
pub const PACK_SMALL_AMOUNT: i64 = 500;
pub const PACK_LARGE_AMOUNT: i64 = 2000;
/// Signs service tokens (`POST /api/entitlements/check`, consume on behalf of a user).
pub const SERVICE_JWT_SECRET: &str = "service-secret-for-tests-only-0123456789";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct FakeState {
    pub subscriptions: BTreeMap<String, Value>,
    pub customers: BTreeMap<String, Value>,
    /// Events the Events API lists as `delivery_success=false`.
    pub undelivered: Vec<Value>,
    /// Ids (subscription, customer) whose reads answer 500.
    pub failing: BTreeSet<String>,
    /// Every subscription read (one or a listing) answers 500: Stripe's outage.
    pub subscriptions_down: bool,
    /// Ids whose reads do not answer until released (a hung Stripe).
    pub hanging: BTreeSet<String>,
    /// (path fragment, count): the next `count` POSTs whose path contains it answer 500.
    pub fail_posts: Vec<(String, usize)>,
    pub checkout_sessions: BTreeMap<String, Value>,
    /// Payment intents and charges of paid payment-mode sessions, invoices made by
    /// [`StripeFake::invoice_paid`].
    pub payment_intents: BTreeMap<String, Value>,
    pub charges: BTreeMap<String, Value>,
    pub invoices: BTreeMap<String, Value>,
    pub schedules: BTreeMap<String, Value>,
    /// (path fragment, count): the next `count` POSTs whose path contains it are
    /// carried out but answered 500 (the answer is lost on the way back).
    pub lose_answers: Vec<(String, usize)>,
    /// Checkout sessions the customer pays just before plangate's expire reaches Stripe.
    pub pay_before_expire: BTreeSet<String>,
    /// Checkout sessions the customer pays just before plangate lists the open ones.
    pub pay_before_listing: BTreeSet<String>,
    /// Idempotency-Key → the answer given, replayed for the same key.
    /// Idempotency-Key → (the request's path and body, the answer given). Like Stripe,
    /// the same key with other parameters is refused with `idempotency_error`.
    pub idempotent: BTreeMap<String, (String, (u16, Value))>,
    pub counter: u64,
    pub requests: Vec<Recorded>,
    /// Where Checkout and portal pages are served (the dev stand-in's own address);
    /// `None`: the fictitious `https://checkout.stripe.test/…` URLs the tests use.
    pub public_base: Option<String>,
    /// Accept any `sk_…` key (the dev stand-in), not only [`SECRET_KEY`].
    pub any_key: bool,
    /// Billing portal sessions: id → `{id, url, customer, return_url}`.
    pub portal_sessions: BTreeMap<String, Value>,
}

#[derive(Clone)]
pub struct StripeFake {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

fn fake_event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}})
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"type": kind, "code": code, "message": message}}))
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Form/query decoding (`%XX`, `+`): the Worker's own decoder.
pub fn decode(s: &str) -> String {
    plangate::util::percent_decode(s)
}

fn list(items: Vec<Value>, params: &[(String, String)]) -> Value {
    let limit = params.iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse().ok()).unwrap_or(10usize);
    let start = match params.iter().find(|(k, _)| k == "starting_after") {
        Some((_, after)) => items.iter().position(|i| i["id"] == after.as_str()).map(|p| p + 1).unwrap_or(items.len()),
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    json!({"object": "list", "data": page, "has_more": start + limit < items.len()})
}

impl StripeFake {
    /// Vars that point an app at this fake (with both webhook secrets, the prices,
    /// dual-write on, an admin token and the X-D1-Rows-* headers on).
    pub fn app_options(&self) -> super::AppOptions {
        super::AppOptions::default()
            .var("STRIPE_API_BASE", &self.base)
            .var("STRIPE_SECRET_KEY", SECRET_KEY)
            .var("STRIPE_WEBHOOK_SECRET", &format!("{WEBHOOK_SECRET_OLD},{WEBHOOK_SECRET}"))
            .var("STRIPE_PRICE_ESSENTIAL", PRICE_ESSENTIAL)
            .var("STRIPE_PRICE_PRO", PRICE_PRO)
            .var("STRIPE_PRICE_PREMIUM", PRICE_PREMIUM)
            .var("STRIPE_PRICE_PACK_SMALL", PRICE_PACK_SMALL)
            .var("STRIPE_PRICE_PACK_LARGE", PRICE_PACK_LARGE)
            .var("SERVICE_JWT_SECRET", SERVICE_JWT_SECRET)
            .var("DUAL_WRITE_KV", "true")
            .var("ADMIN_TOKEN", ADMIN_TOKEN)
            .var("EXPOSE_D1_STATS", "true")
    }

    /// A fake without a server of its own, answering the Stripe API through
    /// [`StripeFake::answer`] (the dev stand-in serves it beside its pages); its
    /// Checkout and portal URLs are on `public_base`, and any `sk_…` key is accepted.
    pub fn detached(public_base: &str) -> StripeFake {
        let state = FakeState { public_base: Some(public_base.to_string()), any_key: true, ..FakeState::default() };
        StripeFake { base: public_base.to_string(), state: Arc::new(Mutex::new(state)) }
    }

    /// Answers one API request and records it.
    pub fn answer(&self, rec: Recorded) -> (u16, Value) {
        let answer = handle(&self.state, &rec);
        self.state.lock().unwrap().requests.push(rec);
        answer
    }

    pub fn session(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().checkout_sessions.get(id).cloned()
    }

    pub fn portal_session(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().portal_sessions.get(id).cloned()
    }

    /// Every subscription, newest first.
    pub fn all_subscriptions(&self) -> Vec<Value> {
        let mut subs: Vec<Value> = self.state.lock().unwrap().subscriptions.values().cloned().collect();
        subs.sort_by_key(|s| std::cmp::Reverse(s["created"].as_i64().unwrap_or(0)));
        subs
    }

    /// The customer sets or clears `cancel_at_period_end` (the portal's cancel, or
    /// "don't cancel"). Returns the `customer.subscription.updated` event.
    pub fn set_cancel_at_period_end(&self, sub_id: &str, cancel: bool) -> Option<Value> {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let n = s.counter;
        let sub = s.subscriptions.get_mut(sub_id)?;
        sub["cancel_at_period_end"] = json!(cancel);
        let sub = sub.clone();
        Some(fake_event(&format!("evt_fake{n}_portal"), "customer.subscription.updated", now(), sub))
    }

    /// A Stripe event about an object as the fake holds it now (e.g. after an API call).
    pub fn event_about(&self, kind: &str, object: Value) -> Value {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let n = s.counter;
        fake_event(&format!("evt_fake{n}_{}", kind.replace('.', "_")), kind, now(), object)
    }

    pub fn start() -> StripeFake {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let fake =
            StripeFake { base: format!("http://127.0.0.1:{port}"), state: Arc::new(Mutex::new(FakeState::default())) };
        let state = fake.state.clone();
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let state = state.clone();
                std::thread::spawn(move || {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let url = req.url().to_string();
                    let (path, query) = url
                        .split_once('?')
                        .map(|(p, q)| (p.to_string(), q.to_string()))
                        .unwrap_or((url.clone(), String::new()));
                    let headers = req.headers().iter().map(|h| (h.field.to_string(), h.value.to_string())).collect();
                    let rec = Recorded { method: req.method().to_string(), path, query, headers, body };
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                    while state.lock().unwrap().hanging.iter().any(|id| rec.path.ends_with(id.as_str()))
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    let (status, value) = handle(&state, &rec);
                    state.lock().unwrap().requests.push(rec);
                    let resp = tiny_http::Response::from_string(value.to_string())
                        .with_status_code(status)
                        .with_header("Content-Type: application/json".parse::<tiny_http::Header>().unwrap());
                    let _ = req.respond(resp);
                });
            }
        });
        fake
    }

    /// The next `count` POSTs whose path contains `fragment` answer 500.
    pub fn fail_next_posts(&self, fragment: &str, count: usize) {
        self.state.lock().unwrap().fail_posts.push((fragment.to_string(), count));
    }

    /// The next `count` POSTs whose path or form body contains `fragment` are carried
    /// out, but their answers are lost (500).
    pub fn lose_next_answers(&self, fragment: &str, count: usize) {
        self.state.lock().unwrap().lose_answers.push((fragment.to_string(), count));
    }

    /// The customer pays this open session just before plangate's expire arrives.
    pub fn pay_before_expire(&self, session_id: &str) {
        self.state.lock().unwrap().pay_before_expire.insert(session_id.to_string());
    }

    /// The customer pays this open session just before plangate lists open sessions.
    pub fn pay_before_listing(&self, session_id: &str) {
        self.state.lock().unwrap().pay_before_listing.insert(session_id.to_string());
    }

    /// Stripe no longer knows the customer at all (another account or mode: 404).
    pub fn forget_customer(&self, id: &str) {
        self.state.lock().unwrap().customers.remove(id);
    }

    /// The customer is deleted (as in the dashboard): its subscriptions are canceled.
    /// Returns the `customer.deleted` event Stripe would send.
    pub fn delete_customer(&self, id: &str) -> Value {
        let mut s = self.state.lock().unwrap();
        delete_customer(&mut s, id);
        s.counter += 1;
        let n = s.counter;
        fake_event(&format!("evt_fake{n}_custdel"), "customer.deleted", now(), json!({"id": id, "object": "customer"}))
    }

    /// Customers whose metadata names `user_id` (deleted ones included).
    pub fn customers_of_user(&self, user_id: &str) -> Vec<Value> {
        self.state.lock().unwrap().customers.values().filter(|c| c["metadata"]["user_id"] == user_id).cloned().collect()
    }

    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().subscriptions.get(id).cloned()
    }

    pub fn subscriptions_of(&self, customer: &str) -> Vec<Value> {
        self.state.lock().unwrap().subscriptions.values().filter(|s| s["customer"] == customer).cloned().collect()
    }

    pub fn sessions_of(&self, customer: &str) -> Vec<Value> {
        self.state.lock().unwrap().checkout_sessions.values().filter(|s| s["customer"] == customer).cloned().collect()
    }

    pub fn session_by_url(&self, url: &str) -> Option<Value> {
        self.state.lock().unwrap().checkout_sessions.values().find(|s| s["url"] == url).cloned()
    }

    /// The customer pays: the session's subscription is created (trialing when the
    /// session had trial days). Returns the events Stripe would send.
    pub fn complete_checkout(&self, session_id: &str) -> Vec<Value> {
        complete_checkout(&mut self.state.lock().unwrap(), session_id)
    }

    /// Time passes to the end of the current period: a pending cancellation ends the
    /// subscription, a schedule's next phase takes effect, else it renews. Returns the
    /// event Stripe would send.
    pub fn advance_period(&self, sub_id: &str) -> Value {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let n = s.counter;
        let mut sub = s.subscriptions.get(sub_id).cloned().expect("no such subscription");
        let end = sub["current_period_end"].as_i64().unwrap_or(now());
        let kind = if sub["cancel_at_period_end"] == true {
            sub["status"] = json!("canceled");
            sub["ended_at"] = json!(end);
            "customer.subscription.deleted"
        } else {
            if let Some(sched_id) = sub["schedule"].as_str().map(str::to_string) {
                if let Some(next) = s.schedules.get(&sched_id).and_then(|sc| sc["phases"].get(1).cloned()) {
                    sub["items"]["data"][0]["price"] = json!({"id": next["items"][0]["price"]});
                }
                s.schedules.remove(&sched_id);
                sub["schedule"] = Value::Null;
            }
            sub["status"] = json!("active");
            sub["current_period_start"] = json!(end);
            sub["current_period_end"] = json!(end + 30 * 86400);
            "customer.subscription.updated"
        };
        s.subscriptions.insert(sub_id.to_string(), sub.clone());
        fake_event(&format!("evt_fake{n}_period"), kind, now(), sub)
    }

    /// The customer pays a payment-mode session (a credit pack): a succeeded payment
    /// intent `pi_fake…` (amount per pack price, USD, the session's
    /// `payment_intent_data[metadata]`) and its charge `ch_fake…` are created and the
    /// session is complete and paid. Returns the events Stripe would send:
    /// `checkout.session.completed`, then `payment_intent.succeeded`.
    pub fn complete_payment_checkout(&self, session_id: &str) -> Vec<Value> {
        complete_payment_checkout(&mut self.state.lock().unwrap(), session_id)
    }

    /// Refunds `amount` more cents of a charge (named by its id or its payment
    /// intent's). Returns the `charge.refunded` event, whose charge carries the
    /// cumulative `amount_refunded`.
    pub fn refund(&self, charge_or_payment_intent: &str, amount: i64) -> Value {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let n = s.counter;
        let charge = s
            .charges
            .values_mut()
            .find(|c| c["id"] == charge_or_payment_intent || c["payment_intent"] == charge_or_payment_intent)
            .expect("no such charge");
        let total = charge["amount"].as_i64().unwrap();
        let refunded = (charge["amount_refunded"].as_i64().unwrap() + amount).min(total);
        charge["amount_refunded"] = json!(refunded);
        charge["refunded"] = json!(refunded == total);
        let charge = charge.clone();
        fake_event(&format!("evt_fake{n}_refund"), "charge.refunded", now(), charge)
    }

    pub fn payment_intent(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().payment_intents.get(id).cloned()
    }

    pub fn charge_of(&self, payment_intent: &str) -> Option<Value> {
        self.state.lock().unwrap().charges.values().find(|c| c["payment_intent"] == payment_intent).cloned()
    }

    /// Stripe pays an invoice of the subscription as the fake holds it: for its current
    /// period and first price, `amount_paid` cents (0 for a trial's first invoice).
    /// The invoice is kept (GET /v1/invoices/{id}); returns the `invoice.paid` event.
    pub fn invoice_paid(&self, sub_id: &str, amount_paid: i64, billing_reason: &str) -> Value {
        let sub = self.subscription(sub_id).expect("no such subscription");
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let n = s.counter;
        let inv = invoice(
            &format!("in_fake{n}"),
            sub["customer"].as_str().unwrap(),
            sub_id,
            sub["current_period_start"].as_i64().expect("a subscription with current_period_start"),
            sub["current_period_end"].as_i64().unwrap(),
            sub["items"]["data"][0]["price"]["id"].as_str().unwrap(),
            amount_paid,
            billing_reason,
        );
        s.invoices.insert(format!("in_fake{n}"), inv.clone());
        fake_event(&format!("evt_fake{n}_invpaid"), "invoice.paid", now(), inv)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn set_hanging(&self, id: &str, hanging: bool) {
        let mut s = self.state.lock().unwrap();
        if hanging {
            s.hanging.insert(id.to_string());
        } else {
            s.hanging.remove(id);
        }
    }

    pub fn put_subscription(&self, sub: Value) {
        let id = sub["id"].as_str().unwrap().to_string();
        self.state.lock().unwrap().subscriptions.insert(id, sub);
    }

    pub fn put_customer(&self, customer: Value) {
        let id = customer["id"].as_str().unwrap().to_string();
        self.state.lock().unwrap().customers.insert(id, customer);
    }

    pub fn add_undelivered(&self, event: Value) {
        self.state.lock().unwrap().undelivered.push(event);
    }

    pub fn set_failing(&self, id: &str, failing: bool) {
        let mut s = self.state.lock().unwrap();
        if failing {
            s.failing.insert(id.to_string());
        } else {
            s.failing.remove(id);
        }
    }

    /// Stripe's outage: while on, every subscription read answers 500.
    pub fn set_subscriptions_down(&self, down: bool) {
        self.state.lock().unwrap().subscriptions_down = down;
    }

    /// Requests whose path or query mentions `needle` (e.g. a subscription id).
    pub fn requests_about(&self, needle: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path.contains(needle) || r.query.contains(needle) || r.body.contains(needle))
            .cloned()
            .collect()
    }
}

fn handle(state: &Arc<Mutex<FakeState>>, r: &Recorded) -> (u16, Value) {
    let any_key = state.lock().unwrap().any_key;
    let key_ok = match r.header("Authorization") {
        Some(h) if any_key => h.starts_with("Bearer sk_"),
        h => h == Some(&format!("Bearer {SECRET_KEY}")),
    };
    if !key_ok {
        return error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key provided");
    }
    if r.method == "POST" {
        let mut s = state.lock().unwrap();
        if let Some(slot) = s.fail_posts.iter_mut().find(|(frag, n)| *n > 0 && r.path.contains(frag.as_str())) {
            slot.1 -= 1;
            return error(500, "api_error", "", "injected failure");
        }
        if s.failing.iter().any(|id| r.path.contains(id.as_str())) {
            return error(500, "api_error", "", "injected failure");
        }
        let key = r.header("Idempotency-Key").map(str::to_string);
        let request = format!("{} {}", r.path, r.body);
        let answer = match key.as_ref().and_then(|k| s.idempotent.get(k)) {
            Some((seen, replayed)) if *seen == request => replayed.clone(),
            Some(_) => error(
                400,
                "idempotency_error",
                "",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            ),
            None => {
                let answer = handle_post(&mut s, r);
                if let Some(k) = key {
                    if answer.0 < 500 {
                        s.idempotent.insert(k, (request, answer.clone()));
                    }
                }
                answer
            }
        };
        let about = |frag: &str| r.path.contains(frag) || r.body.contains(frag);
        if let Some(slot) = s.lose_answers.iter_mut().find(|(frag, n)| *n > 0 && about(frag.as_str())) {
            slot.1 -= 1;
            return error(500, "api_error", "", "injected: done, answer lost");
        }
        return answer;
    }
    if r.method == "DELETE" {
        return handle_delete(&mut state.lock().unwrap(), r);
    }
    handle_get(state, r)
}

fn complete_checkout(s: &mut FakeState, session_id: &str) -> Vec<Value> {
    let session = s.checkout_sessions.get(session_id).cloned().expect("no such session");
    s.counter += 1;
    let n = s.counter;
    let t = now();
    let sub_id = format!("sub_fake{n}");
    let trial_days = session["trial_period_days"].as_i64().unwrap_or(0);
    let trial_end = (trial_days > 0).then(|| t + trial_days * 86400);
    let sub = json!({
        "id": sub_id, "object": "subscription", "customer": session["customer"],
        "status": if trial_end.is_some() { "trialing" } else { "active" },
        "created": t, "current_period_start": t, "current_period_end": trial_end.unwrap_or(t + 30 * 86400),
        "cancel_at_period_end": false, "cancel_at": null, "trial_end": trial_end, "schedule": null,
        "metadata": {"user_id": session["subscription_user_id"]},
        "items": {"object": "list", "data": [{"id": format!("si_fake{n}"), "price": {"id": session["price"]}}]}
    });
    s.subscriptions.insert(sub_id.clone(), sub.clone());
    let mut completed = session.clone();
    completed["subscription"] = json!(sub_id);
    completed["payment_status"] = json!("paid");
    completed["status"] = json!("complete");
    s.checkout_sessions.insert(session_id.to_string(), completed.clone());
    vec![
        fake_event(&format!("evt_fake{n}_a"), "checkout.session.completed", t, completed),
        fake_event(&format!("evt_fake{n}_b"), "customer.subscription.created", t, sub),
    ]
}

/// What a pack price costs at the fake (cents).
pub fn pack_amount(price: Option<&str>) -> i64 {
    match price {
        Some(PRICE_PACK_SMALL) => PACK_SMALL_AMOUNT,
        Some(PRICE_PACK_LARGE) => PACK_LARGE_AMOUNT,
        _ => 1000,
    }
}

/// A paid invoice as Stripe's API (2024-06-20) sends it in `invoice.paid`: one line for
/// the subscription's price over `[start, end)`.
#[allow(clippy::too_many_arguments)]
pub fn invoice(
    id: &str,
    customer: &str,
    subscription: &str,
    start: i64,
    end: i64,
    price: &str,
    amount_paid: i64,
    billing_reason: &str,
) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": customer, "subscription": subscription,
        "status": "paid", "paid": true, "amount_due": amount_paid, "amount_paid": amount_paid, "currency": "usd",
        "billing_reason": billing_reason, "period_start": start, "period_end": end,
        "lines": {"object": "list", "data": [{
            "id": format!("il_{id}"), "object": "line_item", "type": "subscription", "subscription": subscription,
            "amount": amount_paid, "period": {"start": start, "end": end}, "price": {"id": price}
        }]}
    })
}

fn complete_payment_checkout(s: &mut FakeState, session_id: &str) -> Vec<Value> {
    let session = s.checkout_sessions.get(session_id).cloned().expect("no such session");
    assert_eq!(session["mode"], "payment", "not a payment-mode session: {session}");
    s.counter += 1;
    let n = s.counter;
    let t = now();
    let amount = pack_amount(session["price"].as_str());
    let metadata = match &session["payment_intent_data"]["metadata"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let (pi_id, ch_id) = (format!("pi_fake{n}"), format!("ch_fake{n}"));
    let charge = json!({
        "id": ch_id, "object": "charge", "payment_intent": pi_id, "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "refunded": false, "captured": true, "paid": true, "status": "succeeded",
        "currency": "usd", "customer": session["customer"], "metadata": metadata, "created": t
    });
    let pi = json!({
        "id": pi_id, "object": "payment_intent", "amount": amount, "amount_received": amount, "currency": "usd",
        "customer": session["customer"], "status": "succeeded", "metadata": metadata, "latest_charge": ch_id,
        "created": t
    });
    s.charges.insert(ch_id, charge);
    s.payment_intents.insert(pi_id.clone(), pi.clone());
    let mut completed = session.clone();
    completed["status"] = json!("complete");
    completed["payment_status"] = json!("paid");
    completed["payment_intent"] = json!(pi_id);
    completed["amount_total"] = json!(amount);
    completed["currency"] = json!("usd");
    s.checkout_sessions.insert(session_id.to_string(), completed.clone());
    vec![
        fake_event(&format!("evt_fake{n}_cs"), "checkout.session.completed", t, completed),
        fake_event(&format!("evt_fake{n}_pi"), "payment_intent.succeeded", t, pi),
    ]
}

fn delete_customer(s: &mut FakeState, id: &str) {
    s.customers.insert(id.to_string(), json!({"id": id, "object": "customer", "deleted": true, "metadata": s.customers.get(id).map(|c| c["metadata"].clone()).unwrap_or(Value::Null)}));
    for sub in s.subscriptions.values_mut().filter(|v| v["customer"] == id) {
        sub["status"] = json!("canceled");
    }
}

fn live_customer(s: &FakeState, id: &str) -> bool {
    s.customers.get(id).is_some_and(|c| c["deleted"] != true)
}

fn handle_delete(s: &mut FakeState, r: &Recorded) -> (u16, Value) {
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "subscriptions", id] => match s.subscriptions.get_mut(*id) {
            Some(sub) if sub["status"] != "canceled" => {
                sub["status"] = json!("canceled");
                sub["ended_at"] = json!(now());
                (200, sub.clone())
            }
            Some(_) => error(400, "invalid_request_error", "", "This subscription is already canceled"),
            None => error(404, "invalid_request_error", "resource_missing", "No such subscription"),
        },
        _ => error(404, "invalid_request_error", "", &format!("Unrecognized request URL (DELETE {})", r.path)),
    }
}

fn form(r: &Recorded) -> Vec<(String, String)> {
    query_pairs(&r.body)
}

fn param<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn with_schedule(s: &FakeState, mut sub: Value) -> Value {
    if let Some(id) = sub["schedule"].as_str() {
        if let Some(sched) = s.schedules.get(id) {
            sub["schedule"] = sched.clone();
        }
    }
    sub
}

fn handle_post(s: &mut FakeState, r: &Recorded) -> (u16, Value) {
    let f = form(r);
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    s.counter += 1;
    let n = s.counter;
    match segs.as_slice() {
        ["v1", "customers", id] => match s.customers.get_mut(*id) {
            Some(c) if c["deleted"] != true => {
                if let Some(email) = param(&f, "email") {
                    c["email"] = json!(email);
                }
                (200, c.clone())
            }
            _ => error(404, "invalid_request_error", "resource_missing", "No such customer"),
        },
        ["v1", "customers"] => {
            let id = format!("cus_fake{n}");
            let c = json!({"id": id, "object": "customer", "email": param(&f, "email"),
                           "metadata": {"user_id": param(&f, "metadata[user_id]")}});
            s.customers.insert(id, c.clone());
            (200, c)
        }
        ["v1", "checkout", "sessions"] => {
            let Some(customer) = param(&f, "customer").filter(|c| live_customer(s, c)) else {
                return error(400, "invalid_request_error", "resource_missing", "No such customer");
            };
            let id = format!("cs_fake{n}");
            let session = json!({
                "id": id, "object": "checkout.session",
                "url": format!("{}/c/pay/{id}", s.public_base.as_deref().unwrap_or("https://checkout.stripe.test")),
                "mode": param(&f, "mode"), "customer": customer, "client_reference_id": param(&f, "client_reference_id"),
                "price": param(&f, "line_items[0][price]"),
                "trial_period_days": param(&f, "subscription_data[trial_period_days]").and_then(|d| d.parse::<i64>().ok()),
                "status": "open",
                "metadata": f.iter().filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_string(), json!(v)))).collect::<serde_json::Map<String, Value>>(),
                "subscription_user_id": param(&f, "subscription_data[metadata][user_id]"),
                "payment_intent_data": {"metadata": f.iter().filter_map(|(k, v)| Some((k.strip_prefix("payment_intent_data[metadata][")?.strip_suffix(']')?.to_string(), json!(v)))).collect::<serde_json::Map<String, Value>>()},
                "amount_total": (param(&f, "mode") == Some("payment")).then(|| pack_amount(param(&f, "line_items[0][price]"))),
                "currency": (param(&f, "mode") == Some("payment")).then_some("usd"),
                "payment_intent": null, "payment_status": "unpaid",
                "success_url": param(&f, "success_url"), "cancel_url": param(&f, "cancel_url"),
            });
            s.checkout_sessions.insert(id, session.clone());
            (200, session)
        }
        ["v1", "checkout", "sessions", id, "expire"] if s.pay_before_expire.remove(*id) => {
            complete_checkout(s, id);
            error(400, "invalid_request_error", "", "Only open sessions can be expired")
        }
        ["v1", "checkout", "sessions", id, "expire"] => match s.checkout_sessions.get_mut(*id) {
            Some(session) if session["status"] == "open" => {
                session["status"] = json!("expired");
                (200, session.clone())
            }
            Some(_) => error(400, "invalid_request_error", "", "Only open sessions can be expired"),
            None => error(404, "invalid_request_error", "resource_missing", "No such checkout session"),
        },
        ["v1", "billing_portal", "sessions"] => match param(&f, "customer") {
            Some(c) if live_customer(s, c) => {
                let id = format!("bps_fake{n}");
                let base = s.public_base.as_deref().unwrap_or("https://billing.stripe.test");
                let session = json!({"id": id, "url": format!("{base}/p/session/{id}"), "customer": c,
                                     "return_url": param(&f, "return_url")});
                s.portal_sessions.insert(id, session.clone());
                (200, session)
            }
            _ => error(400, "invalid_request_error", "resource_missing", "No such customer"),
        },
        ["v1", "subscriptions", id] => {
            let Some(mut sub) = s.subscriptions.get(*id).cloned() else {
                return error(404, "invalid_request_error", "resource_missing", "No such subscription");
            };
            if let (Some(item), Some(price)) = (param(&f, "items[0][id]"), param(&f, "items[0][price]")) {
                let items = sub["items"]["data"].as_array_mut().unwrap();
                let Some(it) = items.iter_mut().find(|i| i["id"] == item) else {
                    return error(400, "invalid_request_error", "resource_missing", "No such subscription item");
                };
                it["price"] = json!({"id": price});
            }
            if param(&f, "trial_end") == Some("now") {
                sub["trial_end"] = json!(now());
                if sub["status"] == "trialing" {
                    sub["status"] = json!("active");
                }
            }
            if let Some(flag) = param(&f, "cancel_at_period_end") {
                sub["cancel_at_period_end"] = json!(flag == "true");
            }
            s.subscriptions.insert(id.to_string(), sub.clone());
            (200, with_schedule(s, sub))
        }
        ["v1", "subscription_schedules"] => {
            let Some(sub_id) = param(&f, "from_subscription") else {
                return error(400, "invalid_request_error", "parameter_missing", "from_subscription required");
            };
            let Some(sub) = s.subscriptions.get(sub_id).cloned() else {
                return error(404, "invalid_request_error", "resource_missing", "No such subscription");
            };
            if sub["schedule"].is_string() {
                return error(400, "invalid_request_error", "", "subscription already has a schedule");
            }
            let id = format!("sub_sched_fake{n}");
            let price = sub["items"]["data"][0]["price"]["id"].clone();
            let sched = json!({"id": id, "object": "subscription_schedule", "subscription": sub_id, "end_behavior": "release",
                "status": "active",
                "phases": [{"start_date": sub["created"], "end_date": sub["current_period_end"], "items": [{"price": price, "quantity": 1}]}]});
            s.schedules.insert(id.clone(), sched.clone());
            let mut sub = sub;
            sub["schedule"] = json!(id);
            s.subscriptions.insert(sub_id.to_string(), sub);
            (200, sched)
        }
        ["v1", "subscription_schedules", id] => {
            let Some(mut sched) = s.schedules.get(*id).cloned() else {
                return error(404, "invalid_request_error", "resource_missing", "No such schedule");
            };
            let mut phases = Vec::new();
            for i in 0..10 {
                let Some(price) = param(&f, &format!("phases[{i}][items][0][price]")) else { break };
                let num = |k: &str| param(&f, &format!("phases[{i}][{k}]")).and_then(|v| v.parse::<i64>().ok());
                phases.push(json!({"start_date": num("start_date"), "end_date": num("end_date"), "items": [{"price": price, "quantity": 1}]}));
            }
            // Contiguous phases: a phase without start_date starts when the previous ends.
            for i in 1..phases.len() {
                if phases[i]["start_date"].is_null() {
                    phases[i]["start_date"] = phases[i - 1]["end_date"].clone();
                }
            }
            if !phases.is_empty() {
                sched["phases"] = json!(phases);
            }
            if let Some(b) = param(&f, "end_behavior") {
                sched["end_behavior"] = json!(b);
            }
            s.schedules.insert(id.to_string(), sched.clone());
            (200, sched)
        }
        ["v1", "subscription_schedules", id, "release"] => {
            let Some(mut sched) = s.schedules.get(*id).cloned() else {
                return error(404, "invalid_request_error", "resource_missing", "No such schedule");
            };
            sched["status"] = json!("released");
            if let Some(sub_id) = sched["subscription"].as_str() {
                if let Some(sub) = s.subscriptions.get_mut(sub_id) {
                    sub["schedule"] = Value::Null;
                }
            }
            s.schedules.remove(*id);
            (200, sched)
        }
        _ => error(404, "invalid_request_error", "", &format!("Unrecognized request URL (POST {})", r.path)),
    }
}

fn handle_get(state: &Arc<Mutex<FakeState>>, r: &Recorded) -> (u16, Value) {
    let params = query_pairs(&r.query);
    let mut s = state.lock().unwrap();
    if r.path == "/v1/checkout/sessions" && !s.pay_before_listing.is_empty() {
        // Only the listing of that session's own customer: tests share one fake, and
        // another test's listing must not pay this session before the action under test runs.
        let listed = params.iter().find(|(k, _)| k == "customer").map(|(_, v)| v.clone());
        let due: Vec<String> = s
            .pay_before_listing
            .iter()
            .filter(|id| s.checkout_sessions.get(*id).and_then(|x| x["customer"].as_str()) == listed.as_deref())
            .cloned()
            .collect();
        for id in due {
            s.pay_before_listing.remove(&id);
            complete_checkout(&mut s, &id);
        }
    }
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    if s.subscriptions_down && segs.get(1) == Some(&"subscriptions") {
        return error(500, "api_error", "", "injected outage");
    }
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "subscriptions", id]) => {
            if s.failing.contains(*id) {
                return error(500, "api_error", "", "injected failure");
            }
            match s.subscriptions.get(*id) {
                Some(v) => (200, with_schedule(&s, v.clone())),
                None => error(404, "invalid_request_error", "resource_missing", "No such subscription"),
            }
        }
        ("GET", ["v1", "subscriptions"]) => {
            let customer = params.iter().find(|(k, _)| k == "customer").map(|(_, v)| v.clone());
            if customer.as_ref().is_some_and(|c| s.failing.contains(c)) {
                return error(500, "api_error", "", "injected failure");
            }
            let items: Vec<Value> = s
                .subscriptions
                .values()
                .filter(|v| customer.as_ref().is_none_or(|c| v["customer"] == c.as_str()))
                .map(|v| with_schedule(&s, v.clone()))
                .collect();
            (200, list(items, &params))
        }
        ("GET", ["v1", "checkout", "sessions"]) => {
            let customer = params.iter().find(|(k, _)| k == "customer").map(|(_, v)| v.clone());
            let status = params.iter().find(|(k, _)| k == "status").map(|(_, v)| v.clone());
            let items: Vec<Value> = s
                .checkout_sessions
                .values()
                .filter(|v| customer.as_ref().is_none_or(|c| v["customer"] == c.as_str()))
                .filter(|v| status.as_ref().is_none_or(|st| v["status"] == st.as_str()))
                .cloned()
                .collect();
            (200, list(items, &params))
        }
        ("GET", ["v1", "checkout", "sessions", id]) => match s.checkout_sessions.get(*id) {
            Some(v) => (200, v.clone()),
            None => error(404, "invalid_request_error", "resource_missing", "No such checkout session"),
        },
        ("GET", ["v1", "payment_intents", id]) => match s.payment_intents.get(*id) {
            Some(v) => (200, v.clone()),
            None => error(404, "invalid_request_error", "resource_missing", "No such payment_intent"),
        },
        ("GET", ["v1", "charges", id]) => match s.charges.get(*id) {
            Some(v) => (200, v.clone()),
            None => error(404, "invalid_request_error", "resource_missing", "No such charge"),
        },
        ("GET", ["v1", "invoices", id]) => match s.invoices.get(*id) {
            Some(v) => (200, v.clone()),
            None => error(404, "invalid_request_error", "resource_missing", "No such invoice"),
        },
        ("GET", ["v1", "customers", id]) => {
            if s.failing.contains(*id) {
                return error(500, "api_error", "", "injected failure");
            }
            match s.customers.get(*id) {
                Some(v) => (200, v.clone()),
                None => error(404, "invalid_request_error", "resource_missing", "No such customer"),
            }
        }
        ("GET", ["v1", "events"]) => {
            let gte =
                params.iter().find(|(k, _)| k == "created[gte]").and_then(|(_, v)| v.parse::<i64>().ok()).unwrap_or(0);
            let mut items: Vec<Value> =
                s.undelivered.iter().filter(|e| e["created"].as_i64().unwrap_or(0) >= gte).cloned().collect();
            items.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64().unwrap_or(0)));
            (200, list(items, &params))
        }
        _ => error(404, "invalid_request_error", "", &format!("Unrecognized request URL ({} {})", r.method, r.path)),
    }
}

//! POST /api/stripe-webhook against a real wrangler dev and the Stripe fake.

use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use crate::fixtures::*;
use crate::support::stripe_fake::StripeFake;
use crate::support::{agent, now, send, unique, App};
use crate::{
    broken, cron_app, error_code, shared, ADMIN_TOKEN, PRICE_ESSENTIAL, PRICE_PREMIUM, PRICE_PRO, WEBHOOK_SECRET,
    WEBHOOK_SECRET_OLD,
};

#[test]
fn checkout_then_subscription_events_put_the_user_on_the_paid_plan() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "checkout");
    let row = user_row(&s.app, &c.user_id);
    assert_eq!(row["plan"], "essential");
    assert_eq!(row["subscription_status"], "active");
    assert_eq!(row["stripe_customer_id"], c.customer.as_str());
    assert_eq!(row["stripe_subscription_id"], c.subscription.as_str());
    let audit = s.app.sql(&format!("SELECT * FROM plan_changes WHERE user_id = '{}'", c.user_id));
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["old_plan"], "free");
    assert_eq!(audit[0]["new_plan"], "essential");
    assert_eq!(audit[0]["cause"], format!("webhook:evt_co_{}", c.subscription));
    // Every request to the fake carried the pinned version and the secret key.
    for r in s.stripe.requests_about(&c.subscription) {
        assert_eq!(r.header("Stripe-Version"), Some("2024-06-20"));
    }
    let me = crate::support::get(&s.app.url("/api/plan/me"), Some(&crate::support::token(&c.auth_id))).json();
    assert_eq!(me["plan"], "essential");
    assert_eq!(me["subscriptionStatus"], "active");
}

#[test]
fn a_delivery_signed_with_the_previous_secret_is_accepted_during_rotation() {
    let s = shared();
    let c = new_customer(&s.app, "rotation");
    s.stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    let ev = event(
        &format!("evt_rot_{}", c.subscription),
        "customer.subscription.created",
        now(),
        subscription(&c, "active", PRICE_PRO),
    );
    let body = ev.to_string();
    let r = post_webhook(&s.app, body.as_bytes(), Some(&sign(body.as_bytes(), WEBHOOK_SECRET_OLD)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user_row(&s.app, &c.user_id)["plan"], "pro");
}

#[test]
fn bad_signatures_get_400_and_write_nothing() {
    let s = shared();
    let id = format!("evt_{}", unique("badsig").replace('-', ""));
    let body = event(&id, "customer.subscription.updated", now(), json!({"id": "sub_x", "object": "subscription"}))
        .to_string();
    let b = body.as_bytes();
    let stale = plangate::stripe::signature::sign_for_test(b, WEBHOOK_SECRET, now() - 301);
    let good = sign(b, WEBHOOK_SECRET);
    let v0 = good.replace("v1=", "v0=");
    let cases: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("bad_header".into()),
        Some("t=".into()),
        Some("v1,t=1".into()),
        Some(v0),
        Some(sign(b, "whsec_someone_else")),
        Some(stale),
    ];
    for sig in cases {
        let r = post_webhook(&s.app, b, sig.as_deref());
        assert_eq!(r.status, 400, "{sig:?}: {}", r.body);
        assert_eq!(error_code(&r.json()), "INVALID_SIGNATURE", "{sig:?}");
    }
    // A valid signature over a different body.
    let r = post_webhook(&s.app, body.replace("updated", "deleted").as_bytes(), Some(&good));
    assert_eq!(r.status, 400);
    assert!(event_row(&s.app, &id).is_none());
}

#[test]
fn a_valid_signature_over_invalid_json_is_invalid_payload_after_verification() {
    let s = shared();
    for body in ["{not json", "[]", r#"{"id":"evt_1","type":"x","created":"soon","data":{"object":{}}}"#] {
        let r = post_webhook(&s.app, body.as_bytes(), Some(&sign(body.as_bytes(), WEBHOOK_SECRET)));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(error_code(&r.json()), "INVALID_PAYLOAD");
    }
    // Unsigned garbage is refused on the signature first.
    let r = post_webhook(&s.app, b"{not json", None);
    assert_eq!(error_code(&r.json()), "INVALID_SIGNATURE");
}

#[test]
fn an_endpoint_without_a_secret_refuses_every_delivery() {
    let app = broken(); // no STRIPE_WEBHOOK_SECRET
    let body = event("evt_unconfigured", "customer.subscription.updated", now(), json!({})).to_string();
    let r = post_webhook(app, body.as_bytes(), Some(&sign(body.as_bytes(), WEBHOOK_SECRET)));
    assert_eq!(r.status, 500);
    assert_eq!(error_code(&r.json()), "WEBHOOK_NOT_CONFIGURED");
}

#[test]
fn unknown_event_types_are_recorded_and_acknowledged() {
    let s = shared();
    let id = format!("evt_{}", unique("unknown").replace('-', ""));
    let r = deliver(&s.app, &event(&id, "product.created", now(), json!({"id": "prod_1", "object": "product"})));
    assert_eq!(r.status, 200, "{}", r.body);
    let row = event_row(&s.app, &id).expect("recorded");
    assert_eq!(row["status"], "processed");
    assert_eq!(row["type"], "product.created");
    assert_eq!(r.header("X-D1-Round-Trips"), Some("1"), "recorded in one statement");
    let again = deliver(&s.app, &event(&id, "product.created", now(), json!({"id": "prod_1", "object": "product"})));
    assert_eq!((again.status, again.json()["status"].as_str()), (200, Some("duplicate")), "{}", again.body);
    assert_eq!(again.header("X-D1-Round-Trips"), Some("1"), "a duplicate answered from the same statement");
}

#[test]
fn a_subscription_event_costs_two_d1_round_trips_and_its_duplicate_one() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "roundtrips");
    s.stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    let ev = event(
        &format!("evt_rt_{}", c.subscription),
        "customer.subscription.updated",
        now(),
        subscription(&c, "active", PRICE_PRO),
    );
    // The claim, the row's status and the customer's user in one batch; the effects,
    // audit and processed mark in a second. KV is written after the response.
    let r = deliver(&s.app, &ev);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("X-D1-Round-Trips"), Some("2"), "claim batch + effects batch");
    assert_eq!(user_row(&s.app, &c.user_id)["plan"], "pro");
    let again = deliver(&s.app, &ev);
    assert_eq!((again.status, again.json()["status"].as_str()), (200, Some("duplicate")), "{}", again.body);
    assert_eq!(again.header("X-D1-Round-Trips"), Some("1"), "a duplicate is answered from the claim batch");
    // Nothing changed at Stripe: still two, and nothing about the plan moves.
    let same = event(
        &format!("evt_rt2_{}", c.subscription),
        "customer.subscription.updated",
        now(),
        subscription(&c, "active", PRICE_PRO),
    );
    let r = deliver(&s.app, &same);
    assert_eq!((r.status, r.header("X-D1-Round-Trips")), (200, Some("2")), "{}", r.body);
    let audit = s.app.sql(&format!("SELECT new_plan FROM plan_changes WHERE user_id = '{}'", c.user_id));
    assert_eq!(audit.len(), 2, "essential, then pro: {audit:?}");
}

#[test]
fn the_same_event_delivered_fifty_times_at_once_has_one_effect() {
    let s = shared();
    let c = new_customer(&s.app, "fifty");
    s.stripe.put_subscription(subscription(&c, "active", PRICE_PREMIUM));
    let id = format!("evt_50_{}", c.subscription);
    let body =
        event(&id, "customer.subscription.created", now(), subscription(&c, "active", PRICE_PREMIUM)).to_string();
    let signature = sign(body.as_bytes(), WEBHOOK_SECRET);
    let barrier = Arc::new(Barrier::new(50));
    let url = s.app.url("/api/stripe-webhook");
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (body, signature, barrier, url) = (body.clone(), signature.clone(), barrier.clone(), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                send(&agent(), "POST", &url, &[("Stripe-Signature", &signature)], Some(body.as_bytes()))
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for a in &answers {
        assert!((200..300).contains(&a.status), "{} {}", a.status, a.body);
    }
    let processed = answers.iter().filter(|a| a.json()["status"] == "processed").count();
    assert_eq!(processed, 1, "exactly one delivery did the work");
    let row = event_row(&s.app, &id).unwrap();
    assert_eq!(row["status"], "processed");
    assert_eq!(row["attempts"], 1);
    let audit = s.app.count(&format!("SELECT count(*) FROM plan_changes WHERE cause = 'webhook:{id}'"));
    assert_eq!(audit, 1);
    assert_eq!(s.stripe.requests_about(&format!("/v1/subscriptions/{}", c.subscription)).len(), 1, "one re-fetch");
    assert_eq!(user_row(&s.app, &c.user_id)["plan"], "premium");
}

/// A tiny deterministic PRNG (xorshift) so failures can be replayed from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The 12 events of one subscription's life: checkout → trial → active → upgrade →
/// past_due → paid → cancel at period end → deleted. Returns the events and the
/// subscription as Stripe holds it at the end.
fn lifecycle(c: &Customer, t0: i64) -> (Vec<Value>, Value) {
    let period_end = t0 + 30 * 86400;
    let base = |status: &str, price: &str| {
        let mut s = subscription(c, status, price);
        s["created"] = json!(t0);
        s["current_period_end"] = json!(period_end);
        // Stripe keeps the trial's dates on the subscription after the trial ends.
        s["trial_start"] = json!(t0);
        s["trial_end"] = json!(t0 + 3 * 86400);
        s
    };
    let trialing = base("trialing", PRICE_ESSENTIAL);
    let active_ess = base("active", PRICE_ESSENTIAL);
    let active_pro = base("active", PRICE_PRO);
    let past_due = base("past_due", PRICE_PRO);
    let mut cancelling = base("active", PRICE_PRO);
    cancelling["cancel_at_period_end"] = json!(true);
    let mut canceled = base("canceled", PRICE_PRO);
    canceled["cancel_at_period_end"] = json!(true);
    canceled["ended_at"] = json!(t0 + 110);
    let invoice = |n: i64| json!({"id": format!("in_{}_{n}", c.subscription), "object": "invoice", "customer": c.customer, "subscription": c.subscription});
    let id = |n: usize| format!("evt_{}_{n:02}", c.subscription);
    let events = vec![
        event(&id(1), "checkout.session.completed", t0, checkout_completed(c)),
        event(&id(2), "customer.subscription.created", t0, trialing.clone()),
        event(&id(3), "invoice.paid", t0 + 1, invoice(1)),
        event(&id(4), "customer.subscription.trial_will_end", t0 + 10, trialing),
        event(&id(5), "customer.subscription.updated", t0 + 20, active_ess),
        event(&id(6), "invoice.paid", t0 + 21, invoice(2)),
        event(&id(7), "customer.subscription.updated", t0 + 40, active_pro),
        event(&id(8), "invoice.payment_failed", t0 + 60, invoice(3)),
        event(&id(9), "customer.subscription.updated", t0 + 61, past_due),
        event(&id(10), "invoice.paid", t0 + 80, invoice(4)),
        event(&id(11), "customer.subscription.updated", t0 + 90, cancelling),
        event(&id(12), "customer.subscription.deleted", t0 + 110, canceled.clone()),
    ];
    (events, canceled)
}

fn assert_matches_final(app: &crate::support::App, c: &Customer, ctx: &str) {
    let row = user_row(app, &c.user_id);
    assert_eq!(row["plan"], "free", "{ctx}: {row}");
    assert_eq!(row["subscription_status"], "canceled", "{ctx}: {row}");
    assert_eq!(row["stripe_subscription_id"], c.subscription.as_str(), "{ctx}");
    assert_eq!(row["stripe_customer_id"], c.customer.as_str(), "{ctx}");
    for col in ["cancel_at", "current_period_end", "trial_ends_at", "scheduled_plan", "scheduled_at"] {
        assert!(row[col].is_null(), "{ctx}: {col} = {}", row[col]);
    }
    assert_eq!(row["trial_used"], 1, "{ctx}");
}

/// The order and duplicates of one run: a shuffled copy of the 12 events with 4 of
/// them repeated at random places.
fn shuffled(events: &[Value], rng: &mut Rng) -> Vec<Value> {
    let mut order: Vec<Value> = events.to_vec();
    for _ in 0..4 {
        let dup = order[rng.below(order.len())].clone();
        order.push(dup);
    }
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

#[test]
fn a_lifecycle_delivered_in_thirty_random_orders_with_duplicates_always_ends_as_stripe_says() {
    let s = shared();
    let threads: Vec<_> = (0..3)
        .map(|worker| {
            std::thread::spawn(move || {
                let s = shared();
                for run in 0..10 {
                    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((worker * 10 + run) as u64 + 1);
                    let mut rng = Rng(seed);
                    let c = new_customer(&s.app, "lifecycle");
                    let (events, final_sub) = lifecycle(&c, now() - 500);
                    s.stripe.put_subscription(final_sub);
                    for ev in shuffled(&events, &mut rng) {
                        let r = deliver(&s.app, &ev);
                        assert_eq!(r.status, 200, "seed {seed:#x} {}: {}", ev["id"], r.body);
                    }
                    assert_matches_final(&s.app, &c, &format!("seed {seed:#x}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = s;
}

#[test]
fn with_stripe_unreachable_payloads_apply_only_when_newer_and_retries_confirm_later() {
    // Stripe answers 500 for this subscription: every subscription event falls back to
    // its payload under the order guard, answers 500 and stays failed. A stale
    // `updated` delivered after `deleted` must not resurrect the plan.
    let _serial = crate::cron_serial();
    let app = cron_app();
    let stripe = &shared().stripe;
    for run in 0..3u64 {
        let seed = 0xD1B5_4A32_D192_ED03 ^ (run + 1);
        let mut rng = Rng(seed);
        let c = new_customer(app, "stripe-down");
        let (events, final_sub) = lifecycle(&c, now() - 500);
        stripe.put_subscription(final_sub);
        stripe.set_failing(&c.subscription, true);
        let mut order = shuffled(&events, &mut rng);
        // Make sure a stale update comes after the deletion at least once. A re-delivery
        // of an event that already failed is not tried again inside its backoff window
        // (503), so the stale update is an event of its own.
        let mut stale = events[10].clone();
        stale["id"] = json!(format!("evt_{}_11b", c.subscription));
        order.push(stale);
        for ev in &order {
            let r = deliver(app, ev);
            assert!([200, 500, 503].contains(&r.status), "seed {seed:#x}: {} {}", r.status, r.body);
            if r.status == 500 {
                assert_eq!(error_code(&r.json()), "WEBHOOK_FAILED");
                assert!(!r.body.contains(&c.subscription), "no internals in the answer");
            }
            if r.status == 503 {
                assert_eq!(error_code(&r.json()), "WEBHOOK_RETRY_LATER", "only a re-delivery waits");
            }
        }
        let row = user_row(app, &c.user_id);
        assert_eq!(row["plan"], "free", "seed {seed:#x}: {row}");
        assert_eq!(row["subscription_status"], "canceled", "seed {seed:#x}: {row}");
        let failed = app.count(&format!(
            "SELECT count(*) FROM webhook_events WHERE id LIKE 'evt_{}_%' AND status = 'failed'",
            c.subscription
        ));
        assert!(failed >= 7, "seed {seed:#x}: subscription-bearing events stay failed, got {failed}");
        // Stripe recovers; the cron (run a few minutes later, past the backoff) retries.
        stripe.set_failing(&c.subscription, false);
        run_cron(app, Some(now() + 600));
        let left = app.count(&format!(
            "SELECT count(*) FROM webhook_events WHERE id LIKE 'evt_{}_%' AND status != 'processed'",
            c.subscription
        ));
        assert_eq!(left, 0, "seed {seed:#x}: every event processed after the retry");
        assert_matches_final(app, &c, &format!("seed {seed:#x} after retry"));
    }
}

#[test]
fn a_failed_handler_answers_500_keeps_the_event_and_the_cron_retry_succeeds() {
    let _serial = crate::cron_serial();
    let app = cron_app();
    let stripe = &shared().stripe;
    let c = new_customer(app, "retry");
    stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    stripe.set_failing(&c.subscription, true);
    let id = format!("evt_retry_{}", c.subscription);
    // An invoice carries no subscription state: nothing to fall back to.
    let invoice = json!({"id": "in_1", "object": "invoice", "customer": c.customer,
                         "parent": {"subscription_details": {"subscription": c.subscription}}});
    // Link the customer first (checkout of a payment carries the customer and user).
    let r = deliver(app, &event(&id, "invoice.paid", now(), invoice));
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(error_code(&r.json()), "WEBHOOK_FAILED");
    let row = event_row(app, &id).unwrap();
    assert_eq!(row["status"], "failed");
    assert_eq!(row["attempts"], 1);
    assert!(row["last_error"].as_str().unwrap().contains("500"), "{row}");
    assert!(row["payload"].as_str().unwrap().contains(&c.subscription));
    // A cron run before the backoff has passed leaves it alone…
    run_cron(app, Some(now()));
    assert_eq!(event_row(app, &id).unwrap()["status"], "failed");
    // …Stripe recovers, and the run after the backoff processes it.
    stripe.set_failing(&c.subscription, false);
    run_cron(app, Some(now() + 120));
    let row = event_row(app, &id).unwrap();
    assert_eq!(row["status"], "processed", "{row}");
    assert_eq!(row["attempts"], 2);
    // The invoice named no user: the subscription's metadata.user_id links them.
    assert_eq!(user_row(app, &c.user_id)["plan"], "pro");
    // A redelivery by Stripe is now a no-op duplicate.
    let r = deliver(app, &event(&id, "invoice.paid", now(), json!({"id": "in_1", "object": "invoice"})));
    assert_eq!(r.json()["status"], "duplicate");
}

/// An app with a Stripe fake of its own, for tests that take all of Stripe down or fill
/// its Events API: the shared fake's other users must not see that.
fn isolated_app() -> (App, StripeFake) {
    let stripe = StripeFake::start();
    let app = App::spawn(crate::stripe_options(&stripe));
    (app, stripe)
}

/// `id → attempts` of every recorded event.
fn attempts_by_id(app: &App) -> std::collections::BTreeMap<String, i64> {
    app.sql("SELECT id, attempts FROM webhook_events")
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["attempts"].as_i64().unwrap()))
        .collect()
}

#[test]
fn a_thirty_minute_stripe_outage_is_survived_without_an_admin() {
    let (app, stripe) = isolated_app();
    // The outage began 15 minutes ago (simulated time `t0`): the cron runs every five
    // minutes from then, "in the past", so that Stripe's redeliveries, which reach the
    // Worker at the real time, fall into the outage.
    let real = now();
    let t0 = real - 900;
    let customers: Vec<Customer> = (0..3).map(|_| new_customer(&app, "outage")).collect();
    let mut events = Vec::new();
    for c in &customers {
        stripe.put_subscription(subscription(c, "active", PRICE_PRO));
        let invoice = json!({"id": format!("in_{}", c.subscription), "object": "invoice",
                             "customer": c.customer, "subscription": c.subscription});
        let sub = subscription(c, "active", PRICE_PRO);
        events.push(event(
            &format!("evt_oco_{}", c.subscription),
            "checkout.session.completed",
            t0,
            checkout_completed(c),
        ));
        events.push(event(&format!("evt_osc_{}", c.subscription), "customer.subscription.created", t0, sub));
        events.push(event(&format!("evt_oin_{}", c.subscription), "invoice.paid", t0, invoice));
    }
    let ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    // Stripe's API is down from t0 to t0 + 30 min; its deliveries never got through, so
    // its Events API lists the events as undelivered.
    stripe.set_subscriptions_down(true);
    for ev in &events {
        stripe.add_undelivered(ev.clone());
    }
    let no_dead = |when: &str| {
        let dead = app.count("SELECT count(*) FROM webhook_events WHERE status = 'dead'");
        assert_eq!(dead, 0, "{when}: nothing dies during a 30-minute outage");
    };
    let mut at = t0;
    let cron = |at: i64| {
        run_cron(&app, Some(at));
        no_dead(&format!("cron at t0+{}s", at - t0));
    };
    // t0: reconciliation makes the first attempt of each; t0+5 and t0+10 min: retries.
    while at < real - 60 {
        cron(at);
        at += 300;
    }
    let attempts = attempts_by_id(&app);
    for id in &ids {
        assert_eq!(attempts.get(id), Some(&3), "{id}: one attempt per cron run so far: {attempts:?}");
    }
    let rows = app.sql("SELECT id, next_attempt_at FROM webhook_events");
    assert!(rows.iter().all(|r| r["next_attempt_at"].as_i64().unwrap() <= now()), "windows open now: {rows:?}");

    // Stripe redelivers each event after its backoff window opened: a real attempt
    // (failing again: 500, Stripe retries), which opens the next, longer window…
    for ev in &events {
        let r = deliver(&app, ev);
        assert_eq!((r.status, error_code(&r.json())), (500, "WEBHOOK_FAILED"), "{}", r.body);
    }
    let after_window = attempts_by_id(&app);
    for id in &ids {
        assert_eq!(after_window[id], 4, "{id}: the redelivery was an attempt");
    }
    // …and redelivers again inside that window: 503 with Retry-After, not an attempt.
    for ev in &events {
        let r = deliver(&app, ev);
        assert_eq!((r.status, error_code(&r.json())), (503, "WEBHOOK_RETRY_LATER"), "{}", r.body);
        let wait = r.header("Retry-After").and_then(|w| w.parse::<i64>().ok());
        assert!(wait.is_some_and(|w| (200..=480).contains(&w)), "Retry-After: {:?}", r.header("Retry-After"));
    }
    assert_eq!(attempts_by_id(&app), after_window, "re-deliveries inside a window are not attempts");

    // The cron keeps running every five minutes to the end of the outage…
    while at <= t0 + 1800 {
        cron(at);
        at += 300;
    }
    for ev in &events {
        let row = event_row(&app, ev["id"].as_str().unwrap()).unwrap();
        assert_eq!(row["status"], "failed", "{row}");
        // One attempt per backoff window (1, 2, 4, 8 … minutes), not one per delivery.
        assert!(row["attempts"].as_i64().unwrap() <= 6, "{row}");
    }
    // …and after it: Stripe is back, and the next run whose window has come applies it.
    stripe.set_subscriptions_down(false);
    let done = || app.count("SELECT count(*) FROM webhook_events WHERE status != 'processed'") == 0;
    while !done() && at <= t0 + 3 * 3600 {
        cron(at);
        at += 300;
    }
    assert!(done(), "{:?}", app.sql("SELECT id, status, attempts, next_attempt_at FROM webhook_events"));
    assert!(at - 300 <= t0 + 1800 + 3600, "processed within an hour of the outage's end, at t0+{}s", at - 300 - t0);
    for ev in &events {
        let row = event_row(&app, ev["id"].as_str().unwrap()).unwrap();
        assert!(row["attempts"].as_i64().unwrap() <= 7, "{row}");
    }
    for c in &customers {
        let row = user_row(&app, &c.user_id);
        assert_eq!((row["plan"].as_str(), row["subscription_status"].as_str()), (Some("pro"), Some("active")));
        assert_eq!(row["stripe_customer_id"], c.customer.as_str());
    }
}

#[test]
fn an_event_the_cron_gave_up_on_is_processed_when_stripe_delivers_it_again() {
    let _serial = crate::cron_serial();
    let app = cron_app();
    let stripe = &shared().stripe;
    let c = subscribed(app, stripe, "dead");
    stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    stripe.set_failing(&c.subscription, true);
    let id = format!("evt_dead_{}", c.subscription);
    let invoice = json!({"id": "in_dead", "object": "invoice", "customer": c.customer, "subscription": c.subscription});
    let ev = event(&id, "invoice.paid", now(), invoice);
    let first = now();
    assert_eq!(deliver(app, &ev).status, 500);
    // The cron retries it every time it is due, as fast as it can, until it gives up.
    let mut last = first;
    for _ in 0..40 {
        let row = event_row(app, &id).unwrap();
        if row["status"] == "dead" {
            break;
        }
        assert_eq!(row["status"], "failed", "{row}");
        last = row["next_attempt_at"].as_i64().unwrap();
        run_cron(app, Some(last));
    }
    let row = event_row(app, &id).unwrap();
    assert_eq!(row["status"], "dead", "{row}");
    assert!(row["attempts"].as_i64().unwrap() >= 8, "{row}");
    assert!(last - first >= 86_400, "dead only once its retries span a day: {row}");
    assert!(row["first_failed_at"].as_i64().is_some_and(|t| (first..first + 5).contains(&t)), "{row}");

    // Stripe recovers. The cron does not take a dead event again…
    stripe.set_failing(&c.subscription, false);
    run_cron(app, Some(last + 7 * 3600));
    let after = event_row(app, &id).unwrap();
    assert_eq!((&after["status"], &after["attempts"]), (&json!("dead"), &row["attempts"]));
    // …but Stripe's own (slower) retry of it is processed, without an admin.
    let r = deliver(app, &ev);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "processed");
    assert_eq!(event_row(app, &id).unwrap()["status"], "processed");
    assert_eq!(user_row(app, &c.user_id)["plan"], "pro");
}

#[test]
fn a_cron_run_scheduled_a_day_ahead_does_not_block_later_updates_from_stripe() {
    let _serial = crate::cron_serial();
    let app = cron_app();
    let stripe = &shared().stripe;
    let c = subscribed(app, stripe, "future-cron");
    stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    stripe.set_failing(&c.subscription, true);
    let invoice =
        json!({"id": "in_future", "object": "invoice", "customer": c.customer, "subscription": c.subscription});
    let id = format!("evt_future_{}", c.subscription);
    assert_eq!(deliver(app, &event(&id, "invoice.paid", now(), invoice)).status, 500);
    stripe.set_failing(&c.subscription, false);
    // A cron run fired "a day later" retries it: the state is stored as of the time
    // Stripe's answer arrived, not as of the run's scheduled time.
    run_cron(app, Some(now() + 86_400));
    assert_eq!(event_row(app, &id).unwrap()["status"], "processed");
    let row = user_row(app, &c.user_id);
    assert_eq!(row["plan"], "pro");
    // The customer upgrades now: the webhook (re-fetching Stripe) still applies.
    stripe.put_subscription(subscription(&c, "active", PRICE_PREMIUM));
    let r = deliver(
        app,
        &event(
            &format!("evt_future2_{}", c.subscription),
            "customer.subscription.updated",
            now(),
            subscription(&c, "active", PRICE_PREMIUM),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let row = user_row(app, &c.user_id);
    assert_eq!(row["plan"], "premium", "the later update from Stripe applies");
    let synced = row["stripe_synced_at"].as_i64().unwrap();
    assert!(synced <= now() + 5, "stripe_synced_at {synced} is in the future");
}

#[test]
fn an_event_whose_worker_crashed_mid_processing_is_taken_over_after_its_lease() {
    let stripe = &shared().stripe;
    let persist = std::env::temp_dir().join(unique("plangate-crash"));
    let first = crate::support::App::spawn(crate::AppOptions {
        persist: Some(persist.clone()),
        ..crate::stripe_options(stripe)
    });
    let c = new_customer(&first, "crash");
    stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    stripe.set_hanging(&c.subscription, true);
    let id = format!("evt_crash_{}", c.subscription);
    let body = event(&id, "customer.subscription.created", now(), subscription(&c, "active", PRICE_PRO)).to_string();
    let signature = sign(body.as_bytes(), WEBHOOK_SECRET);
    let url = first.url("/api/stripe-webhook");
    // The delivery hangs on Stripe; the Worker dies under it.
    let inflight = std::thread::spawn(move || {
        let _ = agent().post(&url).set("Stripe-Signature", &signature).send_bytes(body.as_bytes());
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while event_row(&first, &id).map(|r| r["status"] == "processing") != Some(true) {
        assert!(std::time::Instant::now() < deadline, "event never claimed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    first.stop();
    stripe.set_hanging(&c.subscription, false);
    let _ = inflight.join();
    drop(first);

    // A new Worker on the same database finds the event still `processing`.
    let second = crate::support::App::spawn(crate::AppOptions {
        persist: Some(persist.clone()),
        migrate: false,
        ..crate::stripe_options(stripe)
    });
    assert_eq!(event_row(&second, &id).unwrap()["status"], "processing");
    // Stripe redelivers while the lease holds: acknowledged, not processed twice.
    let r =
        deliver(&second, &event(&id, "customer.subscription.created", now(), subscription(&c, "active", PRICE_PRO)));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["status"], "in_progress");
    run_cron(&second, Some(now() + 30));
    assert_eq!(event_row(&second, &id).unwrap()["status"], "processing", "lease not yet expired");
    run_cron(&second, Some(now() + 240));
    let row = event_row(&second, &id).unwrap();
    assert_eq!(row["status"], "processed", "{row}");
    assert_eq!(row["attempts"], 2);
    assert_eq!(user_row(&second, &c.user_id)["plan"], "pro");
    drop(second);
    let _ = std::fs::remove_dir_all(&persist);
}

#[test]
fn a_missed_delivery_is_picked_up_by_reconciliation_from_the_events_api() {
    let _serial = crate::cron_serial();
    let app = cron_app();
    let stripe = &shared().stripe;
    let c = subscribed(app, stripe, "reconcile");
    assert_eq!(user_row(app, &c.user_id)["plan"], "essential");
    // The customer upgrades; Stripe's delivery of the event never arrives.
    stripe.put_subscription(subscription(&c, "active", PRICE_PREMIUM));
    let id = format!("evt_missed_{}", c.subscription);
    stripe.add_undelivered(event(
        &id,
        "customer.subscription.updated",
        now(),
        subscription(&c, "active", PRICE_PREMIUM),
    ));
    run_cron(app, None);
    let row = event_row(app, &id).expect("reconciled event recorded");
    assert_eq!(row["status"], "processed");
    assert_eq!(row["source"], "reconcile");
    assert_eq!(user_row(app, &c.user_id)["plan"], "premium");
    // A second run does not process it again.
    run_cron(app, None);
    assert_eq!(event_row(app, &id).unwrap()["attempts"], 1);
}

#[test]
fn reconciliation_walks_every_page_of_1200_undelivered_events_over_several_runs() {
    let (app, stripe) = isolated_app();
    // 1,200 events Stripe never managed to deliver, of a type plangate only records
    // (each delivery is cheap), one a second up to now: 12 pages, newest first.
    let t0 = now();
    let tag = unique("walk").replace('-', "");
    let id = |i: usize| format!("evt_walk{i:04}_{tag}");
    for i in 0..1200 {
        let object = json!({"id": format!("prod_{i}"), "object": "product"});
        stripe.add_undelivered(event(&id(i), "product.updated", t0 - 1200 + i as i64, object));
    }
    let recorded = || app.count(&format!("SELECT count(*) FROM webhook_events WHERE id LIKE 'evt_walk%_{tag}'"));
    run_cron(&app, None);
    let first = recorded();
    assert!(first > 0 && first < 1200, "one run stays within its budget: {first}");
    // An event created while the walk is under way: newer than its first page.
    let late = format!("evt_walklate_{tag}");
    stripe.add_undelivered(event(&late, "product.updated", now(), json!({"id": "prod_late", "object": "product"})));
    let mut runs = 1;
    while recorded() < 1201 && runs < 80 {
        run_cron(&app, None);
        runs += 1;
    }
    for i in [0, 1, 599, 1198, 1199] {
        assert!(event_row(&app, &id(i)).is_some(), "{} not reached after {runs} runs", id(i));
    }
    let late_row = event_row(&app, &late).expect("the event created during the walk is picked up by the next walk");
    assert_eq!(late_row["status"], "processed");
    // Each delivered once: one attempt each, all by the reconciliation.
    let rows = app.sql(&format!(
        "SELECT status, attempts, source, count(*) AS n FROM webhook_events WHERE id LIKE 'evt_walk%_{tag}' \
         GROUP BY status, attempts, source"
    ));
    assert_eq!(rows, vec![json!({"status": "processed", "attempts": 1, "source": "reconcile", "n": 1201})]);
    // The walk kept its place: every page was read about once per walk, not from the top
    // each run (two walks over 12-13 pages, plus pages resumed after a spent budget).
    let pages = stripe.requests().iter().filter(|r| r.path == "/v1/events").count();
    assert!(pages <= 2 * 13 + runs, "{pages} Events API pages in {runs} runs");
}

#[test]
fn a_cron_run_makes_at_most_its_retries_and_kv_copies_and_the_next_run_does_the_rest() {
    use plangate::billing::delivery::RUN_RETRIES;
    use plangate::cron::COPIES_PER_RUN;
    // More due work than one run may do, seeded before the app starts: failed events
    // whose retry is due (about subscriptions Stripe does not know: each retry is a
    // quick no-op) and users whose KV copies are due.
    let t = now();
    let retries = i64::from(RUN_RETRIES) + 3;
    let copies = COPIES_PER_RUN + 7;
    let mut sql = String::new();
    for i in 0..retries {
        let c = Customer {
            auth_id: format!("budget-ev{i}"),
            user_id: format!("usr_budget_ev{i}"),
            customer: format!("cus_budget{i}"),
            subscription: format!("sub_budget{i}"),
        };
        let id = format!("evt_budget{i}");
        let created = t - 600 + i;
        let payload = event(&id, "customer.subscription.updated", created, subscription(&c, "active", PRICE_PRO));
        sql.push_str(&format!(
            "INSERT INTO webhook_events (id, type, created, status, attempts, last_error, payload, received_at, \
             next_attempt_at, first_failed_at, source) VALUES ('{id}', 'customer.subscription.updated', {created}, \
             'failed', 1, 'seeded', '{payload}', {created}, {}, {created}, 'webhook');\n",
            t - 60
        ));
    }
    for i in 0..copies {
        sql.push_str(&format!(
            "INSERT INTO users (id, auth_id, plan, plan_updated_at, created_at, updated_at) \
             VALUES ('usr_budget{i}', 'budget-{i}', 'free', {t}, {t}, {t});\n\
             INSERT INTO kv_outbox (user_id, version, due_at, attempts) VALUES ('usr_budget{i}', 1, {}, 0);\n",
            t - 60
        ));
    }
    let stripe = StripeFake::start();
    let persist = std::env::temp_dir().join(unique("plangate-budget"));
    crate::support::seed_state(&persist, &sql);
    let app = App::spawn(crate::AppOptions {
        persist: Some(persist.clone()),
        migrate: false,
        ..crate::stripe_options(&stripe)
    });
    let left = || {
        (
            app.count("SELECT count(*) FROM webhook_events WHERE status = 'failed'"),
            app.count("SELECT count(*) FROM kv_outbox"),
        )
    };
    assert_eq!(left(), (retries, copies));
    run_cron(&app, Some(t));
    assert_eq!(
        left(),
        (retries - i64::from(RUN_RETRIES), copies - COPIES_PER_RUN),
        "one run: {RUN_RETRIES} retries and {COPIES_PER_RUN} KV copies at most"
    );
    assert_eq!(app.count("SELECT count(*) FROM webhook_events WHERE status = 'processed'"), i64::from(RUN_RETRIES));
    // A copy that was done was written, not dropped.
    let written = app.sql("SELECT auth_id FROM users WHERE id NOT IN (SELECT user_id FROM kv_outbox) LIMIT 1");
    let uid = written[0]["auth_id"].as_str().unwrap();
    let plan = app.kv_get_when(&format!("planByUid:{uid}"), std::time::Duration::ZERO, |_| true);
    assert_eq!(plan.as_deref(), Some("free"));
    run_cron(&app, Some(t + 300));
    assert_eq!(left(), (0, 0), "the next run does the rest");
    drop(app);
    let _ = std::fs::remove_dir_all(&persist);
}

#[test]
fn processed_events_older_than_thirty_days_are_deleted_by_the_cron() {
    let _serial = crate::cron_serial();
    let app = cron_app();
    let id = format!("evt_{}", unique("retention").replace('-', ""));
    let r = deliver(app, &event(&id, "product.updated", now(), json!({"id": "prod_1"})));
    assert_eq!(r.status, 200);
    run_cron(app, Some(now() + 29 * 86400));
    assert!(event_row(app, &id).is_some(), "kept within 30 days");
    run_cron(app, Some(now() + 31 * 86400));
    assert!(event_row(app, &id).is_none(), "deleted after 30 days");
}

#[test]
fn a_thousand_malformed_requests_get_only_4xx_and_write_nothing() {
    let s = shared();
    let before = s.app.count("SELECT count(*) FROM webhook_events");
    let marker = unique("malformed").replace('-', "");
    let valid =
        event(&format!("evt_{marker}"), "customer.subscription.updated", now(), json!({"id": "sub_x"})).to_string();
    let big = vec![b'{'; 1024 * 1024 + 10];
    let bodies: Vec<(Vec<u8>, Option<String>)> = (0..1000)
        .map(|i| {
            let b = valid.as_bytes();
            match i % 10 {
                0 => (b.to_vec(), None),
                1 => (b.to_vec(), Some(format!("t={},v1={}", now(), "z".repeat(64)))),
                2 => (b[..b.len() / 2].to_vec(), Some(sign(b, WEBHOOK_SECRET))),
                3 => {
                    let t = &b[..(i % b.len()).max(1)];
                    (t.to_vec(), Some(sign(t, WEBHOOK_SECRET)))
                }
                4 => (
                    format!("garbage {i} \u{0}\u{7f}").into_bytes(),
                    Some(sign(format!("garbage {i} \u{0}\u{7f}").as_bytes(), WEBHOOK_SECRET)),
                ),
                5 => {
                    let wrong = json!({"id": i, "type": ["x"], "created": "now", "data": {"object": 5}}).to_string();
                    let sig = sign(wrong.as_bytes(), WEBHOOK_SECRET);
                    (wrong.into_bytes(), Some(sig))
                }
                6 => (
                    vec![0xff, 0xfe, 0x00, (i % 256) as u8],
                    Some(sign(&[0xff, 0xfe, 0x00, (i % 256) as u8], WEBHOOK_SECRET)),
                ),
                7 => (b.to_vec(), Some(format!("t={},v1={}", now() - 10_000, &sign(b, WEBHOOK_SECRET)[13..]))),
                8 if i % 100 == 8 => (big.clone(), Some("t=1,v1=00".into())),
                _ => (b.to_vec(), Some(format!("v1={},t=", "a".repeat(i % 70)))),
            }
        })
        .collect();
    let bodies = Arc::new(bodies);
    let url = s.app.url("/api/stripe-webhook");
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (bodies, url) = (bodies.clone(), url.clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut statuses = Vec::new();
                for (body, sig) in bodies.iter().skip(w).step_by(4) {
                    let mut h = vec![("Content-Type", "application/json")];
                    if let Some(sig) = sig {
                        h.push(("Stripe-Signature", sig.as_str()));
                    }
                    let r = send(&a, "POST", &url, &h, Some(body));
                    statuses.push((r.status, r.body));
                }
                statuses
            })
        })
        .collect();
    let mut count = 0;
    for w in workers {
        for (status, body) in w.join().unwrap() {
            count += 1;
            assert!((400..500).contains(&status), "{status}: {body}");
        }
    }
    assert_eq!(count, 1000);
    assert!(event_row(&s.app, &format!("evt_{marker}")).is_none());
    let ours = s.app.count("SELECT count(*) FROM webhook_events WHERE typeof(id) != 'text' OR id NOT LIKE 'evt_%'");
    assert_eq!(ours, 0);
    // Nothing crashed: the worker still answers and its log has no panic.
    assert_eq!(crate::support::get(&s.app.url("/health"), None).status, 200);
    let log = s.app.log_text();
    assert!(!log.contains("panicked") && !log.contains("RuntimeError"), "worker panicked");
    let _ = before;
}

#[test]
fn admin_endpoints_list_failed_events_retry_one_and_resync_a_user() {
    let s = shared();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let c = subscribed(&s.app, &s.stripe, "admin");
    // A failing event for this customer.
    s.stripe.set_failing(&c.subscription, true);
    let id = format!("evt_admin_{}", c.subscription);
    let r = deliver(
        &s.app,
        &event(
            &id,
            "invoice.paid",
            now(),
            json!({"id": "in_a", "customer": c.customer, "subscription": c.subscription}),
        ),
    );
    assert_eq!(r.status, 500);

    // Auth: none → 401, wrong → 403.
    let list_url = s.app.url("/api/admin/webhook-events?status=failed&limit=500");
    assert_eq!(send(&agent(), "GET", &list_url, &[], None).status, 401);
    assert_eq!(send(&agent(), "GET", &list_url, &[("Authorization", "Bearer nope")], None).status, 403);
    let user_token = format!("Bearer {}", crate::support::token(&c.auth_id));
    assert_eq!(send(&agent(), "GET", &list_url, &[("Authorization", &user_token)], None).status, 403);

    let list = send(&agent(), "GET", &list_url, &[("Authorization", &admin)], None);
    assert_eq!(list.status, 200, "{}", list.body);
    let events = list.json()["events"].as_array().unwrap().clone();
    let mine = events.iter().find(|e| e["id"] == id.as_str()).expect("listed");
    assert_eq!(mine["status"], "failed");
    assert!(mine.get("payload").is_none(), "payloads are not listed");
    let bad =
        send(&agent(), "GET", &s.app.url("/api/admin/webhook-events?status=weird"), &[("Authorization", &admin)], None);
    assert_eq!(bad.status, 400);

    // Retry now, while Stripe still fails: still failed, attempts 2.
    let retry_url = s.app.url(&format!("/api/admin/webhook-events/{id}/retry"));
    let r = send(&agent(), "POST", &retry_url, &[("Authorization", &admin)], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "failed");
    assert_eq!(event_row(&s.app, &id).unwrap()["attempts"], 2);
    // Stripe recovers (and the plan changed meanwhile): retry succeeds.
    s.stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    s.stripe.set_failing(&c.subscription, false);
    let r = send(&agent(), "POST", &retry_url, &[("Authorization", &admin)], None);
    assert_eq!(r.json()["status"], "processed", "{}", r.body);
    assert_eq!(user_row(&s.app, &c.user_id)["plan"], "pro");
    let r = send(&agent(), "POST", &retry_url, &[("Authorization", &admin)], None);
    assert_eq!(r.status, 409);
    let r = send(
        &agent(),
        "POST",
        &s.app.url("/api/admin/webhook-events/evt_nope/retry"),
        &[("Authorization", &admin)],
        None,
    );
    assert_eq!(r.status, 404);

    // Resync one user: Stripe changed without telling us.
    s.stripe.put_subscription(subscription(&c, "past_due", PRICE_PREMIUM));
    let body = json!({"userId": c.user_id}).to_string();
    let r =
        send(&agent(), "POST", &s.app.url("/api/admin/resync"), &[("Authorization", &admin)], Some(body.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["plan"]["plan"], "premium");
    let row = user_row(&s.app, &c.user_id);
    assert_eq!((row["plan"].as_str(), row["subscription_status"].as_str()), (Some("premium"), Some("past_due")));
    assert_eq!(
        s.app.count(&format!("SELECT count(*) FROM plan_changes WHERE user_id = '{}' AND cause = 'admin'", c.user_id)),
        1
    );

    // Re-syncing everyone is paged: see
    // `resync_of_all_users_pages_through_them_with_a_cursor_across_calls` (on an app of
    // its own, so that it does not re-sync the users of tests running meanwhile).
    let r = send(
        &agent(),
        "POST",
        &s.app.url("/api/admin/resync"),
        &[("Authorization", &admin)],
        Some(br#"{"userId":"x","all":true}"#),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn resync_of_all_users_pages_through_them_with_a_cursor_across_calls() {
    let (app, stripe) = isolated_app();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let resync = |body: Value| {
        let body = body.to_string();
        send(&agent(), "POST", &app.url("/api/admin/resync"), &[("Authorization", &admin)], Some(body.as_bytes()))
    };
    // Seven subscribed users and two free ones (no Stripe customer: nothing to re-read).
    let customers: Vec<Customer> = (0..7).map(|_| subscribed(&app, &stripe, "resync-all")).collect();
    let _free: Vec<Customer> = (0..2).map(|_| new_customer(&app, "resync-free")).collect();
    // Stripe changed for all of them without telling plangate.
    for c in &customers {
        stripe.put_subscription(subscription(c, "past_due", PRICE_PREMIUM));
    }
    let mut cursor = Value::Null;
    let (mut calls, mut synced) = (0, 0);
    loop {
        let listings_before = stripe.requests().iter().filter(|r| r.path == "/v1/subscriptions").count();
        let r = resync(json!({"all": true, "limit": 3, "cursor": cursor}));
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        calls += 1;
        let n = body["synced"].as_i64().unwrap();
        assert!(n <= 3, "at most `limit` users per call: {body}");
        assert_eq!(body["failed"], json!([]));
        // One Stripe listing per user re-synced: the call stays within its limit.
        let listings = stripe.requests().iter().filter(|r| r.path == "/v1/subscriptions").count();
        assert_eq!(listings - listings_before, n as usize);
        synced += n;
        if body["done"] == true {
            assert!(body["cursor"].is_null(), "{body}");
            break;
        }
        cursor = body["cursor"].clone();
        assert!(cursor.is_string(), "{body}");
        assert!(calls < 10, "never done");
    }
    assert_eq!((calls, synced), (3, 7));
    for c in &customers {
        let row = user_row(&app, &c.user_id);
        assert_eq!((row["plan"].as_str(), row["subscription_status"].as_str()), (Some("premium"), Some("past_due")));
    }
    // Without a limit, one call of the default size (40) reaches all seven.
    for c in &customers {
        stripe.put_subscription(subscription(c, "active", PRICE_ESSENTIAL));
    }
    let r = resync(json!({"all": true}));
    assert_eq!((r.json()["synced"].as_i64(), r.json()["done"].as_bool()), (Some(7), Some(true)), "{}", r.body);
    assert!(customers.iter().all(|c| user_row(&app, &c.user_id)["plan"] == "essential"));
    // Bad paging input is a 400 that changes nothing.
    for bad in [
        json!({"all": true, "limit": 0}),
        json!({"all": true, "limit": 101}),
        json!({"all": true, "limit": -1}),
        json!({"userId": customers[0].user_id, "limit": 3}),
        json!({"userId": customers[0].user_id, "cursor": "usr_x"}),
    ] {
        assert_eq!(resync(bad.clone()).status, 400, "{bad}");
    }
}

#[test]
fn changes_are_dual_written_to_the_legacy_kv_keys() {
    let s = shared();
    let c = new_customer(&s.app, "dualwrite");
    let mut trialing = subscription(&c, "trialing", PRICE_ESSENTIAL);
    let trial_end = now() + 3 * 86400;
    trialing["trial_end"] = json!(trial_end);
    s.stripe.put_subscription(trialing.clone());
    let r = deliver(
        &s.app,
        &event(&format!("evt_dw_{}", c.subscription), "customer.subscription.created", now(), trialing),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Written after the response: give the copy a moment to land.
    let kv = |key: &str| s.app.kv_get_when(key, std::time::Duration::from_secs(10), |v| v.is_some());
    assert_eq!(kv(&format!("planByUid:{}", c.auth_id)).as_deref(), Some("trial"));
    assert_eq!(kv(&format!("billingStatus:{}", c.auth_id)).as_deref(), Some("trialing"));
    assert_eq!(kv(&format!("trialEndByUid:{}", c.auth_id)), Some((trial_end * 1000).to_string()));
    assert_eq!(kv(&format!("trialUsedByUid:{}", c.auth_id)).as_deref(), Some("true"));
    let me = crate::support::get(&s.app.url("/api/plan/me"), Some(&crate::support::token(&c.auth_id))).json();
    assert_eq!(me["plan"], "trial");
}

#[test]
fn a_user_id_hint_never_moves_another_customers_subscription_onto_someone_else() {
    let s = shared();
    let owner = subscribed(&s.app, &s.stripe, "hint-owner");
    let victim = new_customer(&s.app, "hint-victim");
    // A session for the owner's customer naming the victim (e.g. a client-set
    // client_reference_id on a payment link).
    let mut session = checkout_completed(&owner);
    session["client_reference_id"] = json!(victim.user_id);
    let r = deliver(
        &s.app,
        &event(&format!("evt_hint1_{}", owner.subscription), "checkout.session.completed", now(), session),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = user_row(&s.app, &victim.user_id);
    assert_eq!((v["plan"].as_str(), v["stripe_customer_id"].as_str()), (Some("free"), None));
    assert_eq!(user_row(&s.app, &owner.user_id)["plan"], "essential");

    // A subscription of an unknown customer whose metadata names a user who already
    // has their own customer: not applied to that user.
    let stranger = Customer {
        auth_id: "nobody".into(),
        user_id: owner.user_id.clone(),
        customer: format!("cus_stranger{}", unique("x").replace('-', "")),
        subscription: format!("sub_stranger{}", unique("x").replace('-', "")),
    };
    s.stripe.put_subscription(subscription(&stranger, "canceled", PRICE_PREMIUM));
    let ev = event(
        &format!("evt_hint2_{}", stranger.subscription),
        "customer.subscription.deleted",
        now(),
        subscription(&stranger, "canceled", PRICE_PREMIUM),
    );
    assert_eq!(deliver(&s.app, &ev).status, 200);
    let o = user_row(&s.app, &owner.user_id);
    assert_eq!(
        (o["plan"].as_str(), o["stripe_customer_id"].as_str()),
        (Some("essential"), Some(owner.customer.as_str()))
    );
}

#[test]
fn one_off_payments_and_refunds_are_recorded_in_any_order_and_customer_emails_sync() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "payments");
    let pi = format!("pi_{}", c.subscription);
    let intent = json!({"id": pi, "object": "payment_intent", "customer": c.customer, "amount": 500,
                        "amount_received": 500, "currency": "eur", "metadata": {}});
    let charge = json!({"id": format!("ch_{}", c.subscription), "object": "charge", "payment_intent": pi,
                        "customer": c.customer, "amount": 500, "amount_refunded": 500, "currency": "eur"});
    // The refund arrives before the success it refunds.
    let t = now();
    assert_eq!(deliver(&s.app, &event(&format!("evt_ref_{pi}"), "charge.refunded", t + 10, charge)).status, 200);
    assert_eq!(deliver(&s.app, &event(&format!("evt_pi_{pi}"), "payment_intent.succeeded", t, intent)).status, 200);
    let row = s.app.sql(&format!("SELECT * FROM stripe_payments WHERE id = '{pi}'")).remove(0);
    assert_eq!(row["status"], "refunded", "the older success does not overwrite the refund: {row}");
    assert_eq!((row["amount"].as_i64(), row["amount_refunded"].as_i64()), (Some(500), Some(500)));
    assert_eq!(row["user_id"], c.user_id.as_str(), "linked through the stored customer id");

    // A payment-mode checkout is recorded too.
    let cs = json!({"id": format!("cs_pay_{}", c.subscription), "object": "checkout.session", "mode": "payment",
                    "customer": c.customer, "client_reference_id": c.user_id, "payment_intent": format!("pi_pay_{}", c.subscription),
                    "amount_total": 1200, "currency": "eur", "payment_status": "paid"});
    assert_eq!(
        deliver(&s.app, &event(&format!("evt_cspay_{}", c.subscription), "checkout.session.completed", t, cs)).status,
        200
    );
    let row = s.app.sql(&format!("SELECT * FROM stripe_payments WHERE id = 'pi_pay_{}'", c.subscription)).remove(0);
    assert_eq!((row["status"].as_str(), row["amount"].as_i64()), (Some("succeeded"), Some(1200)));

    // customer.updated: the email is taken from Stripe's current customer, not the payload.
    s.stripe.put_customer(json!({"id": c.customer, "object": "customer", "email": "new-address@example.test"}));
    let stale = json!({"id": c.customer, "object": "customer", "email": "stale@example.test"});
    assert_eq!(
        deliver(&s.app, &event(&format!("evt_cu_{}", c.subscription), "customer.updated", t, stale)).status,
        200
    );
    assert_eq!(user_row(&s.app, &c.user_id)["email"], "new-address@example.test");
}

//! The credit ledger end to end: periodic grants from `invoice.paid`, pack purchases and
//! refunds from Stripe's events (any order, any number of deliveries), spends, admin
//! adjustments, the history and the shortfall report.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::fixtures::*;
use crate::support::stripe_fake::invoice;
use crate::support::{now, token};
use crate::{
    error_code, shared, ALLOWED_ORIGIN_FOR_TESTS, PACK_LARGE_AMOUNT, PACK_SMALL_AMOUNT, PRICE_PACK_LARGE,
    PRICE_PACK_SMALL, PRICE_PREMIUM, PRICE_PRO,
};

const DAY: i64 = 86400;

/// A user whose pro subscription (at the fake and in D1) is in the period `[start, end)`.
fn pro_subscriber(label: &str, start: i64, end: i64) -> Customer {
    let s = shared();
    let c = new_customer(&s.app, label);
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PRO, start, end));
    assert_eq!(user_row(&s.app, &c.user_id)["plan"], "pro");
    c
}

/// The same facts under another event id (Stripe re-sends; another endpoint's copy).
fn resent(ev: &Value) -> Value {
    let mut again = ev.clone();
    again["id"] = json!(event_id("resent"));
    again
}

fn assert_balance(c: &Customer, want: i64, ctx: &str) {
    let s = shared();
    assert_eq!(balance(&s.app, c), want, "{ctx}: GET /api/credits");
    assert_eq!(ledger_sum(&s.app, &c.user_id), want, "{ctx}: SUM(delta) of the ledger");
}

// ---------------------------------------------------------------------------------
// Periodic grants

#[test]
fn a_thousand_deliveries_of_one_invoice_paid_fifty_at_a_time_grant_once() {
    let s = shared();
    let start = now() - DAY;
    let c = pro_subscriber("grant-1000", start, start + 30 * DAY);
    let ev = Arc::new(s.stripe.invoice_paid(&c.subscription, 2000, "subscription_cycle"));
    let sent = ev.clone();
    let load = crate::load_serial();
    let answers: Vec<_> = at_once(50, move |_| {
        (0..20).map(|_| retrying_dev_restarts(|| deliver(&shared().app, &sent))).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    drop(load);
    assert_eq!(answers.len(), 1000);
    for a in &answers {
        assert!((200..300).contains(&a.status), "{} {}", a.status, a.body);
    }
    let processed = answers.iter().filter(|a| a.json()["status"] == "processed").count();
    assert_eq!(processed, 1, "exactly one delivery did the work");
    let grants = ledger(&s.app, &c.user_id, "grant");
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["delta"], 20, "pro's credits_per_period");
    assert_eq!(grants[0]["source_key"], format!("period:{}:{start}", c.subscription));
    assert_eq!(grants[0]["stripe_event_id"], ev["id"]);
    assert_eq!(ledger(&s.app, &c.user_id, "purchase").len(), 0);
    assert_balance(&c, 20, "after 1,000 deliveries");
}

#[test]
fn an_invoice_paid_resent_or_paid_again_for_one_period_grants_once_and_the_next_period_grants_again() {
    let s = shared();
    let start = now() - 3 * DAY;
    let end = start + 30 * DAY;
    let c = pro_subscriber("grant-period", start, end);
    let first = s.stripe.invoice_paid(&c.subscription, 2000, "subscription_create");
    deliver_all(&s.app, std::slice::from_ref(&first));
    assert_balance(&c, 20, "first invoice");
    // The same invoice under other event ids: a re-send, and the `invoice.payment_succeeded`
    // Stripe sends beside `invoice.paid`.
    let mut succeeded = resent(&first);
    succeeded["type"] = json!("invoice.payment_succeeded");
    // Another invoice of the same subscription for the same period (a proration paid later).
    let other = s.stripe.invoice_paid(&c.subscription, 700, "subscription_update");
    deliver_all(&s.app, &[resent(&first), succeeded, other, first.clone()]);
    let grants = ledger(&s.app, &c.user_id, "grant");
    assert_eq!(grants.len(), 1, "one grant per (user, subscription, period start): {grants:?}");
    assert_balance(&c, 20, "same period");

    // Stripe renews: the next period's invoice grants again, once.
    deliver_all(&s.app, &[s.stripe.advance_period(&c.subscription)]);
    let next = s.stripe.invoice_paid(&c.subscription, 2000, "subscription_cycle");
    assert_eq!(next["data"]["object"]["lines"]["data"][0]["period"]["start"], end);
    deliver_all(&s.app, &[next.clone(), resent(&next), next.clone()]);
    let grants = ledger(&s.app, &c.user_id, "grant");
    let keys: Vec<&str> = grants.iter().map(|g| g["source_key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [format!("period:{}:{start}", c.subscription), format!("period:{}:{end}", c.subscription)],
        "{grants:?}"
    );
    assert_balance(&c, 40, "two periods");
}

#[test]
fn invoices_of_two_periods_delivered_out_of_order_grant_once_each() {
    let s = shared();
    let (p1, p2) = (now() - 40 * DAY, now() - 10 * DAY);
    let c = new_customer(&s.app, "grant-out-of-order");
    // Stripe is in the second period already; the first period's invoice arrives late.
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PREMIUM, p2, p2 + 30 * DAY));
    let inv = |n: i64, start: i64, reason: &str| {
        let id = format!("in_{}_{n}", c.subscription);
        event(
            &event_id("inv"),
            "invoice.paid",
            now(),
            invoice(&id, &c.customer, &c.subscription, start, start + 30 * DAY, PRICE_PREMIUM, 4900, reason),
        )
    };
    let (first, second) = (inv(1, p1, "subscription_create"), inv(2, p2, "subscription_cycle"));
    deliver_all(&s.app, &[second.clone(), first.clone(), resent(&second), resent(&first), first]);
    let grants = ledger(&s.app, &c.user_id, "grant");
    let mut keys: Vec<&str> = grants.iter().map(|g| g["source_key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, [format!("period:{}:{p1}", c.subscription), format!("period:{}:{p2}", c.subscription)]);
    assert!(grants.iter().all(|g| g["delta"] == 50), "premium's credits_per_period: {grants:?}");
    assert_balance(&c, 100, "two premium periods");
}

#[test]
fn a_zero_trial_invoice_grants_nothing_and_the_first_paid_invoice_after_the_trial_grants() {
    let s = shared();
    let t0 = now() - DAY;
    let trial_end = t0 + 3 * DAY;
    let c = new_customer(&s.app, "grant-trial");
    let mut trialing = subscription_in(&c, "trialing", PRICE_PRO, t0, trial_end);
    trialing["trial_start"] = json!(t0);
    trialing["trial_end"] = json!(trial_end);
    stripe_says(&s.app, &s.stripe, trialing);
    let zero = s.stripe.invoice_paid(&c.subscription, 0, "subscription_create");
    deliver_all(&s.app, &[zero.clone(), resent(&zero)]);
    assert_eq!(s.app.count(&format!("SELECT COUNT(*) FROM credit_transactions WHERE user_id = '{}'", c.user_id)), 0);
    assert_balance(&c, 0, "a $0 trial invoice");
    // The trial ends and the first real invoice is paid.
    let mut active = subscription_in(&c, "active", PRICE_PRO, trial_end, trial_end + 30 * DAY);
    active["trial_start"] = json!(t0);
    active["trial_end"] = json!(trial_end);
    stripe_says(&s.app, &s.stripe, active);
    deliver_all(&s.app, &[s.stripe.invoice_paid(&c.subscription, 2000, "subscription_cycle")]);
    let grants = ledger(&s.app, &c.user_id, "grant");
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["source_key"], format!("period:{}:{trial_end}", c.subscription));
    assert_balance(&c, 20, "after the trial");
}

// ---------------------------------------------------------------------------------
// Pack purchases and refunds

#[test]
fn a_pack_purchase_grants_once_whatever_the_order_and_duplicates_of_its_events() {
    let s = shared();
    // 0 = checkout.session.completed, 1 = payment_intent.succeeded; r0/r1 = the same
    // event re-sent under a new id.
    let orders: [&[&str]; 6] =
        [&["0", "1"], &["1", "0"], &["0"], &["1"], &["0", "0", "1", "1", "0"], &["1", "r0", "1", "r1", "0", "r0"]];
    for (i, order) in orders.iter().enumerate() {
        let c = new_customer(&s.app, &format!("pack-order{i}"));
        let (events, pi) = buy_pack(&s.app, &s.stripe, &c, "small");
        for step in order.iter() {
            let ev = match *step {
                "0" => events[0].clone(),
                "1" => events[1].clone(),
                "r0" => resent(&events[0]),
                "r1" => resent(&events[1]),
                _ => unreachable!(),
            };
            deliver_all(&s.app, &[ev]);
        }
        let ctx = format!("order {order:?}");
        let purchases = ledger(&s.app, &c.user_id, "purchase");
        assert_eq!(purchases.len(), 1, "{ctx}: {purchases:?}");
        assert_eq!(purchases[0]["delta"], 100, "{ctx}: the small pack's credits");
        assert_eq!(purchases[0]["source_key"], format!("purchase:{pi}"), "{ctx}");
        assert_balance(&c, 100, &ctx);
        let payment = s.app.sql(&format!("SELECT * FROM stripe_payments WHERE id = '{pi}'"));
        assert_eq!(payment.len(), 1, "{ctx}: the purchase is linked to its payment");
        assert_eq!(
            (payment[0]["pack"].as_str(), payment[0]["credits"].as_i64(), payment[0]["user_id"].as_str()),
            (Some("small"), Some(100), Some(c.user_id.as_str())),
            "{ctx}: {:?}",
            payment[0]
        );
    }
    // The large pack: 500 credits.
    let c = new_customer(&s.app, "pack-large");
    let (events, _) = buy_pack(&s.app, &s.stripe, &c, "large");
    deliver_all(&s.app, &[events[1].clone(), events[0].clone()]);
    assert_balance(&c, 500, "large pack");
}

#[test]
fn a_free_session_without_a_payment_intent_grants_once_on_the_session_id() {
    let s = shared();
    let c = new_customer(&s.app, "pack-no-pi");
    let (events, _) = buy_pack(&s.app, &s.stripe, &c, "small");
    // Nothing to pay (a 100% promotion code): Stripe makes no payment intent.
    let mut completed = events[0].clone();
    completed["data"]["object"]["payment_intent"] = Value::Null;
    completed["data"]["object"]["amount_total"] = json!(0);
    let session_id = completed["data"]["object"]["id"].as_str().unwrap().to_string();
    deliver_all(&s.app, &[completed.clone(), resent(&completed), completed]);
    let purchases = ledger(&s.app, &c.user_id, "purchase");
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    assert_eq!(purchases[0]["source_key"], format!("purchase:{session_id}"));
    assert_balance(&c, 100, "session without a payment intent");
}

#[test]
fn partial_refunds_claw_back_in_proportion_to_the_cumulative_amount_refunded() {
    let s = shared();
    let c = new_customer(&s.app, "refund-cumulative");
    let (events, pi) = buy_pack(&s.app, &s.stripe, &c, "small");
    deliver_all(&s.app, &events);
    assert_eq!(spend(&s.app, &c, 20, "before-refunds").status, 200);
    assert_balance(&c, 80, "bought 100, spent 20");
    // 100 of 500 cents (20%): 20 credits.
    deliver_all(&s.app, &[s.stripe.refund(&pi, 100)]);
    assert_balance(&c, 60, "20% refunded");
    // 200 more: 300 of 500 cumulative (60%) = 60 in all, 40 more.
    let second = s.stripe.refund(&pi, 200);
    assert_eq!(second["data"]["object"]["amount_refunded"], 300);
    deliver_all(&s.app, &[second.clone(), resent(&second)]);
    let refunds = ledger(&s.app, &c.user_id, "refund");
    let deltas: Vec<i64> = refunds.iter().map(|r| r["delta"].as_i64().unwrap()).collect();
    assert_eq!(deltas, [-20, -40], "{refunds:?}");
    for r in &refunds {
        let shortfall = metadata(r)["shortfall"].as_i64().unwrap_or(0);
        assert_eq!(shortfall, 0, "everything could be taken: {r}");
    }
    assert_balance(&c, 20, "60% refunded");
}

#[test]
fn a_partial_refund_after_a_partial_spend_never_goes_negative_and_reports_the_shortfall() {
    let s = shared();
    let c = new_customer(&s.app, "refund-shortfall");
    let (events, pi) = buy_pack(&s.app, &s.stripe, &c, "small");
    deliver_all(&s.app, &events);
    let r = spend(&s.app, &c, 70, "spent-most");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["balance"], 30);
    // Half of the payment refunded: 50 credits to claw back, only 30 left.
    let refund = s.stripe.refund(&pi, PACK_SMALL_AMOUNT / 2);
    deliver_all(&s.app, &[refund.clone(), resent(&refund), refund]);
    assert_balance(&c, 0, "clawed back what was left");
    let refunds = ledger(&s.app, &c.user_id, "refund");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["delta"], -30);
    assert_eq!(metadata(&refunds[0])["shortfall"], 20, "{}", refunds[0]);
    // Never negative, at any point of the ledger.
    let lowest = s.app.sql(&format!(
        "SELECT MIN(running) AS low FROM (SELECT SUM(delta) OVER (ORDER BY created_at, rowid) AS running \
         FROM credit_transactions WHERE user_id = '{}')",
        c.user_id
    ));
    assert!(lowest[0]["low"].as_i64().unwrap() >= 0, "{lowest:?}");
    // The user sees the row with its metadata; admins see the shortfall.
    let history = user_get(&s.app, &c, "/api/credits").json();
    let row = history["transactions"].as_array().unwrap().iter().find(|t| t["reason"] == "refund").cloned();
    let row = row.unwrap_or_else(|| panic!("no refund in {history}"));
    assert_eq!((row["delta"].as_i64(), row["metadata"]["shortfall"].as_i64()), (Some(-30), Some(20)), "{row}");
    let r = admin_get(&s.app, "/api/admin/credits/shortfalls");
    assert_eq!(r.status, 200, "{}", r.body);
    let mine: Vec<Value> = r.json()["shortfalls"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.body))
        .iter()
        .filter(|x| x["userId"] == c.user_id.as_str())
        .cloned()
        .collect();
    assert_eq!(mine.len(), 1, "{}", r.body);
    assert_eq!(mine[0]["shortfall"], 20);
    assert_eq!(mine[0]["paymentIntent"], pi.as_str());
    assert_eq!(id_text(&mine[0]["transactionId"]), id_text(&refunds[0]["id"]));
    assert!(mine[0]["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", mine[0]);
    // Users cannot read it.
    let r = user_get(&s.app, &c, "/api/admin/credits/shortfalls");
    assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "{}", r.body);
}

#[test]
fn a_refund_delivered_before_the_purchase_events_gives_the_same_balance() {
    let s = shared();
    // 0/1: the purchase events, r: a refund of half the payment.
    let orders: [&[&str]; 5] =
        [&["0", "1", "r"], &["r", "0", "1"], &["1", "r", "0"], &["r", "r", "1", "0", "r"], &["r", "1", "0"]];
    for (i, order) in orders.iter().enumerate() {
        let c = new_customer(&s.app, &format!("refund-order{i}"));
        let (events, pi) = buy_pack(&s.app, &s.stripe, &c, "small");
        let mut refund = s.stripe.refund(&pi, PACK_SMALL_AMOUNT / 2);
        if i == 4 {
            // A charge that does not carry the payment intent's metadata: only its
            // payment intent and customer link it to the purchase.
            refund["data"]["object"]["metadata"] = json!({});
        }
        for step in order.iter() {
            let ev = match *step {
                "0" => events[0].clone(),
                "1" => events[1].clone(),
                _ => refund.clone(),
            };
            deliver_all(&s.app, &[ev]);
        }
        let ctx = format!("order {order:?}");
        assert_balance(&c, 50, &ctx);
        assert_eq!(ledger(&s.app, &c.user_id, "purchase").len(), 1, "{ctx}");
        let refunded: i64 = ledger(&s.app, &c.user_id, "refund").iter().map(|r| r["delta"].as_i64().unwrap()).sum();
        assert_eq!(refunded, -50, "{ctx}");
    }
}

#[test]
fn a_full_refund_after_spending_nothing_returns_the_balance_to_what_it_was() {
    let s = shared();
    let c = new_customer(&s.app, "refund-full");
    give_credits(&s.app, &c, 7);
    let (events, pi) = buy_pack(&s.app, &s.stripe, &c, "large");
    deliver_all(&s.app, &events);
    assert_balance(&c, 507, "bought the large pack");
    let refund = s.stripe.refund(&pi, PACK_LARGE_AMOUNT);
    assert_eq!(refund["data"]["object"]["refunded"], true);
    deliver_all(&s.app, &[refund.clone(), resent(&refund)]);
    assert_balance(&c, 7, "fully refunded");
    let refunds = ledger(&s.app, &c.user_id, "refund");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["delta"], -500);
    assert_eq!(metadata(&refunds[0])["shortfall"].as_i64().unwrap_or(0), 0);
}

// ---------------------------------------------------------------------------------
// Credits checkout

#[test]
fn credits_checkout_redirects_to_a_payment_mode_session_for_the_pack() {
    let s = shared();
    let c = new_customer(&s.app, "credits-checkout");
    for (pack, price) in [("small", PRICE_PACK_SMALL), ("large", PRICE_PACK_LARGE)] {
        let (body, session) = checkout_pack(&s.app, &s.stripe, &c, pack);
        assert_eq!((body["ok"].as_bool(), body["action"].as_str()), (Some(true), Some("redirect")), "{body}");
        assert!(body["url"].as_str().unwrap().starts_with("https://checkout.stripe.test/"), "{body}");
        assert_eq!(body["sessionId"], session["id"], "{body}");
        assert_eq!(session["mode"], "payment", "{session}");
        assert_eq!(session["price"], price, "{session}");
        assert_eq!(session["client_reference_id"], c.user_id.as_str());
        assert_eq!(session["metadata"]["user_id"], c.user_id.as_str(), "{session}");
        assert_eq!(session["metadata"]["pack"], pack, "{session}");
        assert_eq!(session["payment_intent_data"]["metadata"]["user_id"], c.user_id.as_str(), "{session}");
        assert_eq!(session["payment_intent_data"]["metadata"]["pack"], pack, "{session}");
        assert!(
            session["success_url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{ALLOWED_ORIGIN_FOR_TESTS}/credits"))),
            "{session}"
        );
        // The customer was created like the billing actions do, with the user's id.
        let customer =
            user_row(&s.app, &c.user_id)["stripe_customer_id"].as_str().expect("customer linked").to_string();
        assert_eq!(session["customer"], customer.as_str());
    }
    assert_eq!(s.stripe.customers_of_user(&c.user_id).len(), 1, "one Stripe customer for both checkouts");
    assert_eq!(balance(&s.app, &c), 0, "nothing is granted before Stripe says it was paid");
}

#[test]
fn credits_checkout_refuses_an_unknown_pack_and_a_bad_return_url() {
    let s = shared();
    let c = new_customer(&s.app, "credits-checkout-bad");
    let ret = format!("{ALLOWED_ORIGIN_FOR_TESTS}/credits");
    let r = user_post(&s.app, &c, "/api/credits/checkout", json!({"pack": "huge", "returnUrl": ret}));
    assert_eq!((r.status, error_code(&r.json())), (400, "UNKNOWN_PACK"), "{}", r.body);
    for bad in
        ["https://evil.example/steal", &format!("{ALLOWED_ORIGIN_FOR_TESTS}.evil.example/x"), "javascript:alert(1)"]
    {
        let r = user_post(&s.app, &c, "/api/credits/checkout", json!({"pack": "small", "returnUrl": bad}));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        // The contract names INVALID_RETURN_URL "as /api/stripe-checkout", which answers
        // INVALID_REQUEST for these: either is the documented refusal.
        assert!(["INVALID_RETURN_URL", "INVALID_REQUEST"].contains(&error_code(&r.json())), "{bad}: {}", r.body);
    }
    let r = request(&s.app, "POST", "/api/credits/checkout", None, Some(&json!({"pack": "small", "returnUrl": ret})));
    assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"), "{}", r.body);
    assert!(user_row(&s.app, &c.user_id)["stripe_customer_id"].is_null(), "no Stripe customer for refused input");
}

#[test]
fn ten_concurrent_pack_checkouts_make_one_customer_and_refuse_the_rest_while_one_runs() {
    let s = shared();
    let c = Arc::new(new_customer(&s.app, "credits-checkout-ten"));
    let who = c.clone();
    let answers = at_once(10, move |_| {
        user_post(
            &shared().app,
            &who,
            "/api/credits/checkout",
            json!({"pack": "small", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/credits")}),
        )
    });
    let mut sessions = Vec::new();
    for a in &answers {
        match a.status {
            200 => sessions.push(a.json()["sessionId"].as_str().unwrap().to_string()),
            409 => assert_eq!(error_code(&a.json()), "BILLING_IN_PROGRESS", "{}", a.body),
            other => panic!("{other}: {}", a.body),
        }
    }
    assert!(!sessions.is_empty(), "at least one checkout went through");
    assert_eq!(s.stripe.customers_of_user(&c.user_id).len(), 1, "one Stripe customer whatever the clicks");
    // The lock was released: the next click works.
    let (body, _) = checkout_pack(&s.app, &s.stripe, &c, "large");
    assert_eq!(body["action"], "redirect");
}

// ---------------------------------------------------------------------------------
// Spending

#[test]
fn one_hundred_concurrent_spends_of_one_against_a_balance_of_ten_let_exactly_ten_through() {
    let s = shared();
    let c = Arc::new(new_customer(&s.app, "spend-100"));
    give_credits(&s.app, &c, 10);
    let who = c.clone();
    let load = crate::load_serial();
    let answers = at_once(100, move |i| spend(&shared().app, &who, 1, &format!("spend-{i}")));
    drop(load);
    let ok: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(ok.len(), 10, "{:?}", answers.iter().map(|a| (a.status, &a.body)).collect::<Vec<_>>());
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!((a.status, error_code(&a.json())), (402, "INSUFFICIENT_CREDITS"), "{}", a.body);
        assert_eq!((a.json()["balance"].as_i64(), a.json()["required"].as_i64()), (Some(0), Some(1)), "{}", a.body);
    }
    let mut ids: Vec<String> = ok.iter().map(|a| id_text(&a.json()["transactionId"])).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "ten ledger rows");
    assert_balance(&c, 0, "after 100 concurrent spends");
    assert_eq!(ledger(&s.app, &c.user_id, "spend").len(), 10);
}

#[test]
fn a_spend_is_idempotent_and_a_reused_key_with_another_amount_is_refused() {
    let s = shared();
    let c = new_customer(&s.app, "spend-idem");
    give_credits(&s.app, &c, 50);
    let first = spend(&s.app, &c, 5, "k1");
    assert_eq!(first.status, 200, "{}", first.body);
    let body = first.json();
    assert_eq!(
        (body["ok"].as_bool(), body["spent"].as_i64(), body["balance"].as_i64()),
        (Some(true), Some(5), Some(45))
    );
    assert_eq!(body["replayed"], false);
    assert!(!body["transactionId"].is_null(), "{body}");
    let again = spend(&s.app, &c, 5, "k1");
    assert_eq!(again.status, 200, "{}", again.body);
    let mut expected = body.clone();
    expected["replayed"] = json!(true);
    assert_eq!(again.json(), expected, "the first answer again");
    assert_balance(&c, 45, "counted once");
    let r = spend(&s.app, &c, 6, "k1");
    assert_eq!((r.status, error_code(&r.json())), (409, "IDEMPOTENCY_KEY_REUSED"), "{}", r.body);
    // The key is the user's own: another user's same key is another spend.
    let other = new_customer(&s.app, "spend-idem-other");
    give_credits(&s.app, &other, 5);
    assert_eq!(spend(&s.app, &other, 5, "k1").status, 200);
    assert_balance(&other, 0, "the other user");
    // More than the balance.
    let r = spend(&s.app, &c, 46, "k2");
    assert_eq!((r.status, error_code(&r.json())), (402, "INSUFFICIENT_CREDITS"), "{}", r.body);
    assert_eq!((r.json()["balance"].as_i64(), r.json()["required"].as_i64()), (Some(45), Some(46)), "{}", r.body);
    assert_eq!(spend(&s.app, &c, 45, "k3").json()["balance"], 0);
    assert_balance(&c, 0, "spent all");
    assert_eq!(ledger(&s.app, &c.user_id, "spend").len(), 2);
}

#[test]
fn a_spend_with_invalid_input_is_400_and_changes_nothing() {
    let s = shared();
    let c = new_customer(&s.app, "spend-invalid");
    give_credits(&s.app, &c, 10);
    let long_key = "k".repeat(201);
    let long_reason = "r".repeat(201);
    for body in [
        json!({"amount": 0, "reason": "x", "idempotencyKey": "a"}),
        json!({"amount": -1, "reason": "x", "idempotencyKey": "a"}),
        json!({"amount": 1_000_001, "reason": "x", "idempotencyKey": "a"}),
        json!({"amount": 1.5, "reason": "x", "idempotencyKey": "a"}),
        json!({"amount": "1", "reason": "x", "idempotencyKey": "a"}),
        json!({"reason": "x", "idempotencyKey": "a"}),
        json!({"amount": 1, "reason": "x"}),
        json!({"amount": 1, "reason": "x", "idempotencyKey": ""}),
        json!({"amount": 1, "reason": "x", "idempotencyKey": long_key}),
        json!({"amount": 1, "reason": "", "idempotencyKey": "a"}),
        json!({"amount": 1, "reason": long_reason, "idempotencyKey": "a"}),
        json!({"amount": 1, "idempotencyKey": "a"}),
    ] {
        let r = user_post(&s.app, &c, "/api/credits/spend", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        // A bad reason may be named REASON_REQUIRED like the admin adjustment's.
        assert!(["INVALID_REQUEST", "REASON_REQUIRED"].contains(&error_code(&r.json())), "{body}: {}", r.body);
    }
    assert_balance(&c, 10, "nothing spent");
    let r = request(
        &s.app,
        "POST",
        "/api/credits/spend",
        None,
        Some(&json!({"amount": 1, "reason": "x", "idempotencyKey": "a"})),
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

// ---------------------------------------------------------------------------------
// History and admin

#[test]
fn the_credit_history_pages_newest_first_with_a_cursor_and_sums_to_the_balance() {
    let s = shared();
    let c = new_customer(&s.app, "history");
    for i in 0..25 {
        let r = adjust(&s.app, &c.user_id, 1 + i % 3, &format!("n{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let expected_balance: i64 = (0..25).map(|i| 1 + i % 3).sum();
    // Default page size: 20.
    let first = user_get(&s.app, &c, "/api/credits").json();
    assert_eq!(first["transactions"].as_array().unwrap().len(), 20, "{first}");
    assert!(first["nextCursor"].is_string(), "{first}");
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/credits?limit=10".to_string(),
            Some(k) => format!("/api/credits?limit=10&cursor={}", urlencode(k)),
        };
        let r = user_get(&s.app, &c, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let body = r.json();
        assert_eq!(body["balance"], expected_balance, "{body}");
        pages += 1;
        seen.extend(body["transactions"].as_array().unwrap().iter().cloned());
        match body["nextCursor"].as_str() {
            Some(k) => cursor = Some(k.to_string()),
            None => {
                assert!(body["nextCursor"].is_null(), "{body}");
                break;
            }
        }
        assert!(pages < 10, "no end to the pages");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut ids: Vec<String> = seen.iter().map(|t| id_text(&t["id"])).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "no duplicates across pages");
    let mut notes: Vec<String> =
        seen.iter().map(|t| t["metadata"]["note"].as_str().unwrap_or_default().to_string()).collect();
    notes.sort();
    let mut all: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
    all.sort();
    assert_eq!(notes, all, "every adjustment, with its note");
    let times: Vec<&str> = seen.iter().map(|t| t["createdAt"].as_str().unwrap_or_default()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    for t in &seen {
        assert_eq!(t["reason"], "adjustment", "{t}");
        assert!(t["createdAt"].as_str().is_some_and(|x| x.ends_with('Z')), "{t}");
    }
    let sum: i64 = seen.iter().map(|t| t["delta"].as_i64().unwrap()).sum();
    assert_eq!(sum, expected_balance, "the history sums to the balance");
    assert_balance(&c, expected_balance, "history");
}

#[test]
fn the_credit_history_lists_rows_written_in_the_same_second_newest_first() {
    let s = shared();
    let c = new_customer(&s.app, "history-order");
    // A credit, then two spends: usually all within one second.
    give_credits(&s.app, &c, 100);
    assert_eq!(spend(&s.app, &c, 30, "order-1").status, 200);
    assert_eq!(spend(&s.app, &c, 5, "order-2").status, 200);
    let body = user_get(&s.app, &c, "/api/credits").json();
    let deltas: Vec<i64> =
        body["transactions"].as_array().unwrap().iter().map(|t| t["delta"].as_i64().unwrap()).collect();
    assert_eq!(deltas, [-5, -30, 100], "newest first, also within one second: {body}");
}

/// Percent-encodes a cursor for a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn an_admin_adjustment_needs_a_reason_never_goes_below_zero_and_is_audited() {
    let s = shared();
    let c = new_customer(&s.app, "adjust");
    let path = "/api/admin/credits/adjust";
    let r = user_post(&s.app, &c, path, json!({"userId": c.user_id, "delta": 5, "reason": "self-service"}));
    assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "a user's token: {}", r.body);
    let r = request(&s.app, "POST", path, None, Some(&json!({"userId": c.user_id, "delta": 5, "reason": "x"})));
    assert_eq!(r.status, 401, "{}", r.body);
    for body in [json!({"userId": c.user_id, "delta": 5}), json!({"userId": c.user_id, "delta": 5, "reason": ""})] {
        let r = admin_post(&s.app, path, body.clone());
        assert_eq!((r.status, error_code(&r.json())), (400, "REASON_REQUIRED"), "{body}: {}", r.body);
    }
    for body in [
        json!({"userId": c.user_id, "delta": 0, "reason": "x"}),
        json!({"userId": c.user_id, "delta": 1.5, "reason": "x"}),
        json!({"userId": c.user_id, "delta": "5", "reason": "x"}),
    ] {
        let r = admin_post(&s.app, path, body.clone());
        assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "{body}: {}", r.body);
    }
    let r = adjust(&s.app, "usr_doesnotexist0000", 5, "x");
    assert_eq!((r.status, error_code(&r.json())), (404, "USER_NOT_FOUND"), "{}", r.body);
    assert_balance(&c, 0, "nothing refused was written");

    let r = adjust(&s.app, &c.user_id, 30, "goodwill for ticket 42");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["ok"].as_bool(), r.json()["balance"].as_i64()), (Some(true), Some(30)), "{}", r.body);
    let tx = id_text(&r.json()["transactionId"]);
    let r = adjust(&s.app, &c.user_id, -31, "too much");
    assert_eq!((r.status, error_code(&r.json())), (402, "INSUFFICIENT_CREDITS"), "{}", r.body);
    let r = adjust(&s.app, &c.user_id, -30, "clawback");
    assert_eq!((r.status, r.json()["balance"].as_i64()), (200, Some(0)), "{}", r.body);
    assert_balance(&c, 0, "adjusted to zero");
    let rows = ledger(&s.app, &c.user_id, "adjustment");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(id_text(&rows[0]["id"]), tx);
    assert_eq!((rows[0]["delta"].as_i64(), rows[1]["delta"].as_i64()), (Some(30), Some(-30)));
    // `{"note": reason}`; other audit fields (who, which request) may sit beside it.
    assert_eq!(metadata(&rows[0])["note"], "goodwill for ticket 42", "{}", rows[0]);
    assert_eq!(metadata(&rows[1])["note"], "clawback", "{}", rows[1]);
    // The admin view of the user's ledger.
    let r = admin_get(&s.app, &format!("/api/admin/credits?userId={}", c.user_id));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["balance"], 0);
    let txs = body["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{body}");
    assert!(txs.iter().any(|t| t["metadata"]["note"] == "goodwill for ticket 42"), "{body}");
    let r = request(&s.app, "GET", &format!("/api/admin/credits?userId={}", c.user_id), Some(&token(&c.auth_id)), None);
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn a_period_grant_the_cron_also_finds_in_the_events_api_is_granted_once() {
    let _serial = crate::cron_serial();
    let app = crate::cron_app();
    let stripe = &shared().stripe;
    let start = now() - DAY;
    let c = new_customer(app, "grant-cron");
    stripe_says(app, stripe, subscription_in(&c, "active", PRICE_PRO, start, start + 30 * DAY));
    let ev = stripe.invoice_paid(&c.subscription, 2000, "subscription_cycle");
    // Delivered, yet Stripe lists it as undelivered (its delivery timed out), and the
    // `invoice.payment_succeeded` beside it reaches plangate only through the cron.
    let r = deliver(app, &ev);
    assert_eq!(r.status, 200, "{}", r.body);
    stripe.add_undelivered(ev.clone());
    let mut twin = ev.clone();
    twin["id"] = json!(format!("{}_ps", ev["id"].as_str().unwrap()));
    twin["type"] = json!("invoice.payment_succeeded");
    stripe.add_undelivered(twin.clone());
    run_cron(app, None);
    run_cron(app, None);
    let twin_row =
        app.sql(&format!("SELECT status, source FROM webhook_events WHERE id = '{}'", twin["id"].as_str().unwrap()));
    assert_eq!(
        (twin_row[0]["status"].as_str(), twin_row[0]["source"].as_str()),
        (Some("processed"), Some("reconcile"))
    );
    let grants = ledger(app, &c.user_id, "grant");
    assert_eq!(grants.len(), 1, "the cron looked too, one grant: {grants:?}");
    assert_eq!(grants[0]["source_key"], format!("period:{}:{start}", c.subscription));
    assert_eq!(ledger_sum(app, &c.user_id), 20);
}

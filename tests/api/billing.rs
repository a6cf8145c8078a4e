//! Billing actions end to end: wrangler dev + the stateful Stripe fake.

use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use crate::fixtures::{deliver, new_customer, user_row, Customer};
use crate::support::stripe_fake::decode;
use crate::support::{agent, get, send, token, Resp};
use crate::{error_code, shared, ALLOWED_ORIGIN_FOR_TESTS, PRICE_ESSENTIAL, PRICE_PREMIUM, PRICE_PRO};

fn call(c: &Customer, path: &str, body: Value) -> Resp {
    let auth = format!("Bearer {}", token(&c.auth_id));
    let b = body.to_string();
    send(
        &agent(),
        "POST",
        &shared().app.url(path),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(b.as_bytes()),
    )
}

/// The POSTs the fake received for one subscription.
fn posts_to(sub: &str) -> Vec<crate::support::stripe_fake::Recorded> {
    shared()
        .stripe
        .requests_about(&format!("/v1/subscriptions/{sub}"))
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn plan_me(c: &Customer) -> Value {
    get(&shared().app.url("/api/plan/me"), Some(&token(&c.auth_id))).json()
}

fn customer_of(c: &Customer) -> String {
    user_row(&shared().app, &c.user_id)["stripe_customer_id"].as_str().expect("customer linked").to_string()
}

/// Completes the checkout behind `url` and delivers Stripe's webhooks for it.
fn pay(url: &str) -> String {
    let s = shared();
    let session = s.stripe.session_by_url(url).expect("session exists at the fake");
    let events = s.stripe.complete_checkout(session["id"].as_str().unwrap());
    for ev in &events {
        let r = deliver(&s.app, ev);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    events[1]["data"]["object"]["id"].as_str().unwrap().to_string()
}

/// A user on `plan` (paid through Checkout, webhooks delivered). Returns the sub id.
fn on_plan(label: &str, plan: &str) -> (Customer, String) {
    let c = new_customer(&shared().app, label);
    let r = call(
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": plan, "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/billing")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "redirect");
    let sub = pay(r.json()["url"].as_str().unwrap());
    assert_eq!(plan_me(&c)["plan"], plan);
    (c, sub)
}

#[test]
fn free_to_essential_redirects_to_checkout_and_the_webhooks_make_it_essential() {
    let s = shared();
    let c = new_customer(&s.app, "free-to-ess");
    let r = call(
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": "essential", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/billing?tab=1"), "source": "dashboard"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["action"], "redirect");
    let url = body["url"].as_str().unwrap();
    assert!(url.starts_with("https://checkout.stripe.test/"));
    let session = s.stripe.session_by_url(url).unwrap();
    assert_eq!(session["mode"], "subscription");
    assert_eq!(session["price"], PRICE_ESSENTIAL);
    assert_eq!(session["client_reference_id"], c.user_id.as_str());
    assert_eq!(session["success_url"], format!("{ALLOWED_ORIGIN_FOR_TESTS}/billing?tab=1&checkout=success"));
    // The customer was created once, with the user's id in its metadata.
    let customer = customer_of(&c);
    assert_eq!(s.stripe.state.lock().unwrap().customers[&customer]["metadata"]["user_id"], c.user_id.as_str());
    assert_eq!(plan_me(&c)["plan"], "free", "nothing changes until Stripe says it was paid");
    pay(url);
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["subscriptionStatus"].as_str()), (Some("essential"), Some("active")));
}

#[test]
fn a_trialing_user_starts_paying_now_with_one_update_and_no_new_subscription() {
    let s = shared();
    let c = new_customer(&s.app, "trial-now");
    let r =
        call(&c, "/api/stripe-checkout", json!({"plan": "trial", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}));
    assert_eq!(r.status, 200, "{}", r.body);
    let sub = pay(r.json()["url"].as_str().unwrap());
    assert_eq!(plan_me(&c)["plan"], "trial");
    let before = posts_to(&sub).len();
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "updated");
    let posts: Vec<_> = posts_to(&sub);
    assert_eq!(posts.len() - before, 1, "one update call");
    assert!(posts.last().unwrap().body.contains("trial_end=now"));
    assert_eq!(s.stripe.subscriptions_of(&customer_of(&c)).len(), 1, "no second subscription");
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["subscriptionStatus"].as_str()), (Some("essential"), Some("active")));
    // Trials are once per user.
    let r = call(&c, "/api/stripe-checkout", json!({"plan": "trial"}));
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r.json()), "ALREADY_SUBSCRIBED");
    assert_eq!(r.json()["plan"], "essential");
}

#[test]
fn upgrades_happen_in_place_and_same_or_lower_targets_are_refused() {
    let s = shared();
    let (c, sub) = on_plan("in-place", "essential");
    for (target, price) in [("pro", PRICE_PRO), ("premium", PRICE_PREMIUM)] {
        let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": target}));
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!(body["action"], "updated");
        assert_eq!(body["plan"], target);
        assert_eq!(body["subscriptionId"], sub.as_str());
        assert_eq!(body["customerId"], customer_of(&c).as_str());
        // D1 follows Stripe's answer at once, before any webhook.
        assert_eq!(plan_me(&c)["plan"], target);
        assert_eq!(s.stripe.subscription(&sub).unwrap()["items"]["data"][0]["price"]["id"], price);
    }
    assert_eq!(s.stripe.subscriptions_of(&customer_of(&c)).len(), 1);
    let audit = s.app.sql(&format!(
        "SELECT cause, new_plan FROM plan_changes WHERE user_id = '{}' AND cause = 'api:upgrade'",
        c.user_id
    ));
    assert_eq!(audit.len(), 2);
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "ALREADY_ON_PLAN"));
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "DOWNGRADE_NOT_ALLOWED"));
    let (c2, _) = on_plan("pro-pro", "pro");
    let r = call(&c2, "/api/upgrade-plan", json!({"targetPlan": "pro"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "ALREADY_ON_PLAN"));
}

#[test]
fn invalid_input_is_refused_with_a_clear_code_and_changes_nothing() {
    let c = new_customer(&shared().app, "invalid");
    for body in [
        json!({"targetPlan": "gold"}),
        json!({"targetPlan": "free"}),
        json!({"targetPlan": "trial"}),
        json!({"targetPlan": 3}),
    ] {
        let r = call(&c, "/api/upgrade-plan", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(["INVALID_PLAN", "INVALID_REQUEST"].contains(&error_code(&r.json())), "{body}");
    }
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "pro", "returnUrl": "https://evil.example/steal"}));
    assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"));
    let r = call(
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": "pro", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}.evil.example/x")}),
    );
    assert_eq!(r.status, 400);
    let r = send(&agent(), "POST", &shared().app.url("/api/upgrade-plan"), &[], Some(br#"{"targetPlan":"pro"}"#));
    assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"));
    let r = call(&c, "/api/downgrade-plan", json!({"targetPlan": "nope"}));
    assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_PLAN"));
    assert!(
        user_row(&shared().app, &c.user_id)["stripe_customer_id"].is_null(),
        "no Stripe customer for refused input"
    );
}

#[test]
fn a_customer_never_has_two_open_checkout_sessions() {
    let s = shared();
    let c = new_customer(&s.app, "two-sessions");
    let first = call(&c, "/api/stripe-checkout", json!({"plan": "pro"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let again = call(&c, "/api/stripe-checkout", json!({"plan": "pro"}));
    assert_eq!(again.json()["url"], first.json()["url"], "the same offer reuses the open session");
    let other = call(&c, "/api/stripe-checkout", json!({"plan": "premium"}));
    assert_eq!(other.status, 200, "{}", other.body);
    assert_ne!(other.json()["url"], first.json()["url"]);
    let sessions = s.stripe.sessions_of(&customer_of(&c));
    let open: Vec<_> = sessions.iter().filter(|x| x["status"] == "open").collect();
    assert_eq!(open.len(), 1, "{sessions:?}");
    assert_eq!(open[0]["price"], PRICE_PREMIUM);
    assert_eq!(sessions.iter().filter(|x| x["status"] == "expired").count(), 1);
}

#[test]
fn ten_concurrent_clicks_create_exactly_one_subscription() {
    let s = shared();
    let c = Arc::new(new_customer(&s.app, "ten-clicks"));
    let run = |path: &'static str, body: Value| -> Vec<Resp> {
        let barrier = Arc::new(Barrier::new(10));
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let (c, barrier, body) = (c.clone(), barrier.clone(), body.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    call(&c, path, body)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let answers = run("/api/upgrade-plan", json!({"targetPlan": "essential"}));
    let mut urls = std::collections::BTreeSet::new();
    for a in &answers {
        match a.status {
            200 => {
                urls.insert(a.json()["url"].as_str().unwrap().to_string());
            }
            409 => assert_eq!(error_code(&a.json()), "BILLING_IN_PROGRESS", "{}", a.body),
            other => panic!("{other}: {}", a.body),
        }
    }
    assert_eq!(urls.len(), 1, "one checkout session whatever the clicks");
    let customer = customer_of(&c);
    assert_eq!(
        s.stripe
            .state
            .lock()
            .unwrap()
            .customers
            .values()
            .filter(|x| x["metadata"]["user_id"] == c.user_id.as_str())
            .count(),
        1,
        "one customer"
    );
    pay(urls.iter().next().unwrap());
    // Paid: ten more clicks on checkout are all refused.
    for a in run("/api/stripe-checkout", json!({"plan": "essential"})) {
        assert_eq!(a.status, 409, "{}", a.body);
        assert!(["ALREADY_SUBSCRIBED", "BILLING_IN_PROGRESS"].contains(&error_code(&a.json())));
    }
    // Ten concurrent upgrade clicks: one in-place update, the rest refused.
    let answers = run("/api/upgrade-plan", json!({"targetPlan": "pro"}));
    let updated = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(updated, 1, "{:?}", answers.iter().map(|a| &a.body).collect::<Vec<_>>());
    for a in answers.iter().filter(|a| a.status != 200) {
        assert!(["BILLING_IN_PROGRESS", "ALREADY_ON_PLAN"].contains(&error_code(&a.json())), "{}", a.body);
    }
    assert_eq!(s.stripe.subscriptions_of(&customer).len(), 1, "exactly one Stripe subscription");
    assert_eq!(plan_me(&c)["plan"], "pro");
}

#[test]
fn stripe_failing_twice_then_succeeding_is_one_update_with_one_idempotency_key() {
    let s = shared();
    let (c, sub) = on_plan("flaky", "essential");
    s.stripe.fail_next_posts(&format!("/v1/subscriptions/{sub}"), 2);
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "pro"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let posts: Vec<_> = posts_to(&sub);
    assert_eq!(posts.len(), 3, "two failures and the success");
    let keys: std::collections::BTreeSet<_> =
        posts.iter().map(|p| p.header("Idempotency-Key").unwrap().to_string()).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(plan_me(&c)["plan"], "pro");
}

#[test]
fn stripe_down_is_a_502_update_failed_and_d1_is_unchanged() {
    let s = shared();
    let (c, sub) = on_plan("down", "essential");
    let before = user_row(&s.app, &c.user_id);
    let audit_before = s.app.count(&format!("SELECT count(*) FROM plan_changes WHERE user_id = '{}'", c.user_id));
    s.stripe.set_failing(&sub, true);
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(error_code(&r.json()), "UPDATE_FAILED");
    assert!(!r.body.contains(&sub), "no Stripe internals in the answer");
    let r = call(&c, "/api/cancel-subscription", json!({}));
    assert_eq!((r.status, error_code(&r.json())), (502, "UPDATE_FAILED"));
    s.stripe.set_failing(&sub, false);
    assert_eq!(user_row(&s.app, &c.user_id), before);
    assert_eq!(
        s.app.count(&format!("SELECT count(*) FROM plan_changes WHERE user_id = '{}'", c.user_id)),
        audit_before
    );
    // The lock was released: the next action works.
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn cancel_resume_cancel_then_the_period_ends() {
    let s = shared();
    let (c, sub) = on_plan("cancel", "pro");
    let period_end = s.stripe.subscription(&sub).unwrap()["current_period_end"].as_i64().unwrap();
    for (path, cancelling) in
        [("/api/cancel-subscription", true), ("/api/resume-subscription", false), ("/api/cancel-subscription", true)]
    {
        let r = call(&c, path, json!({}));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(s.stripe.subscription(&sub).unwrap()["cancel_at_period_end"], cancelling, "{path}");
        let me = plan_me(&c);
        assert_eq!(me["plan"], "pro", "{path}: still pro until the period ends");
        assert_eq!(me["cancelAt"].is_string(), cancelling, "{path}: {me}");
        assert_eq!(r.json()["cancelAt"], me["cancelAt"]);
    }
    assert_eq!(plan_me(&c)["cancelAt"], crate::support::iso(period_end));
    assert_eq!(plan_me(&c)["scheduledPlan"], "free");
    let r = deliver(&s.app, &s.stripe.advance_period(&sub));
    assert_eq!(r.status, 200, "{}", r.body);
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["subscriptionStatus"].as_str()), (Some("free"), Some("canceled")));
    // Nothing left to cancel or resume.
    let r = call(&c, "/api/resume-subscription", json!({}));
    assert_eq!((r.status, error_code(&r.json())), (409, "NO_ACTIVE_SUBSCRIPTION"));
}

#[test]
fn a_downgrade_takes_effect_at_the_period_end_and_a_later_upgrade_clears_it() {
    let s = shared();
    let (c, sub) = on_plan("downgrade", "pro");
    let period_end = s.stripe.subscription(&sub).unwrap()["current_period_end"].as_i64().unwrap();
    let r = call(&c, "/api/downgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let me = plan_me(&c);
    assert_eq!(me["plan"], "pro", "the lower tier waits for the period end");
    assert_eq!(me["scheduledPlan"], "essential");
    assert_eq!(me["scheduledAt"], crate::support::iso(period_end));
    // An upgrade releases the schedule.
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(s.stripe.subscription(&sub).unwrap()["schedule"].is_null());
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["scheduledPlan"].as_str()), (Some("premium"), None));
    // Downgrade again and let the period end.
    let r = call(&c, "/api/downgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = deliver(&s.app, &s.stripe.advance_period(&sub));
    assert_eq!(r.status, 200, "{}", r.body);
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["scheduledPlan"].as_str()), (Some("essential"), None));
    // Same or higher is not a downgrade.
    let r = call(&c, "/api/downgrade-plan", json!({"targetPlan": "pro"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "NOT_A_DOWNGRADE"));
}

#[test]
fn a_downgrade_to_free_cancels_at_the_period_end() {
    let s = shared();
    let (c, sub) = on_plan("to-free", "essential");
    let r = call(&c, "/api/downgrade-plan", json!({"targetPlan": "free"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.stripe.subscription(&sub).unwrap()["cancel_at_period_end"], true);
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["scheduledPlan"].as_str()), (Some("essential"), Some("free")));
    deliver(&s.app, &s.stripe.advance_period(&sub));
    assert_eq!(plan_me(&c)["plan"], "free");
}

#[test]
fn sync_and_portal_work_for_the_caller() {
    let s = shared();
    let (c, sub) = on_plan("sync", "essential");
    // Stripe changes behind our back (say, in the dashboard); sync stores the truth.
    let mut changed = s.stripe.subscription(&sub).unwrap();
    changed["items"]["data"][0]["price"] = json!({"id": PRICE_PREMIUM});
    s.stripe.put_subscription(changed);
    let r = call(&c, "/api/sync-stripe-plan", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["plan"], "premium");
    assert_eq!(plan_me(&c)["plan"], "premium");
    let r = call(&c, "/api/billing-portal", json!({"returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/account")}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["url"].as_str().unwrap().starts_with("https://billing.stripe.test/"));
    let r = call(&c, "/api/billing-portal", json!({"returnUrl": "javascript:alert(1)"}));
    assert_eq!(r.status, 400);
}

#[test]
fn another_users_token_never_acts_on_this_users_subscription() {
    let s = shared();
    let (owner, sub) = on_plan("owner", "pro");
    let intruder = new_customer(&s.app, "intruder");
    for path in ["/api/cancel-subscription", "/api/resume-subscription"] {
        let r = call(&intruder, path, json!({"subscriptionId": sub}));
        assert!(r.status == 409 || r.status == 400, "{path}: {} {}", r.status, r.body);
    }
    let r = call(&intruder, "/api/downgrade-plan", json!({"targetPlan": "free"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "NO_ACTIVE_SUBSCRIPTION"));
    // The intruder's upgrade is a checkout for the intruder's own, new customer.
    let r = call(&intruder, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!(r.json()["action"], "redirect");
    let session = s.stripe.session_by_url(r.json()["url"].as_str().unwrap()).unwrap();
    assert_ne!(session["customer"], customer_of(&owner).as_str());
    assert_eq!(session["client_reference_id"], intruder.user_id.as_str());
    let theirs = s.stripe.subscription(&sub).unwrap();
    assert_eq!(theirs["cancel_at_period_end"], false);
    assert_eq!(theirs["items"]["data"][0]["price"]["id"], PRICE_PRO);
    assert_eq!(plan_me(&owner)["plan"], "pro");
}

/// Makes traffic of every kind, then checks every request the fake has received so far.
#[test]
fn zz_every_stripe_request_is_well_formed_versioned_and_idempotent() {
    let s = shared();
    // Make sure there is traffic of every kind first.
    let (c, _) = on_plan("wellformed", "essential");
    assert_eq!(call(&c, "/api/upgrade-plan", json!({"targetPlan": "pro"})).status, 200);
    assert_eq!(call(&c, "/api/downgrade-plan", json!({"targetPlan": "essential"})).status, 200);
    assert_eq!(call(&c, "/api/cancel-subscription", json!({})).status, 200);
    let requests = s.stripe.requests();
    assert!(requests.iter().filter(|r| r.method == "POST").count() >= 5);
    for r in &requests {
        assert_eq!(r.header("Stripe-Version"), Some("2024-06-20"), "{} {}", r.method, r.path);
        assert!(r.header("Authorization").is_some_and(|a| a.starts_with("Bearer sk_test_")));
        for part in [r.query.as_str(), r.body.as_str()] {
            for pair in part.split('&').filter(|p| !p.is_empty()) {
                let (k, v) =
                    pair.split_once('=').unwrap_or_else(|| panic!("not a key=value pair: {pair:?} in {}", r.path));
                for raw in [k, v] {
                    assert!(
                        raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)),
                        "unencoded byte in {raw:?} ({})",
                        r.path
                    );
                }
                let key = decode(k);
                assert!(
                    key.chars().filter(|c| *c == '[').count() == key.chars().filter(|c| *c == ']').count(),
                    "{key}"
                );
            }
        }
        if r.method == "POST" {
            assert_eq!(r.header("Content-Type"), Some("application/x-www-form-urlencoded"), "{}", r.path);
            let key = r.header("Idempotency-Key").unwrap_or_else(|| panic!("POST {} without Idempotency-Key", r.path));
            assert!(key.starts_with("plangate:"), "{key}");
        } else {
            assert!(r.body.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------
// Hardening: races with Stripe, statuses that may still bill, deleted customers.

fn customers_for(c: &Customer) -> usize {
    shared().stripe.customers_of_user(&c.user_id).len()
}

#[test]
fn a_session_paid_while_plangate_replaces_it_is_answered_already_subscribed_not_a_second_subscription() {
    let s = shared();
    let c = new_customer(&s.app, "paid-meanwhile");
    let first = call(&c, "/api/stripe-checkout", json!({"plan": "pro"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let session = s.stripe.session_by_url(first.json()["url"].as_str().unwrap()).unwrap();
    // The customer pays the pro session in the instant between plangate listing it
    // and asking Stripe to expire it (Stripe then refuses the expire with a 400).
    s.stripe.pay_before_expire(session["id"].as_str().unwrap());
    let r = call(&c, "/api/stripe-checkout", json!({"plan": "premium"}));
    assert_eq!((r.status, error_code(&r.json())), (409, "ALREADY_SUBSCRIBED"), "{}", r.body);
    assert_eq!(r.json()["plan"], "pro");
    let customer = customer_of(&c);
    assert!(s.stripe.sessions_of(&customer).iter().all(|x| x["status"] != "open"), "no new session to pay");
    assert_eq!(s.stripe.subscriptions_of(&customer).len(), 1);
    assert_eq!(plan_me(&c)["plan"], "pro", "D1 already follows what Stripe says");
}

#[test]
fn a_subscription_that_may_still_become_live_blocks_checkout_and_upgrade_with_payment_pending() {
    let s = shared();
    for (status, invoice) in [("incomplete", true), ("paused", false), ("unpaid", true)] {
        let c = new_customer(&s.app, &format!("pending-{status}"));
        // Gets a customer, nothing else.
        let r = call(&c, "/api/billing-portal", json!({"returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}));
        assert_eq!(r.status, 200, "{}", r.body);
        let customer = customer_of(&c);
        let mut sub = crate::fixtures::subscription(&c, status, PRICE_PRO);
        sub["customer"] = json!(customer);
        if invoice {
            sub["latest_invoice"] = json!({"id": "in_1", "object": "invoice", "status": "open",
                                          "hosted_invoice_url": "https://invoice.stripe.test/i/pay_1"});
        }
        s.stripe.put_subscription(sub);
        for (path, body) in [
            ("/api/stripe-checkout", json!({"plan": "premium"})),
            (
                "/api/upgrade-plan",
                json!({"targetPlan": "premium", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}),
            ),
        ] {
            let r = call(&c, path, body);
            assert_eq!((r.status, error_code(&r.json())), (409, "PAYMENT_PENDING"), "{status} {path}: {}", r.body);
            assert_eq!(r.json()["subscriptionStatus"], status);
            if invoice {
                assert_eq!(r.json()["invoiceUrl"], "https://invoice.stripe.test/i/pay_1");
            } else {
                assert!(r.json().get("invoiceUrl").is_none());
            }
        }
        assert!(s.stripe.sessions_of(&customer).is_empty(), "{status}: no checkout session beside it");
    }
}

#[test]
fn cancelling_ends_every_subscription_the_customer_pays_for_and_audits_each() {
    let s = shared();
    let (c, best_sub) = on_plan("cancel-all", "premium");
    let customer = customer_of(&c);
    // A legacy duplicate (the old system let a second checkout through) and one still
    // waiting for its first payment.
    for (suffix, status, price) in [("dup", "active", PRICE_ESSENTIAL), ("wait", "incomplete", PRICE_PRO)] {
        let mut dup = crate::fixtures::subscription(&c, status, price);
        dup["id"] = json!(format!("{}_{suffix}", c.subscription));
        dup["customer"] = json!(customer);
        s.stripe.put_subscription(dup);
    }
    let r = call(&c, "/api/cancel-subscription", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "cancel_scheduled");
    let best = s.stripe.subscription(&best_sub).unwrap();
    assert_eq!((best["status"].as_str(), best["cancel_at_period_end"].as_bool()), (Some("active"), Some(true)));
    for suffix in ["dup", "wait"] {
        let id = format!("{}_{suffix}", c.subscription);
        assert_eq!(s.stripe.subscription(&id).unwrap()["status"], "canceled", "{id} ends now");
        let audit = s.app.sql(&format!(
            "SELECT cause, new_status FROM plan_changes WHERE user_id = '{}' AND subscription_id = '{id}'",
            c.user_id
        ));
        assert_eq!(audit.len(), 1, "{id}: {audit:?}");
        assert_eq!(
            (audit[0]["cause"].as_str(), audit[0]["new_status"].as_str()),
            (Some("api:cancel"), Some("canceled"))
        );
    }
    // The best one's cancellation at the period end is audited too, once.
    let best_audit = |app: &crate::support::App| {
        app.sql(&format!(
            "SELECT cause, old_plan, new_plan, new_status FROM plan_changes WHERE user_id = '{}' AND subscription_id = '{best_sub}'",
            c.user_id
        ))
        .into_iter()
        .filter(|row| row["cause"] == "api:cancel")
        .collect::<Vec<_>>()
    };
    let audit = best_audit(&s.app);
    assert_eq!(audit.len(), 1, "{best_sub}: {audit:?}");
    assert_eq!(
        (audit[0]["old_plan"].as_str(), audit[0]["new_plan"].as_str(), audit[0]["new_status"].as_str()),
        (Some("premium"), Some("premium"), Some("active")),
        "paid until the period end"
    );
    let me = plan_me(&c);
    assert_eq!(me["plan"], "premium", "paid until the period end");
    assert!(me["cancelAt"].is_string());
    // Cancelling again changes nothing at Stripe and records nothing more.
    let r = call(&c, "/api/cancel-subscription", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(best_audit(&s.app).len(), 1);
}

#[test]
fn an_in_place_upgrade_stores_stripe_state_as_of_the_answers_arrival_not_the_requests_start() {
    let s = shared();
    let (c, sub) = on_plan("asof-upgrade", "essential");
    // Stripe takes a while to answer the update.
    let (started, released, r) =
        with_stripe_slow_on(&sub, || call(&c, "/api/upgrade-plan", json!({"targetPlan": "pro"})));
    assert_eq!(r.status, 200, "{}", r.body);
    let row = user_row(&s.app, &c.user_id);
    assert_eq!(row["plan"], "pro");
    let synced = row["stripe_synced_at"].as_i64().unwrap();
    assert!(
        (released..=crate::support::now()).contains(&synced),
        "stripe_synced_at {synced}: the request started at {started}, Stripe answered at {released}"
    );
}

/// Runs `action` while Stripe holds every request whose path ends with `id` for 2.5 s.
/// Returns when `action` started and when Stripe answered (unix seconds), and its result.
fn with_stripe_slow_on<T>(id: &str, action: impl FnOnce() -> T) -> (i64, i64, T) {
    let stripe = shared().stripe.clone();
    stripe.set_hanging(id, true);
    let started = crate::support::now();
    let held = id.to_string();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let at = crate::support::now();
        stripe.set_hanging(&held, false);
        at
    });
    let out = action();
    let released = release.join().unwrap();
    assert!(released >= started + 2, "{started} {released}");
    (started, released, out)
}

#[test]
fn a_customer_created_at_stripe_whose_answer_was_lost_is_reused_by_the_next_action() {
    let s = shared();
    let c = new_customer(&s.app, "lost-customer");
    // Stripe creates the customer three times over (each retry), but every answer is lost.
    s.stripe.lose_next_answers(&format!("metadata%5Buser_id%5D={}", c.user_id), 3);
    let r = call(&c, "/api/stripe-checkout", json!({"plan": "pro"}));
    assert_eq!((r.status, error_code(&r.json())), (500, "CUSTOMER_NOT_FOUND"), "{}", r.body);
    assert!(user_row(&s.app, &c.user_id)["stripe_customer_id"].is_null());
    // Another action, another sequence number: still the same customer.
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(customers_for(&c), 1, "one Stripe customer per user");
}

#[test]
fn a_customer_deleted_in_the_dashboard_is_cleared_by_its_event_and_replaced_by_the_next_action() {
    let s = shared();
    let (c, _) = on_plan("cust-deleted", "essential");
    let old = customer_of(&c);
    let ev = s.stripe.delete_customer(&old);
    let r = deliver(&s.app, &ev);
    assert_eq!(r.status, 200, "{}", r.body);
    let row = user_row(&s.app, &c.user_id);
    assert!(row["stripe_customer_id"].is_null() && row["stripe_subscription_id"].is_null(), "{row}");
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["subscriptionStatus"].as_str()), (Some("free"), None));
    let audit = s.app.sql(&format!(
        "SELECT old_plan, new_plan FROM plan_changes WHERE user_id = '{}' AND cause = 'webhook:{}'",
        c.user_id,
        ev["id"].as_str().unwrap()
    ));
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0]["old_plan"].as_str(), audit[0]["new_plan"].as_str()), (Some("essential"), Some("free")));
    let r = call(
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": "pro", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "redirect");
    assert_ne!(customer_of(&c), old, "a new customer");
}

#[test]
fn an_action_that_meets_a_deleted_customer_recovers_with_a_new_one_instead_of_failing_forever() {
    let s = shared();
    let c = new_customer(&s.app, "cust-missing");
    let r = call(&c, "/api/billing-portal", json!({"returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}));
    assert_eq!(r.status, 200, "{}", r.body);
    let old = customer_of(&c);
    s.stripe.delete_customer(&old); // the event never arrives
                                    // Stripe is slow to confirm the deletion: the clearing is stored as of its answer.
    let portal = || call(&c, "/api/billing-portal", json!({"returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}));
    let (started, released, r) = with_stripe_slow_on(&old, portal);
    assert_eq!(r.status, 200, "{}", r.body);
    let synced = user_row(&s.app, &c.user_id)["stripe_synced_at"].as_i64().unwrap();
    assert!(
        (released..=crate::support::now()).contains(&synced),
        "stripe_synced_at {synced}: the request started at {started}, Stripe answered at {released}"
    );
    let r = portal();
    assert_eq!(r.status, 200, "{}", r.body);
    let new = customer_of(&c);
    assert_ne!(new, old);
    assert_eq!(customers_for(&c), 2, "one replacement, not one per call");
    let audit = s.app.sql(&format!(
        "SELECT cause FROM plan_changes WHERE user_id = '{}' AND cause = 'api:customer_missing'",
        c.user_id
    ));
    assert_eq!(audit.len(), 1);
}

#[test]
fn a_session_paid_before_plangate_lists_the_open_ones_is_still_never_followed_by_a_second() {
    let s = shared();
    let c = new_customer(&s.app, "paid-before-list");
    let first = call(&c, "/api/stripe-checkout", json!({"plan": "pro"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let session = s.stripe.session_by_url(first.json()["url"].as_str().unwrap()).unwrap();
    // Tab A pays after tab B's action checked the subscriptions but before it lists the
    // open sessions: there is nothing left to expire, and the guard's answer is stale.
    s.stripe.pay_before_listing(session["id"].as_str().unwrap());
    let r = call(
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": "premium", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}),
    );
    assert_eq!((r.status, error_code(&r.json())), (409, "ALREADY_SUBSCRIBED"), "{}", r.body);
    let customer = customer_of(&c);
    assert!(s.stripe.sessions_of(&customer).iter().all(|x| x["status"] != "open"), "no second session to pay");
    assert_eq!(s.stripe.subscriptions_of(&customer).len(), 1);
    assert_eq!(plan_me(&c)["plan"], "pro");
}

#[test]
fn upgrading_while_a_cancellation_is_pending_keeps_the_subscription() {
    let s = shared();
    let (c, sub) = on_plan("upgrade-cancelled", "essential");
    let r = call(&c, "/api/cancel-subscription", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.stripe.subscription(&sub).unwrap()["cancel_at_period_end"], true);
    let r = call(&c, "/api/upgrade-plan", json!({"targetPlan": "pro"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let now = s.stripe.subscription(&sub).unwrap();
    assert_eq!(now["cancel_at_period_end"], false, "paying for an upgrade does not end at the period end");
    assert_eq!(now["items"]["data"][0]["price"]["id"], PRICE_PRO);
    let me = plan_me(&c);
    assert_eq!((me["plan"].as_str(), me["cancelAt"].is_null()), (Some("pro"), true), "{me}");
}

#[test]
fn a_customer_stripe_does_not_know_is_not_taken_for_deleted_and_nothing_is_cleared() {
    let s = shared();
    let (c, sub) = on_plan("cust-unknown", "essential");
    let customer = customer_of(&c);
    // A wrong key or mode makes Stripe answer 404 for a customer that exists elsewhere.
    s.stripe.forget_customer(&customer);
    let r = call(&c, "/api/billing-portal", json!({"returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}));
    assert_eq!((r.status, error_code(&r.json())), (502, "CUSTOMER_MISSING"), "{}", r.body);
    let row = user_row(&s.app, &c.user_id);
    assert_eq!(row["stripe_customer_id"], customer.as_str(), "the customer is kept");
    assert_eq!((row["plan"].as_str(), row["stripe_subscription_id"].as_str()), (Some("essential"), Some(sub.as_str())));
    assert_eq!(customers_for(&c), 0, "no replacement customer was created");
}

#[test]
fn a_customer_whose_creation_answer_was_lost_is_reused_even_when_the_email_arrived_meanwhile() {
    use crate::support::{claims, hs256, unique, JWT_SECRET};
    let s = shared();
    let auth_id = unique("email-later");
    let mut no_email = claims(&auth_id);
    no_email.as_object_mut().unwrap().remove("email");
    let bare = hs256(JWT_SECRET, &no_email);
    let with_email = crate::support::token(&auth_id);
    let post = |token: &str, body: Value| {
        let auth = format!("Bearer {token}");
        let b = body.to_string();
        send(
            &agent(),
            "POST",
            &s.app.url("/api/stripe-checkout"),
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            Some(b.as_bytes()),
        )
    };
    assert_eq!(get(&s.app.url("/api/plan/me"), Some(&bare)).status, 200);
    let user_id =
        s.app.sql(&format!("SELECT id FROM users WHERE auth_id = '{auth_id}'"))[0]["id"].as_str().unwrap().to_string();
    s.stripe.lose_next_answers(&format!("metadata%5Buser_id%5D={user_id}"), 3);
    let r = post(&bare, json!({"plan": "pro"}));
    assert_eq!((r.status, error_code(&r.json())), (500, "CUSTOMER_NOT_FOUND"), "{}", r.body);
    // The next request carries the email (the row gets it), then creates the customer again.
    assert_eq!(get(&s.app.url("/api/plan/me"), Some(&with_email)).status, 200);
    let r = post(&with_email, json!({"plan": "pro"}));
    assert_eq!(r.status, 200, "the same key with the same parameters: {}", r.body);
    let customers = s.stripe.customers_of_user(&user_id);
    assert_eq!(customers.len(), 1, "{customers:?}");
    assert_eq!(customers[0]["email"], format!("{auth_id}@example.test"), "the email follows in its own request");
}

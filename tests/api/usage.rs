//! Usage quotas end to end: atomic consumption under concurrency, the limit boundary,
//! idempotency keys, features outside the plan, credit-priced features, and the period
//! (Stripe's billing period when subscribed, else the UTC month).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::fixtures::*;
use crate::support::{iso, now, service_token};
use crate::{error_code, shared, ADMIN_TOKEN, PRICE_ESSENTIAL, PRICE_PRO};

const DAY: i64 = 86400;

/// `resetsAt` of a subscribed user: their period end, as D1 holds it.
fn period_end_of(c: &Customer) -> String {
    let row = user_row(&shared().app, &c.user_id);
    iso(row["current_period_end"].as_i64().unwrap_or_else(|| panic!("no period end: {row}")))
}

fn usage_of(c: &Customer) -> Value {
    let r = user_get(&shared().app, c, "/api/usage");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn used_in_d1(c: &Customer, feature: &str) -> i64 {
    shared().app.count(&format!(
        "SELECT COALESCE(SUM(used), 0) FROM usage WHERE user_id = '{}' AND feature = '{feature}'",
        c.user_id
    ))
}

#[test]
fn one_hundred_concurrent_consumes_against_a_limit_of_ten_let_exactly_ten_through() {
    let s = shared();
    // essential: cover_letter = 10 a period.
    let c = Arc::new(subscribed(&s.app, &s.stripe, "consume-100"));
    let resets = period_end_of(&c);
    let who = c.clone();
    let load = crate::load_serial();
    let answers = at_once(100, move |i| consume(&shared().app, &who, "cover_letter", 1, &format!("c100-{i}")));
    drop(load);
    let ok: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(ok.len(), 10, "{:?}", answers.iter().map(|a| (a.status, &a.body)).collect::<Vec<_>>());
    let mut used: Vec<i64> = ok.iter().map(|a| a.json()["used"].as_i64().unwrap()).collect();
    used.sort();
    assert_eq!(used, (1..=10).collect::<Vec<_>>(), "each success saw its own count");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!((a.status, error_code(&a.json())), (402, "QUOTA_EXCEEDED"), "{}", a.body);
        let body = a.json();
        assert_eq!((body["limit"].as_i64(), body["used"].as_i64()), (Some(10), Some(10)), "{body}");
        assert_eq!(body["resetsAt"], resets.as_str(), "{body}");
    }
    assert_eq!(used_in_d1(&c, "cover_letter"), 10, "usage.used");
    assert_eq!(
        s.app
            .count(&format!("SELECT COUNT(*) FROM usage WHERE user_id = '{}' AND feature = 'cover_letter'", c.user_id)),
        1,
        "one row for (user, period, feature)"
    );
    let u = usage_of(&c);
    assert_eq!(u["usage"]["cover_letter"], json!({"limit": 10, "used": 10, "remaining": 0, "resetsAt": resets}));
}

#[test]
fn the_limit_th_use_succeeds_and_the_next_is_quota_exceeded_with_limit_used_and_resets_at() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "boundary");
    let resets = period_end_of(&c);
    let r = consume(&s.app, &c, "cover_letter", 9, "b1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"ok": true, "feature": "cover_letter", "used": 9, "limit": 10, "remaining": 1, "resetsAt": resets,
               "replayed": false})
    );
    // 9 + 2 > 10: refused whole, nothing counted.
    let r = consume(&s.app, &c, "cover_letter", 2, "b2");
    assert_eq!((r.status, error_code(&r.json())), (402, "QUOTA_EXCEEDED"), "{}", r.body);
    assert_eq!((r.json()["limit"].as_i64(), r.json()["used"].as_i64()), (Some(10), Some(9)), "{}", r.body);
    assert_eq!(r.json()["resetsAt"], resets.as_str());
    // The 10th use.
    let r = consume(&s.app, &c, "cover_letter", 1, "b3");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["used"].as_i64(), r.json()["remaining"].as_i64()), (Some(10), Some(0)));
    // The 11th.
    let r = consume(&s.app, &c, "cover_letter", 1, "b4");
    assert_eq!((r.status, error_code(&r.json())), (402, "QUOTA_EXCEEDED"), "{}", r.body);
    let body = r.json();
    assert_eq!((body["limit"].as_i64(), body["used"].as_i64()), (Some(10), Some(10)), "{body}");
    assert_eq!(body["resetsAt"], resets.as_str());
    assert_eq!(used_in_d1(&c, "cover_letter"), 10);
    // Other features have their own counts: resume_feedback (20) is untouched.
    assert_eq!(usage_of(&c)["usage"]["resume_feedback"]["used"], 0);
}

#[test]
fn the_same_idempotency_key_counts_once_and_answers_the_first_result_again() {
    let s = shared();
    let c = new_customer(&s.app, "idem"); // free: ats_score = 3
    let first = consume(&s.app, &c, "ats_score", 1, "scan-1");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["replayed"], false);
    assert_eq!(first.json()["used"], 1);
    let again = consume(&s.app, &c, "ats_score", 1, "scan-1");
    assert_eq!(again.status, 200, "{}", again.body);
    let mut expected = first.json();
    expected["replayed"] = json!(true);
    assert_eq!(again.json(), expected);
    assert_eq!(used_in_d1(&c, "ats_score"), 1, "counted once");
    // The key with another amount or feature.
    for (feature, amount) in [("ats_score", 2), ("resume_feedback", 1)] {
        let r = consume(&s.app, &c, feature, amount, "scan-1");
        assert_eq!((r.status, error_code(&r.json())), (409, "IDEMPOTENCY_KEY_REUSED"), "{feature}: {}", r.body);
    }
    // A refusal over the limit is an answer too: replayed as it was.
    let refused = consume(&s.app, &c, "ats_score", 3, "scan-2");
    assert_eq!((refused.status, error_code(&refused.json())), (402, "QUOTA_EXCEEDED"), "{}", refused.body);
    let again = consume(&s.app, &c, "ats_score", 3, "scan-2");
    assert_eq!(again.status, 402, "{}", again.body);
    let mut expected = refused.json();
    expected["replayed"] = json!(true);
    assert_eq!(again.json(), expected);
    // Keys are per user.
    let other = new_customer(&s.app, "idem-other");
    let r = consume(&s.app, &other, "ats_score", 1, "scan-1");
    assert_eq!((r.status, r.json()["replayed"].as_bool(), r.json()["used"].as_i64()), (200, Some(false), Some(1)));
    assert_eq!(used_in_d1(&c, "ats_score"), 1);
    // A 200-character key is fine.
    let long = "k".repeat(200);
    assert_eq!(consume(&s.app, &c, "ats_score", 1, &long).status, 200);
    assert_eq!(used_in_d1(&c, "ats_score"), 2);
}

#[test]
fn a_feature_outside_the_plan_is_403_an_unknown_one_400_and_bad_input_400() {
    let s = shared();
    let free = new_customer(&s.app, "not-in-plan");
    let r = consume(&s.app, &free, "cover_letter", 1, "x1");
    assert_eq!((r.status, error_code(&r.json())), (403, "FEATURE_NOT_IN_PLAN"), "{}", r.body);
    assert_eq!((r.json()["feature"].as_str(), r.json()["plan"].as_str()), (Some("cover_letter"), Some("free")));
    let essential = subscribed(&s.app, &s.stripe, "not-in-plan-ess");
    let r = consume(&s.app, &essential, "mock_interview", 1, "x1");
    assert_eq!((r.status, error_code(&r.json())), (403, "FEATURE_NOT_IN_PLAN"), "{}", r.body);
    assert_eq!((r.json()["feature"].as_str(), r.json()["plan"].as_str()), (Some("mock_interview"), Some("essential")));
    let r = consume(&s.app, &free, "teleportation", 1, "x2");
    assert_eq!((r.status, error_code(&r.json())), (400, "UNKNOWN_FEATURE"), "{}", r.body);
    let long = "k".repeat(201);
    for body in [
        json!({"feature": "ats_score", "amount": 1}),
        json!({"feature": "ats_score", "amount": 1, "idempotencyKey": ""}),
        json!({"feature": "ats_score", "amount": 1, "idempotencyKey": long}),
        json!({"feature": "ats_score", "amount": 0, "idempotencyKey": "x3"}),
        json!({"feature": "ats_score", "amount": -1, "idempotencyKey": "x3"}),
        json!({"feature": "ats_score", "amount": 1001, "idempotencyKey": "x3"}),
        json!({"feature": "ats_score", "amount": 1.5, "idempotencyKey": "x3"}),
        json!({"feature": "ats_score", "amount": "1", "idempotencyKey": "x3"}),
        json!({"amount": 1, "idempotencyKey": "x3"}),
    ] {
        let r = user_post(&s.app, &free, "/api/usage/consume", body.clone());
        assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "{body}: {}", r.body);
    }
    // amount defaults to 1.
    let r = user_post(&s.app, &free, "/api/usage/consume", json!({"feature": "ats_score", "idempotencyKey": "x4"}));
    assert_eq!((r.status, r.json()["used"].as_i64()), (200, Some(1)), "{}", r.body);
    let r = request(
        &s.app,
        "POST",
        "/api/usage/consume",
        None,
        Some(&json!({"feature": "ats_score", "idempotencyKey": "x5"})),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(used_in_d1(&free, "ats_score"), 1, "only the valid request counted");
    assert_eq!(used_in_d1(&free, "cover_letter"), 0);
    assert_eq!(used_in_d1(&essential, "mock_interview"), 0);
}

#[test]
fn a_credit_priced_feature_spends_ten_credits_a_use_and_needs_the_credits() {
    let s = shared();
    let c = new_customer(&s.app, "credit-feature");
    let r = consume(&s.app, &c, "job_analysis", 1, "ja-1");
    assert_eq!((r.status, error_code(&r.json())), (402, "INSUFFICIENT_CREDITS"), "{}", r.body);
    assert_eq!((r.json()["balance"].as_i64(), r.json()["required"].as_i64()), (Some(0), Some(10)), "{}", r.body);
    give_credits(&s.app, &c, 25);
    // A refused consume is an answer like any other: its key replays it, credits or not.
    let r = consume(&s.app, &c, "job_analysis", 1, "ja-1");
    assert_eq!((r.status, error_code(&r.json())), (402, "INSUFFICIENT_CREDITS"), "the first answer: {}", r.body);
    assert_eq!(r.json()["balance"].as_i64(), Some(0), "as it was then: {}", r.body);
    // The same key for a counted feature is another request: refused, nothing counted.
    let r = consume(&s.app, &c, "ats_score", 1, "ja-1");
    assert_eq!((r.status, error_code(&r.json())), (409, "IDEMPOTENCY_KEY_REUSED"), "{}", r.body);
    assert_eq!(used_in_d1(&c, "ats_score"), 0);
    let r = consume(&s.app, &c, "job_analysis", 1, "ja-1b");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"ok": true, "feature": "job_analysis", "credits": {"spent": 10, "balance": 15}, "replayed": false})
    );
    let r = consume(&s.app, &c, "job_analysis", 2, "ja-2");
    assert_eq!((r.status, error_code(&r.json())), (402, "INSUFFICIENT_CREDITS"), "{}", r.body);
    assert_eq!((r.json()["balance"].as_i64(), r.json()["required"].as_i64()), (Some(15), Some(20)), "{}", r.body);
    let r = consume(&s.app, &c, "job_analysis", 1, "ja-3");
    assert_eq!(r.json()["credits"], json!({"spent": 10, "balance": 5}), "{}", r.body);
    let again = consume(&s.app, &c, "job_analysis", 1, "ja-3");
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(again.json()["credits"], json!({"spent": 10, "balance": 5}));
    assert_eq!(balance(&s.app, &c), 5);
    assert_eq!(ledger_sum(&s.app, &c.user_id), 5);
    let spends = ledger(&s.app, &c.user_id, "spend");
    assert_eq!(spends.iter().map(|r| r["delta"].as_i64().unwrap()).collect::<Vec<_>>(), [-10, -10], "{spends:?}");
    // No monthly count for it.
    assert_eq!(used_in_d1(&c, "job_analysis"), 0);
    let e = entitlements(&s.app, &c).json();
    assert_eq!(e["features"]["job_analysis"], true, "{e}");
    assert!(e["usage"].get("job_analysis").is_none(), "credit features have no quota: {e}");
}

#[test]
fn a_service_consumes_for_the_user_it_names() {
    let s = shared();
    let c = new_customer(&s.app, "svc-consume");
    let svc = service_token("resume-service");
    let post = |bearer: &str, body: Value| request(&s.app, "POST", "/api/usage/consume", Some(bearer), Some(&body));
    let r = post(&svc, json!({"authId": c.auth_id, "feature": "ats_score", "idempotencyKey": "s1"}));
    assert_eq!((r.status, r.json()["used"].as_i64()), (200, Some(1)), "{}", r.body);
    let r = post(ADMIN_TOKEN, json!({"userId": c.user_id, "feature": "ats_score", "idempotencyKey": "s2"}));
    assert_eq!((r.status, r.json()["used"].as_i64()), (200, Some(2)), "{}", r.body);
    // The same key for the same user, whoever sends it.
    let r = post(&svc, json!({"userId": c.user_id, "feature": "ats_score", "idempotencyKey": "s1"}));
    assert_eq!((r.status, r.json()["replayed"].as_bool()), (200, Some(true)), "{}", r.body);
    let r = post(&svc, json!({"feature": "ats_score", "idempotencyKey": "s3"}));
    assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "a service names the user: {}", r.body);
    let r =
        post(&svc, json!({"authId": crate::support::unique("nobody"), "feature": "ats_score", "idempotencyKey": "s4"}));
    assert_eq!((r.status, error_code(&r.json())), (404, "USER_NOT_FOUND"), "{}", r.body);
    assert_eq!(used_in_d1(&c, "ats_score"), 2);
}

#[test]
fn usage_lists_the_plans_quotas_unlimited_ones_with_null_limits() {
    let s = shared();
    let start = now() - 2 * DAY;
    let end = start + 30 * DAY;
    let c = new_customer(&s.app, "usage-list");
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PRO, start, end));
    let r = consume(&s.app, &c, "ats_score", 4, "u1");
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(
        (body["used"].as_i64(), body["limit"].clone(), body["remaining"].clone()),
        (Some(4), Value::Null, Value::Null)
    );
    assert_eq!(body["resetsAt"], iso(end));
    let u = usage_of(&c);
    assert_eq!(u["period"], json!({"kind": "subscription", "start": iso(start), "end": iso(end)}), "{u}");
    let mut features: Vec<&str> = u["usage"].as_object().unwrap().keys().map(String::as_str).collect();
    features.sort();
    assert_eq!(features, ["ats_score", "cover_letter", "interview_questions", "resume_feedback", "resume_rewrite"]);
    assert_eq!(u["usage"]["ats_score"], json!({"limit": null, "used": 4, "remaining": null, "resetsAt": iso(end)}));
    assert_eq!(
        u["usage"]["interview_questions"],
        json!({"limit": 100, "used": 0, "remaining": 100, "resetsAt": iso(end)})
    );
    let r = request(&s.app, "GET", "/api/usage", None, None);
    assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"), "{}", r.body);
}

#[test]
fn a_user_without_a_subscription_counts_in_the_utc_calendar_month() {
    let s = shared();
    let c = new_customer(&s.app, "month");
    let (start, end) = month_of(now());
    let r = consume(&s.app, &c, "resume_feedback", 1, "m1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["resetsAt"], end.as_str());
    assert_eq!((r.json()["limit"].as_i64(), r.json()["remaining"].as_i64()), (Some(1), Some(0)));
    let u = usage_of(&c);
    assert_eq!(u["period"], json!({"kind": "month", "start": start, "end": end}), "{u}");
    let r = consume(&s.app, &c, "resume_feedback", 1, "m2");
    assert_eq!((r.status, error_code(&r.json())), (402, "QUOTA_EXCEEDED"), "{}", r.body);
    assert_eq!(r.json()["resetsAt"], end.as_str());
}

#[test]
fn usage_counts_in_the_stripe_period_and_starts_from_zero_when_stripe_renews() {
    let s = shared();
    let c = new_customer(&s.app, "rollover");
    // Time is injected through Stripe's period: the first period holds now…
    let (p1_start, p1_end) = (now() - 20 * DAY, now() + 10 * DAY);
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PRO, p1_start, p1_end));
    for (i, amount) in [2, 1].iter().enumerate() {
        let r = consume(&s.app, &c, "interview_questions", *amount, &format!("p1-{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["resetsAt"], iso(p1_end));
    }
    let u = usage_of(&c);
    assert_eq!(u["period"], json!({"kind": "subscription", "start": iso(p1_start), "end": iso(p1_end)}));
    assert_eq!(u["usage"]["interview_questions"]["used"], 3);
    // …then Stripe renews: the subscription's period moves on and now lies in the new one.
    let (p2_start, p2_end) = (now() - 60, now() - 60 + 30 * DAY);
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PRO, p2_start, p2_end));
    assert_eq!(user_row(&s.app, &c.user_id)["current_period_start"], p2_start);
    let u = usage_of(&c);
    assert_eq!(u["period"], json!({"kind": "subscription", "start": iso(p2_start), "end": iso(p2_end)}), "{u}");
    assert_eq!(
        u["usage"]["interview_questions"],
        json!({"limit": 100, "used": 0, "remaining": 100, "resetsAt": iso(p2_end)}),
        "a new period starts from zero"
    );
    let r = consume(&s.app, &c, "interview_questions", 1, "p2-0");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["used"].as_i64(), r.json()["resetsAt"].as_str()), (Some(1), Some(iso(p2_end).as_str())));
    let e = entitlements(&s.app, &c).json();
    assert_eq!(e["period"], json!({"kind": "subscription", "start": iso(p2_start), "end": iso(p2_end)}), "{e}");
    assert_eq!(e["usage"]["interview_questions"]["used"], 1, "{e}");
    // The old period's count is kept beside the new one.
    let rows = s.app.sql(&format!(
        "SELECT period, used FROM usage WHERE user_id = '{}' AND feature = 'interview_questions' ORDER BY used DESC",
        c.user_id
    ));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0]["used"].as_i64(), rows[1]["used"].as_i64()), (Some(3), Some(1)));
    assert_ne!(rows[0]["period"], rows[1]["period"]);
}

#[test]
fn a_plan_change_mid_period_carries_the_count_over_under_the_new_limit() {
    let s = shared();
    let c = new_customer(&s.app, "mid-period");
    let (start, end) = (now() - 5 * DAY, now() + 25 * DAY);
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_ESSENTIAL, start, end));
    let r = consume(&s.app, &c, "cover_letter", 8, "mp-1");
    assert_eq!((r.status, r.json()["limit"].as_i64()), (200, Some(10)), "{}", r.body);
    // Upgraded to pro in the same period: 8 used of pro's 50.
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_PRO, start, end));
    assert_eq!(
        usage_of(&c)["usage"]["cover_letter"],
        json!({"limit": 50, "used": 8, "remaining": 42, "resetsAt": iso(end)})
    );
    let r = consume(&s.app, &c, "cover_letter", 5, "mp-2");
    assert_eq!(
        (r.status, r.json()["used"].as_i64(), r.json()["limit"].as_i64()),
        (200, Some(13), Some(50)),
        "{}",
        r.body
    );
    let r = consume(&s.app, &c, "interview_questions", 1, "mp-3");
    assert_eq!(r.status, 200, "pro's features: {}", r.body);
    // Back to essential in the same period: 13 used is over its 10.
    stripe_says(&s.app, &s.stripe, subscription_in(&c, "active", PRICE_ESSENTIAL, start, end));
    let r = consume(&s.app, &c, "cover_letter", 1, "mp-4");
    assert_eq!((r.status, error_code(&r.json())), (402, "QUOTA_EXCEEDED"), "{}", r.body);
    assert_eq!((r.json()["limit"].as_i64(), r.json()["used"].as_i64()), (Some(10), Some(13)), "{}", r.body);
    assert_eq!(
        usage_of(&c)["usage"]["cover_letter"],
        json!({"limit": 10, "used": 13, "remaining": 0, "resetsAt": iso(end)}),
        "remaining never below zero"
    );
    let r = consume(&s.app, &c, "interview_questions", 1, "mp-5");
    assert_eq!((r.status, error_code(&r.json())), (403, "FEATURE_NOT_IN_PLAN"), "{}", r.body);
    assert_eq!(used_in_d1(&c, "cover_letter"), 13);
}

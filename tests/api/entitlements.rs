//! `GET /api/entitlements` (computed, cached, fresh after every change), `GET /api/plans`
//! with credits, and the service check `POST /api/entitlements/check`.

use serde_json::{json, Value};

use crate::fixtures::*;
use crate::support::{claims, get, hs256, iso, now, service_token, token, unique, JWT_SECRET};
use crate::{error_code, shared, ADMIN_TOKEN, ALLOWED_ORIGIN_FOR_TESTS, SERVICE_JWT_SECRET};

const FEATURES: [&str; 8] = [
    "ats_score",
    "cover_letter",
    "interview_questions",
    "job_analysis",
    "linkedin_optimizer",
    "mock_interview",
    "resume_feedback",
    "resume_rewrite",
];

fn enabled(e: &Value) -> Vec<&str> {
    let mut on: Vec<&str> =
        e["features"].as_object().unwrap().iter().filter(|(_, v)| **v == true).map(|(k, _)| k.as_str()).collect();
    on.sort();
    on
}

#[test]
fn plans_show_credits_per_period_packs_and_credit_costs() {
    let r = get(&shared().app.url("/api/plans"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let tiers = body["tiers"].as_array().unwrap();
    let credits: Vec<(&str, i64)> =
        tiers.iter().map(|t| (t["id"].as_str().unwrap(), t["creditsPerPeriod"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(credits, [("free", 0), ("essential", 0), ("pro", 20), ("premium", 50)], "{body}");
    for t in tiers {
        assert!(t["features"].as_array().unwrap().iter().any(|f| f == "job_analysis"), "{t}");
        assert!(t["rank"].is_number(), "{t}");
    }
    let pack = |id: &str| {
        body["packs"].as_array().unwrap().iter().find(|p| p["id"] == id).cloned().unwrap_or_else(|| panic!("{body}"))
    };
    assert_eq!(pack("small"), json!({"id": "small", "name": "Small pack", "credits": 100, "available": true}));
    assert_eq!(pack("large"), json!({"id": "large", "name": "Large pack", "credits": 500, "available": true}));
    assert_eq!(body["packs"].as_array().unwrap().len(), 2);
    assert_eq!(body["creditCosts"], json!({"job_analysis": 10}));
}

#[test]
fn a_new_users_entitlements_list_every_feature_the_free_quotas_and_the_month() {
    let s = shared();
    let c = new_customer(&s.app, "ent-new");
    let r = entitlements(&s.app, &c);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("X-Entitlements-Cache"), Some("miss"));
    let e = r.json();
    for k in ["ok", "plan", "tier", "subscriptionStatus", "trial", "features", "usage", "credits", "period"] {
        assert!(e.get(k).is_some(), "{k} missing: {e}");
    }
    assert_eq!((e["ok"].as_bool(), e["plan"].as_str(), e["tier"].as_str()), (Some(true), Some("free"), Some("free")));
    assert!(e["subscriptionStatus"].is_null());
    assert_eq!(e["trial"], json!({"active": false, "endsAt": null, "used": false}));
    let mut keys: Vec<&str> = e["features"].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, FEATURES, "every catalog feature");
    assert_eq!(enabled(&e), ["ats_score", "job_analysis", "resume_feedback"]);
    let (start, end) = month_of(now());
    let mut quotas: Vec<&str> = e["usage"].as_object().unwrap().keys().map(String::as_str).collect();
    quotas.sort();
    assert_eq!(quotas, ["ats_score", "resume_feedback"], "the plan's features without a credit cost");
    assert_eq!(e["usage"]["ats_score"], json!({"limit": 3, "used": 0, "remaining": 3, "resetsAt": end}));
    assert_eq!(e["usage"]["resume_feedback"], json!({"limit": 1, "used": 0, "remaining": 1, "resetsAt": end}));
    assert_eq!(e["credits"], json!({"balance": 0}));
    assert_eq!(e["period"], json!({"kind": "month", "start": start, "end": end}));
    let r = request(&s.app, "GET", "/api/entitlements", None, None);
    assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"));
}

#[test]
fn a_second_read_is_a_cache_hit_that_reads_no_d1_rows() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "ent-cache");
    let first = entitlements(&s.app, &c);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("X-Entitlements-Cache"), Some("miss"));
    let hit = cached_entitlements(&s.app, &c);
    assert_eq!(hit, first.json(), "the cached answer is the computed one");
    let r = entitlements(&s.app, &c);
    assert_eq!(r.header("X-Entitlements-Cache"), Some("hit"));
    assert_eq!(r.header("X-D1-Rows-Read"), Some("0"), "{:?}", r.headers);
    assert_eq!(r.header("X-D1-Round-Trips"), Some("0"), "{:?}", r.headers);
    // Kept in APP_KV under the user's auth id.
    let key = format!("entitlements:{}", c.auth_id);
    let kept = s.app.kv_get_when(&key, std::time::Duration::from_secs(5), Option::is_some);
    assert!(kept.is_some_and(|v| v.contains("\"plan\"")), "{key} not in APP_KV");
    // Another user's cache is their own.
    let other = new_customer(&s.app, "ent-cache-other");
    let r = entitlements(&s.app, &other);
    assert_eq!((r.header("X-Entitlements-Cache"), r.json()["plan"].as_str()), (Some("miss"), Some("free")));
}

#[test]
fn a_trialing_user_is_on_the_trial_plan_with_the_entry_tiers_features_for_the_trial_period() {
    let s = shared();
    let c = new_customer(&s.app, "ent-trial");
    let r = user_post(
        &s.app,
        &c,
        "/api/stripe-checkout",
        json!({"plan": "trial", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let session = s.stripe.session_by_url(r.json()["url"].as_str().unwrap()).unwrap();
    let events = s.stripe.complete_checkout(session["id"].as_str().unwrap());
    deliver_all(&s.app, &events);
    let sub = &events[1]["data"]["object"];
    let (start, trial_end) = (sub["current_period_start"].as_i64().unwrap(), sub["trial_end"].as_i64().unwrap());
    let e = entitlements_when(&s.app, &c, |e| e["plan"] == "trial");
    assert_eq!((e["plan"].as_str(), e["tier"].as_str()), (Some("trial"), Some("essential")), "{e}");
    assert_eq!(e["subscriptionStatus"], "trialing");
    assert_eq!(e["trial"], json!({"active": true, "endsAt": iso(trial_end), "used": true}));
    assert_eq!(enabled(&e), ["ats_score", "cover_letter", "job_analysis", "resume_feedback"]);
    assert_eq!(e["usage"]["cover_letter"]["limit"], 10);
    assert_eq!(e["period"], json!({"kind": "subscription", "start": iso(start), "end": iso(trial_end)}));
}

#[test]
fn entitlements_right_after_an_upgrade_through_checkout_show_the_new_plan() {
    let s = shared();
    let c = new_customer(&s.app, "ent-upgrade-checkout");
    assert_eq!(cached_entitlements(&s.app, &c)["plan"], "free");
    let r = user_post(
        &s.app,
        &c,
        "/api/upgrade-plan",
        json!({"targetPlan": "pro", "returnUrl": format!("{ALLOWED_ORIGIN_FOR_TESTS}/billing")}),
    );
    assert_eq!(r.json()["action"], "redirect", "{}", r.body);
    let session = s.stripe.session_by_url(r.json()["url"].as_str().unwrap()).unwrap();
    deliver_all(&s.app, &s.stripe.complete_checkout(session["id"].as_str().unwrap()));
    let e = entitlements_when(&s.app, &c, |e| e["plan"] == "pro");
    assert_eq!((e["plan"].as_str(), e["subscriptionStatus"].as_str()), (Some("pro"), Some("active")), "{e}");
    assert_eq!(
        enabled(&e),
        ["ats_score", "cover_letter", "interview_questions", "job_analysis", "resume_feedback", "resume_rewrite"]
    );
    assert_eq!(e["usage"]["cover_letter"]["limit"], 50);
    assert_eq!(e["period"]["kind"], "subscription");
}

#[test]
fn entitlements_right_after_an_in_place_upgrade_are_fresh_on_the_next_read() {
    let s = shared();
    let (c, _) = on_plan(&s.app, &s.stripe, "ent-upgrade-inplace", "essential");
    assert_eq!(cached_entitlements(&s.app, &c)["plan"], "essential");
    let r = user_post(&s.app, &c, "/api/upgrade-plan", json!({"targetPlan": "premium"}));
    assert_eq!((r.status, r.json()["action"].as_str()), (200, Some("updated")), "{}", r.body);
    let r = entitlements(&s.app, &c);
    let e = r.json();
    assert_eq!(e["plan"], "premium", "the very next read: {e}");
    assert_eq!(r.header("X-Entitlements-Cache"), Some("miss"));
    assert_eq!(e["features"]["mock_interview"], true);
    assert_eq!(e["usage"]["mock_interview"]["limit"], 20);
    assert_eq!(e["usage"]["cover_letter"]["limit"], Value::Null, "unlimited on premium");
}

#[test]
fn entitlements_right_after_a_downgrade_takes_effect_show_the_lower_plan() {
    let s = shared();
    let (c, sub) = on_plan(&s.app, &s.stripe, "ent-downgrade", "pro");
    assert_eq!(cached_entitlements(&s.app, &c)["plan"], "pro");
    let r = user_post(&s.app, &c, "/api/downgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(entitlements(&s.app, &c).json()["plan"], "pro", "the lower tier waits for the period end");
    cached_entitlements(&s.app, &c);
    deliver_all(&s.app, &[s.stripe.advance_period(&sub)]);
    let e = entitlements_when(&s.app, &c, |e| e["plan"] == "essential");
    assert_eq!(e["plan"], "essential", "{e}");
    assert_eq!(e["features"]["interview_questions"], false);
    assert_eq!(e["usage"]["cover_letter"]["limit"], 10);
    assert!(e["usage"].get("interview_questions").is_none(), "{e}");
}

#[test]
fn entitlements_right_after_a_cancel_show_the_free_plan_once_it_ends() {
    let s = shared();
    let (c, sub) = on_plan(&s.app, &s.stripe, "ent-cancel", "pro");
    assert_eq!(cached_entitlements(&s.app, &c)["plan"], "pro");
    let r = user_post(&s.app, &c, "/api/cancel-subscription", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let e = entitlements(&s.app, &c).json();
    assert_eq!(
        (e["plan"].as_str(), e["subscriptionStatus"].as_str()),
        (Some("pro"), Some("active")),
        "paid until the end"
    );
    cached_entitlements(&s.app, &c);
    deliver_all(&s.app, &[s.stripe.advance_period(&sub)]);
    let e = entitlements_when(&s.app, &c, |e| e["plan"] == "free");
    assert_eq!((e["plan"].as_str(), e["subscriptionStatus"].as_str()), (Some("free"), Some("canceled")), "{e}");
    assert_eq!(enabled(&e), ["ats_score", "job_analysis", "resume_feedback"]);
    assert_eq!(e["period"]["kind"], "month", "no subscription period any more: {e}");
    // Ended at once (in the dashboard): also fresh.
    let (c2, sub2) = on_plan(&s.app, &s.stripe, "ent-cancel-now", "essential");
    assert_eq!(cached_entitlements(&s.app, &c2)["plan"], "essential");
    let mut ended = s.stripe.subscription(&sub2).unwrap();
    ended["status"] = json!("canceled");
    ended["ended_at"] = json!(now());
    s.stripe.put_subscription(ended.clone());
    deliver_all(&s.app, &[event(&event_id("ended"), "customer.subscription.deleted", now(), ended)]);
    let e = entitlements_when(&s.app, &c2, |e| e["plan"] == "free");
    assert_eq!(e["plan"], "free", "{e}");
}

#[test]
fn entitlements_right_after_a_pack_purchase_show_the_credits() {
    let s = shared();
    let c = new_customer(&s.app, "ent-pack");
    assert_eq!(cached_entitlements(&s.app, &c)["credits"], json!({"balance": 0}));
    let (events, _) = buy_pack(&s.app, &s.stripe, &c, "small");
    deliver_all(&s.app, &events);
    let e = entitlements_when(&s.app, &c, |e| e["credits"]["balance"] == 100);
    assert_eq!(e["credits"], json!({"balance": 100}), "{e}");
    // A periodic grant is fresh too.
    // A subscription of the customer the checkout created.
    let start = now() - 86400;
    let mut sub = subscription_in(&c, "active", crate::PRICE_PRO, start, start + 30 * 86400);
    sub["customer"] = user_row(&s.app, &c.user_id)["stripe_customer_id"].clone();
    stripe_says(&s.app, &s.stripe, sub);
    assert_eq!(entitlements_when(&s.app, &c, |e| e["plan"] == "pro")["plan"], "pro");
    cached_entitlements(&s.app, &c);
    deliver_all(&s.app, &[s.stripe.invoice_paid(&c.subscription, 2000, "subscription_cycle")]);
    let e = entitlements_when(&s.app, &c, |e| e["credits"]["balance"] == 120);
    assert_eq!(e["credits"], json!({"balance": 120}), "{e}");
}

#[test]
fn entitlements_right_after_consume_spend_and_adjust_are_fresh_on_the_next_read() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "ent-user-actions");
    assert_eq!(cached_entitlements(&s.app, &c)["usage"]["cover_letter"]["used"], 0);
    assert_eq!(consume(&s.app, &c, "cover_letter", 2, "ua-1").status, 200);
    let r = entitlements(&s.app, &c);
    assert_eq!(r.json()["usage"]["cover_letter"]["used"], 2, "after consume: {}", r.body);
    assert_eq!(r.json()["usage"]["cover_letter"]["remaining"], 8);
    cached_entitlements(&s.app, &c);
    give_credits(&s.app, &c, 30);
    assert_eq!(entitlements(&s.app, &c).json()["credits"]["balance"], 30, "after an admin adjustment");
    cached_entitlements(&s.app, &c);
    assert_eq!(spend(&s.app, &c, 5, "ua-2").status, 200);
    assert_eq!(entitlements(&s.app, &c).json()["credits"]["balance"], 25, "after a spend");
    cached_entitlements(&s.app, &c);
    assert_eq!(consume(&s.app, &c, "job_analysis", 1, "ua-3").status, 200);
    assert_eq!(entitlements(&s.app, &c).json()["credits"]["balance"], 15, "after a credit-priced use");
    // A replay changes nothing and needs no invalidation, but must not serve stale data either.
    assert_eq!(consume(&s.app, &c, "cover_letter", 2, "ua-1").json()["replayed"], true);
    assert_eq!(entitlements(&s.app, &c).json()["usage"]["cover_letter"]["used"], 2);
}

// ---------------------------------------------------------------------------------
// POST /api/entitlements/check

fn check(bearer: Option<&str>, body: Value) -> crate::support::Resp {
    request(&shared().app, "POST", "/api/entitlements/check", bearer, Some(&body))
}

#[test]
fn the_service_check_refuses_user_tokens_and_tokens_not_made_for_services() {
    let s = shared();
    let c = new_customer(&s.app, "chk-auth");
    let body = json!({"authId": c.auth_id, "feature": "ats_score"});
    let r = check(None, body.clone());
    assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"), "{}", r.body);
    let r = check(Some(&token(&c.auth_id)), body.clone());
    assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "a user's token: {}", r.body);
    // The service scope in a token signed with the users' secret: a user's token all the same.
    let mut user_signed = claims("resume-service");
    user_signed["scope"] = json!("plangate:service");
    let r = check(Some(&hs256(JWT_SECRET, &user_signed)), body.clone());
    assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "{}", r.body);
    // Signed for services but without the scope.
    for scope in [json!("plangate:other"), json!(""), Value::Null] {
        let mut cl = json!({"sub": "resume-service", "exp": now() + 600});
        if !scope.is_null() {
            cl["scope"] = scope.clone();
        }
        let r = check(Some(&hs256(SERVICE_JWT_SECRET, &cl)), body.clone());
        assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "scope {scope}: {}", r.body);
    }
    // Not valid for any secret, or expired.
    let forged = hs256(
        "not-a-secret-anyone-has-0123456789",
        &json!({"sub": "x", "exp": now() + 600, "scope": "plangate:service"}),
    );
    let expired = hs256(SERVICE_JWT_SECRET, &json!({"sub": "x", "exp": now() - 600, "scope": "plangate:service"}));
    for (what, t) in [("forged", forged), ("expired", expired), ("garbage", "abc.def.ghi".to_string())] {
        let r = check(Some(&t), body.clone());
        assert_eq!((r.status, error_code(&r.json())), (401, "AUTH_REQUIRED"), "{what}: {}", r.body);
    }
    // A scope list that contains it.
    let t = hs256(SERVICE_JWT_SECRET, &json!({"sub": "svc", "exp": now() + 600, "scope": "read:all plangate:service"}));
    assert_eq!(check(Some(&t), body).status, 200);
}

#[test]
fn the_service_check_answers_services_and_the_admin_token_without_counting_anything() {
    let s = shared();
    let c = subscribed(&s.app, &s.stripe, "chk-answers"); // essential: cover_letter 10
    let svc = service_token("resume-service");
    let ask = |bearer: &str, body: Value| {
        let r = check(Some(bearer), body.clone());
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        assert_eq!(r.header("X-D1-Rows-Written"), Some("0"), "a check writes nothing: {body}");
        let b = r.json();
        assert_eq!(b["ok"], true);
        (b["allowed"].as_bool().unwrap(), b["reason"].as_str().unwrap().to_string(), b["remaining"].clone())
    };
    let by_auth = |feature: &str, amount: i64| json!({"authId": c.auth_id, "feature": feature, "amount": amount});
    assert_eq!(ask(&svc, by_auth("cover_letter", 1)), (true, "ok".into(), json!(10)));
    assert_eq!(
        ask(ADMIN_TOKEN, json!({"userId": c.user_id, "feature": "cover_letter"})),
        (true, "ok".into(), json!(10)),
        "amount defaults to 1"
    );
    assert_eq!(consume(&s.app, &c, "cover_letter", 4, "chk-1").status, 200);
    assert_eq!(ask(&svc, by_auth("cover_letter", 6)), (true, "ok".into(), json!(6)));
    assert_eq!(ask(&svc, by_auth("cover_letter", 7)), (false, "quota_exceeded".into(), json!(6)));
    assert_eq!(ask(&svc, by_auth("ats_score", 1)), (true, "ok".into(), Value::Null), "unlimited");
    let (allowed, reason, _) = ask(&svc, by_auth("mock_interview", 1));
    assert_eq!((allowed, reason.as_str()), (false, "feature_not_in_plan"));
    assert_eq!(ask(&svc, by_auth("job_analysis", 1)), (false, "insufficient_credits".into(), json!(0)));
    give_credits(&s.app, &c, 10);
    assert_eq!(ask(&svc, by_auth("job_analysis", 1)), (true, "ok".into(), json!(10)));
    assert_eq!(ask(&svc, by_auth("job_analysis", 2)), (false, "insufficient_credits".into(), json!(10)));
    // Checks counted nothing.
    let e = entitlements(&s.app, &c).json();
    assert_eq!(e["usage"]["cover_letter"]["used"], 4, "{e}");
    assert_eq!(e["credits"]["balance"], 10);
}

#[test]
fn the_service_check_of_an_unknown_user_is_404_and_creates_nothing() {
    let s = shared();
    let svc = service_token("resume-service");
    let stranger = unique("chk-stranger");
    let r = check(Some(&svc), json!({"authId": stranger, "feature": "ats_score"}));
    assert_eq!((r.status, error_code(&r.json())), (404, "USER_NOT_FOUND"), "{}", r.body);
    let r = check(Some(ADMIN_TOKEN), json!({"userId": "usr_00000000000000000000", "feature": "ats_score"}));
    assert_eq!((r.status, error_code(&r.json())), (404, "USER_NOT_FOUND"), "{}", r.body);
    assert_eq!(s.app.count(&format!("SELECT COUNT(*) FROM users WHERE auth_id = '{stranger}'")), 0, "no user row");
}

#[test]
fn the_service_check_validates_its_input() {
    let s = shared();
    let c = new_customer(&s.app, "chk-input");
    let svc = service_token("resume-service");
    for body in [
        json!({"feature": "ats_score"}),
        json!({"authId": c.auth_id, "userId": c.user_id, "feature": "ats_score"}),
        json!({"authId": c.auth_id}),
        json!({"authId": c.auth_id, "feature": "ats_score", "amount": 0}),
    ] {
        let r = check(Some(&svc), body.clone());
        assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "{body}: {}", r.body);
    }
    let r = check(Some(&svc), json!({"authId": c.auth_id, "feature": "teleportation"}));
    assert_eq!((r.status, error_code(&r.json())), (400, "UNKNOWN_FEATURE"), "{}", r.body);
    // A free user: a feature outside the plan is an answer, not an error.
    let r = check(Some(&svc), json!({"authId": c.auth_id, "feature": "cover_letter"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["allowed"].as_bool(), r.json()["reason"].as_str()),
        (Some(false), Some("feature_not_in_plan"))
    );
}

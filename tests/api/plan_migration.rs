//! Legacy plan keys (`APP_KV`) → D1: read-through on first sight, the resumable
//! backfill over thousands of records of every shape (some broken), its verification,
//! and what is never overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use serde_json::{json, Value};

use crate::fixtures::{deliver, event, run_cron, subscription, Customer};
use crate::support::{agent, get, hs256, iso, now, send, token, unique, App, JWT_SECRET};
use crate::{shared, stripe_options, ADMIN_TOKEN, PRICE_PRO};

fn admin(app: &App, method: &str, path: &str, body: Option<Value>) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = body.map(|b| b.to_string());
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r = send(&agent(), method, &app.url(path), &headers, body.as_deref().map(str::as_bytes));
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    r.json()
}

fn row(app: &App, auth_id: &str) -> Option<Value> {
    app.sql(&format!("SELECT * FROM users WHERE auth_id = '{auth_id}'")).into_iter().next()
}

fn audits(app: &App, user_id: &str) -> Vec<Value> {
    app.sql(&format!("SELECT * FROM plan_changes WHERE user_id = '{user_id}' ORDER BY id"))
}

/// A trial end far ahead: 2030-03-17T17:46:40Z.
const T0: i64 = 1_900_000_000;

// ---------------------------------------------------------------------------------
// Read-through (the shared app; every user is unique)

#[test]
fn a_legacy_user_never_backfilled_is_imported_on_first_sight_once_whatever_the_concurrency() {
    let app = &shared().app;
    let uid = unique("legacy-rt");
    let billing = json!({"status": "trialing", "customerId": format!("cus_{}", uid.replace('-', "")),
                         "subscriptionId": format!("sub_{}", uid.replace('-', ""))});
    app.kv_put_bulk(
        "APP_KV",
        &[
            (format!("planByUid:{uid}"), "trial".into()),
            (format!("billingStatus:{uid}"), billing.to_string()),
            (format!("trialEndByUid:{uid}"), (T0 * 1000).to_string()),
        ],
    );
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (b, url, t) = (barrier.clone(), app.url("/api/plan/me"), token(&uid));
            std::thread::spawn(move || {
                b.wait();
                get(&url, Some(&t))
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!((body["plan"].as_str(), body["subscriptionStatus"].as_str()), (Some("trial"), Some("trialing")));
        assert_eq!(body["trialEndsAt"], iso(T0));
    }
    let r = row(app, &uid).expect("one row");
    assert_eq!((r["plan"].as_str(), r["subscription_status"].as_str()), (Some("essential"), Some("trialing")));
    assert_eq!(r["trial_ends_at"], T0);
    assert_eq!(r["trial_used"], 1);
    assert_eq!(r["stripe_customer_id"], billing["customerId"]);
    assert_eq!(r["stripe_subscription_id"], billing["subscriptionId"]);
    assert_eq!(r["email"], format!("{uid}@example.test"));
    assert!(r["legacy_imported_at"].is_i64());
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM users WHERE auth_id = '{uid}'")), 1);
    let a = audits(app, r["id"].as_str().unwrap());
    assert_eq!(a.len(), 1, "exactly one audit row: {a:?}");
    assert_eq!((a[0]["cause"].as_str(), a[0]["new_plan"].as_str()), (Some("migration"), Some("essential")));
    assert!(a[0]["old_plan"].is_null());
}

#[test]
fn every_entitlement_read_imports_a_legacy_user_it_meets_first() {
    let app = &shared().app;
    let (a, b, c) = (unique("legacy-ent"), unique("legacy-usage"), unique("legacy-svc"));
    let mut pairs = Vec::new();
    for uid in [&a, &b, &c] {
        pairs.push((format!("planByUid:{uid}"), "premium".to_string()));
        pairs.push((format!("billingStatus:{uid}"), "active".to_string()));
    }
    app.kv_put_bulk("APP_KV", &pairs);
    let r = get(&app.url("/api/entitlements"), Some(&token(&a)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["plan"], "premium");
    let r = get(&app.url("/api/usage"), Some(&token(&b)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("mock_interview"), "premium's features: {}", r.body);
    // A service naming an auth id plangate has not seen: imported from its legacy keys.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let check = |who: &str| {
        let body = json!({"authId": who, "feature": "mock_interview"}).to_string();
        send(
            &agent(),
            "POST",
            &app.url("/api/entitlements/check"),
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    };
    let r = check(&c);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["allowed"].as_bool(), r.json()["plan"].as_str()), (Some(true), Some("premium")));
    // Without legacy keys a service still cannot create a user.
    let r = check(&unique("nobody"));
    assert_eq!((r.status, crate::error_code(&r.json())), (404, "USER_NOT_FOUND"));
    for uid in [&a, &b, &c] {
        let r = row(app, uid).unwrap();
        assert_eq!((r["plan"].as_str(), r["subscription_status"].as_str()), (Some("premium"), Some("active")), "{uid}");
        assert_eq!(audits(app, r["id"].as_str().unwrap()).len(), 1, "{uid}");
    }
}

#[test]
fn a_user_already_in_d1_is_never_read_from_kv_and_no_one_is_found_by_email() {
    let app = &shared().app;
    let known = unique("legacy-known");
    assert_eq!(get(&app.url("/api/plan/me"), Some(&token(&known))).json()["plan"], "free");
    let other = unique("legacy-email");
    app.kv_put_bulk(
        "APP_KV",
        &[(format!("planByUid:{known}"), "premium".into()), (format!("planByUid:{other}"), "pro".into())],
    );
    assert_eq!(get(&app.url("/api/plan/me"), Some(&token(&known))).json()["plan"], "free");
    assert_eq!(get(&app.url("/api/entitlements"), Some(&token(&known))).json()["plan"], "free");
    let r = row(app, &known).unwrap();
    assert!(r["legacy_imported_at"].is_null());
    // Someone else holding `other`'s email address gets nothing of `other`'s.
    let mut claims = crate::support::claims(&unique("legacy-stranger"));
    claims["email"] = json!(format!("{other}@example.test"));
    let r = get(&app.url("/api/plan/me"), Some(&hs256(JWT_SECRET, &claims)));
    assert_eq!(r.json()["plan"], "free", "{}", r.body);
}

#[test]
fn an_unreadable_legacy_record_fails_the_request_with_its_code_creates_nothing_and_is_imported_once_repaired() {
    let app = &shared().app;
    let uid = unique("legacy-broken");
    let key = format!("billingStatus:{uid}");
    let broken = r#"{"status":"active","customerId":"cus_RAWVALUE""#;
    app.kv_put_bulk("APP_KV", &[(format!("planByUid:{uid}"), "pro".into()), (key.clone(), broken.into())]);
    let r = get(&app.url("/api/plan/me"), Some(&token(&uid)));
    assert_eq!((r.status, crate::error_code(&r.json())), (500, "LEGACY_RECORD_UNREADABLE"), "{}", r.body);
    assert!(!r.body.contains("RAWVALUE") && !r.body.contains(&key), "the answer shows no record: {}", r.body);
    assert!(row(app, &uid).is_none(), "no row on a guess");
    // A service's gate sees the same: never a decision on a guess, nor a 404.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = json!({"authId": uid, "feature": "ats_score"}).to_string();
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r = send(&agent(), "POST", &app.url("/api/entitlements/check"), &headers, Some(body.as_bytes()));
    assert_eq!((r.status, crate::error_code(&r.json())), (500, "LEGACY_RECORD_UNREADABLE"), "{}", r.body);
    assert!(row(app, &uid).is_none());
    let logged = (0..50).any(|_| {
        let found = crate::support::json_log_lines(&app.log_text())
            .iter()
            .any(|l| l["event"] == "legacy.unreadable" && l["key"] == key.as_str());
        if !found {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    });
    assert!(logged, "legacy.unreadable with {key}");
    // Repaired: the next request imports it.
    app.kv_put_bulk("APP_KV", &[(key.clone(), "active".into())]);
    let r = get(&app.url("/api/plan/me"), Some(&token(&uid)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["plan"].as_str(), r.json()["subscriptionStatus"].as_str()), (Some("pro"), Some("active")));
    let r = row(app, &uid).unwrap();
    assert!(r["legacy_imported_at"].is_i64());
    assert_eq!(audits(app, r["id"].as_str().unwrap()).len(), 1);
    // Deleted instead of repaired: the user starts on the default plan.
    let other = unique("legacy-deleted");
    app.kv_put_bulk("APP_KV", &[(format!("trialUsedByUid:{other}"), "maybe".into())]);
    let r = get(&app.url("/api/plan/me"), Some(&token(&other)));
    assert_eq!((r.status, crate::error_code(&r.json())), (500, "LEGACY_RECORD_UNREADABLE"), "{}", r.body);
    app.kv_delete_in("APP_KV", &format!("trialUsedByUid:{other}"));
    let r = get(&app.url("/api/plan/me"), Some(&token(&other)));
    assert_eq!((r.status, r.json()["plan"].as_str()), (200, Some("free")), "{}", r.body);
}

// ---------------------------------------------------------------------------------
// The backfill (an app of its own: it walks every key of APP_KV)

/// Plan, status, trial end, customer id and `trial_used` expected in D1.
type Row = (&'static str, Option<&'static str>, Option<i64>, Option<String>, i64);

/// What one generated legacy user should become; `Err(key)` for a broken record.
struct Legacy {
    uid: String,
    keys: Vec<(String, String)>,
    expect: Result<Row, String>,
}

/// xorshift: the same mix of shapes on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn legacy_user(i: usize, kind: u64) -> Legacy {
    let uid = format!("leg{i:05}");
    let key = |p: &str| format!("{p}:{uid}");
    let (cus, sub) = (format!("cus_leg{i}"), format!("sub_leg{i}"));
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut put = |p: &str, v: String| keys.push((key(p), v));
    let ok = |plan, status, trial_end, customer, used| Ok((plan, status, trial_end, customer, used));
    let expect = match kind {
        // Broken records: the key reported.
        0 => {
            put("planByUid", "gold".into());
            Err(key("planByUid"))
        }
        1 => {
            put("planByUid", "pro".into());
            put("trialEndByUid", "tomorrow".into());
            Err(key("trialEndByUid"))
        }
        2 => {
            put("planByUid", "pro".into());
            put("billingStatus", r#"{"status":"#.into());
            Err(key("billingStatus"))
        }
        3 => {
            put("billingStatus", "active".into());
            put("trialUsedByUid", "true".into());
            Err(key("billingStatus"))
        }
        4 => {
            put("planByUid", "trial".into());
            put("billingStatus", "active".into());
            Err(key("billingStatus"))
        }
        5 => {
            put("planByUid", "free".into());
            put("trialUsedByUid", "maybe".into());
            Err(key("trialUsedByUid"))
        }
        // Readable shapes.
        6 => {
            put("planByUid", "free".into());
            ok("free", None, None, None, 0)
        }
        7 => {
            put("planByUid", "pro".into());
            put("billingStatus", "active".into());
            ok("pro", Some("active"), None, None, 0)
        }
        8 => {
            put("planByUid", "premium".into());
            let b = json!({"status": "active", "customerId": cus, "subscriptionId": sub,
                           "currentPeriodEnd": (T0 + i as i64) * 1000, "updatedAt": 1_600_000_000_000_i64});
            put("billingStatus", b.to_string());
            ok("premium", Some("active"), None, Some(cus), 0)
        }
        9 => {
            put("planByUid", "essential".into());
            let b = json!({"subscription_status": "past_due", "stripe_customer_id": cus, "current_period_end": T0});
            put("billingStatus", b.to_string());
            ok("essential", Some("past_due"), None, Some(cus), 0)
        }
        10 => {
            put("planByUid", "trial".into());
            put("trialEndByUid", ((T0 + i as i64) * 1000).to_string());
            put("trialUsedByUid", "true".into());
            ok("essential", Some("trialing"), Some(T0 + i as i64), None, 1)
        }
        11 => {
            put("planByUid", "trial".into());
            put("billingStatus", "trialing".into());
            put("trialEndByUid", (T0 + i as i64).to_string());
            ok("essential", Some("trialing"), Some(T0 + i as i64), None, 1)
        }
        12 => {
            put("planByUid", "\"trial\"".into());
            put("trialEndByUid", "2030-03-17T19:46:40+02:00".into());
            ok("essential", Some("trialing"), Some(T0), None, 1)
        }
        13 => {
            put("planByUid", "\"pro\"".into());
            put("billingStatus", "\"past_due\"".into());
            ok("pro", Some("past_due"), None, None, 0)
        }
        14 => {
            put("billingStatus", "canceled".into());
            ok("free", Some("canceled"), None, None, 0)
        }
        15 => {
            put("trialUsedByUid", "1".into());
            ok("free", None, None, None, 1)
        }
        16 => {
            put("trialEndByUid", "1600000000".into());
            ok("free", None, None, None, 1)
        }
        17 => {
            put("planByUid", "PRO".into());
            put("billingStatus", "ACTIVE".into());
            ok("pro", Some("active"), None, None, 0)
        }
        18 => {
            put("planByUid", "premium".into());
            put("billingStatus", "none".into());
            ok("premium", None, None, None, 0)
        }
        // Read as plangate's Stripe sync would: a status that grants nothing is the
        // default plan; a trial over without a subscription is over.
        23 => {
            put("planByUid", "pro".into());
            put("billingStatus", "canceled".into());
            ok("free", Some("canceled"), None, None, 0)
        }
        24 => {
            put("planByUid", "premium".into());
            put("billingStatus", json!({"status": "unpaid", "customerId": cus, "subscriptionId": sub}).to_string());
            ok("free", Some("unpaid"), None, Some(cus), 0)
        }
        25 => {
            put("planByUid", "trial".into());
            put("trialEndByUid", "1600000000000".into());
            ok("free", None, None, None, 1)
        }
        // A plan alone, the commonest record.
        20 => {
            put("planByUid", "pro".into());
            ok("pro", None, None, None, 0)
        }
        21 => {
            put("planByUid", " Premium\n".into());
            ok("premium", None, None, None, 0)
        }
        22 => {
            put("planByUid", "\"essential\"".into());
            ok("essential", None, None, None, 0)
        }
        _ => {
            put("planByUid", "free".into());
            put("billingStatus", "null".into());
            put("trialUsedByUid", "false".into());
            ok("free", None, None, None, 0)
        }
    };
    Legacy { uid, keys, expect }
}

/// 5,000 users: 4% broken, about half with a plan key alone (as most legacy users
/// are; it keeps the load of the local KV, ~10 ms a key, short), the rest spread over
/// every readable shape.
fn generate(n: usize) -> Vec<Legacy> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let r = rng.next() % 150;
            let kind = match r {
                0..=5 => r,
                6..=71 => 20 + r % 3,
                72..=74 => 23 + r % 3,
                _ => 6 + r % 14,
            };
            legacy_user(i, kind)
        })
        .collect()
}

/// Every page of a dry run or a verify from the start: `seen`, `imported` and the
/// `skipped` counts summed, the keys of unreadable records, the mismatches.
fn walk(app: &App, dry_run: bool) -> (BTreeMap<String, i64>, BTreeSet<String>, BTreeMap<String, Value>) {
    let (mut sums, mut bad, mut mismatches) = (BTreeMap::new(), BTreeSet::new(), BTreeMap::new());
    let mut cursor = String::new();
    loop {
        let r = if dry_run {
            let body = json!({"dryRun": true, "limit": 250, "cursor": cursor});
            admin(app, "POST", "/api/admin/migrations/plans", Some(body))
        } else {
            admin(
                app,
                "GET",
                &format!("/api/admin/migrations/plans/verify?limit=250&cursor={}", urlencode(&cursor)),
                None,
            )
        };
        for k in ["seen", "imported"] {
            *sums.entry(k.to_string()).or_default() += r[k].as_i64().unwrap();
        }
        for (k, v) in r["skipped"].as_object().unwrap() {
            *sums.entry(k.clone()).or_default() += v.as_i64().unwrap();
        }
        for key in r["failed"].as_object().unwrap().keys() {
            assert!(bad.insert(key.clone()), "reported twice: {key}");
        }
        mismatches.extend(r["mismatches"].as_object().unwrap().clone());
        if r["done"] == true {
            assert!(r["cursor"].is_null());
            return (sums, bad, mismatches);
        }
        cursor = r["cursor"].as_str().unwrap().to_string();
    }
}

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
fn five_thousand_legacy_records_backfilled_in_interrupted_slices_end_in_d1_with_zero_mismatches() {
    let started = Instant::now();
    let stripe = &crate::support::stripe_fake::StripeFake::start();
    let app = App::spawn(stripe_options(stripe).var("MIGRATE_PLANS_IN_CRON", "true"));
    eprintln!("app up in {:?}", started.elapsed());
    let users = generate(5000);
    let pairs: Vec<(String, String)> = users.iter().flat_map(|u| u.keys.clone()).collect();
    app.kv_put_bulk("APP_KV", &pairs);
    let broken: BTreeSet<String> = users.iter().filter_map(|u| u.expect.clone().err()).collect();
    let readable = users.len() - broken.len();
    assert!(broken.len() > 100 && readable > 4500, "{} broken", broken.len());
    eprintln!("loaded {} keys in {:?}", pairs.len(), started.elapsed());

    // Before: verify sees the users missing.
    let r = admin(&app, "GET", "/api/admin/migrations/plans/verify?limit=20", None);
    let missing = r["mismatches"].as_object().unwrap();
    assert!(missing.len() > 10 && missing.values().all(|v| v == "missing"), "{r}");

    // A dry run over everything reports what a run would do and changes nothing.
    let (sums, failed, _) = walk(&app, true);
    assert_eq!((sums["seen"], sums["imported"]), (users.len() as i64, readable as i64), "{sums:?}");
    assert_eq!(failed, broken);
    assert_eq!(app.count("SELECT COUNT(*) FROM users"), 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM plan_changes"), 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM app_state WHERE name LIKE 'migration:%'"), 0);
    eprintln!("dry run done at {:?}", started.elapsed());

    // The run, stopped after every slice of a random size: resumed with the cursor it
    // answered, or without one (from the position kept in app_state), or by the cron.
    let mut rng = Rng(42);
    let (mut cursor, mut calls, mut crons) = (None::<String>, 0, 0);
    loop {
        calls += 1;
        assert!(calls < 400, "the backfill does not finish");
        let pick = rng.next() % 10;
        if pick == 0 {
            run_cron(&app, None);
            crons += 1;
            cursor = None; // the cron moved the position on
            continue;
        }
        let limit = 1 + rng.next() % 250;
        let body = match (&cursor, pick < 4) {
            (Some(c), false) => json!({"limit": limit, "cursor": c}),
            _ => json!({"limit": limit}),
        };
        let r = admin(&app, "POST", "/api/admin/migrations/plans", Some(body));
        assert!(r["seen"].as_i64().unwrap() <= limit as i64, "{r}");
        if r["done"] == true {
            break;
        }
        cursor = r["cursor"].as_str().map(str::to_string);
    }
    eprintln!("backfill: {calls} calls ({crons} cron slices), done at {:?}", started.elapsed());
    let r = admin(&app, "POST", "/api/admin/migrations/plans", Some(json!({})));
    assert_eq!((r["done"].as_bool(), r["seen"].as_i64()), (Some(true), Some(0)), "a finished run stays finished: {r}");

    // D1 holds every readable record, once, with its audit row; nothing of the broken.
    let rows = app.sql(
        "SELECT u.auth_id, u.plan, u.subscription_status, u.trial_ends_at, u.stripe_customer_id, u.trial_used, \
           u.legacy_imported_at, (SELECT COUNT(*) FROM plan_changes p WHERE p.user_id = u.id AND p.cause = 'migration') AS audits \
         FROM users u",
    );
    let by_uid: BTreeMap<&str, &Value> = rows.iter().map(|r| (r["auth_id"].as_str().unwrap(), r)).collect();
    assert_eq!(by_uid.len(), readable);
    for u in &users {
        match &u.expect {
            Err(_) => assert!(!by_uid.contains_key(u.uid.as_str()), "{} is broken", u.uid),
            Ok((plan, status, trial_end, customer, used)) => {
                let r = by_uid.get(u.uid.as_str()).unwrap_or_else(|| panic!("{} missing", u.uid));
                assert_eq!(r["plan"].as_str(), Some(*plan), "{}: {r}", u.uid);
                assert_eq!(r["subscription_status"].as_str(), *status, "{}: {r}", u.uid);
                assert_eq!(r["trial_ends_at"].as_i64(), *trial_end, "{}: {r}", u.uid);
                assert_eq!(r["stripe_customer_id"].as_str(), customer.as_deref(), "{}: {r}", u.uid);
                assert_eq!(r["trial_used"].as_i64(), Some(*used), "{}: {r}", u.uid);
                assert!(r["legacy_imported_at"].is_i64() && r["audits"] == 1, "{}: {r}", u.uid);
            }
        }
    }

    // Verify: zero mismatches; the broken records listed by key.
    let (sums, unreadable, mismatches) = walk(&app, false);
    assert_eq!(mismatches, BTreeMap::new());
    assert_eq!((sums["seen"], sums["matching"]), (users.len() as i64, readable as i64), "{sums:?}");
    assert_eq!(unreadable, broken);
    eprintln!("verified at {:?}", started.elapsed());

    // A webhook changes a migrated user; a later run (from the start) leaves it alone,
    // imports nothing twice and reports every broken record again, with its key.
    let subscribed = users.iter().find(|u| u.keys.iter().any(|(_, v)| v.contains("currentPeriodEnd"))).unwrap();
    let r = row(&app, &subscribed.uid).unwrap();
    let c = Customer {
        auth_id: subscribed.uid.clone(),
        user_id: r["id"].as_str().unwrap().to_string(),
        customer: r["stripe_customer_id"].as_str().unwrap().to_string(),
        subscription: r["stripe_subscription_id"].as_str().unwrap().to_string(),
    };
    stripe.put_subscription(subscription(&c, "active", PRICE_PRO));
    let ev = event(&unique("evt_mig"), "customer.subscription.updated", now(), subscription(&c, "active", PRICE_PRO));
    assert_eq!(deliver(&app, &ev).status, 200);
    assert_eq!(row(&app, &c.auth_id).unwrap()["plan"], "pro");
    let (mut imported, mut skipped, mut failed) = (0, BTreeMap::<String, i64>::new(), BTreeSet::new());
    let mut body = json!({"cursor": "0:", "limit": 250});
    loop {
        let r = admin(&app, "POST", "/api/admin/migrations/plans", Some(body));
        imported += r["imported"].as_i64().unwrap();
        for (k, v) in r["skipped"].as_object().unwrap() {
            *skipped.entry(k.clone()).or_default() += v.as_i64().unwrap();
        }
        failed.extend(r["failed"].as_object().unwrap().keys().cloned());
        if r["done"] == true {
            break;
        }
        body = json!({"limit": 250});
    }
    assert_eq!(imported, 0);
    assert_eq!(skipped.get("changed_by_stripe"), Some(&1), "{skipped:?}");
    assert_eq!(skipped.get("up_to_date"), Some(&(readable as i64 - 1)), "{skipped:?}");
    assert_eq!(failed, broken);
    let r = row(&app, &c.auth_id).unwrap();
    assert_eq!((r["plan"].as_str(), r["subscription_status"].as_str()), (Some("pro"), Some("active")));
    let (_, _, mismatches) = walk(&app, false);
    assert_eq!(mismatches, BTreeMap::new());
    eprintln!("all done at {:?}", started.elapsed());
}

#[test]
fn the_backfill_refuses_bad_input_and_callers_without_the_admin_token() {
    let app = &shared().app;
    let r = send(&agent(), "POST", &app.url("/api/admin/migrations/plans"), &[], Some(b"{}"));
    assert_eq!(r.status, 401, "{}", r.body);
    let user = format!("Bearer {}", token(&unique("not-admin")));
    let r = send(&agent(), "GET", &app.url("/api/admin/migrations/plans/verify"), &[("Authorization", &user)], None);
    assert_eq!(r.status, 403, "{}", r.body);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for body in
        [r#"{"limit":0}"#, r#"{"limit":251}"#, r#"{"cursor":"nope"}"#, r#"{"dryrun":true}"#, r#"{"dryRun":"yes"}"#]
    {
        let r = send(
            &agent(),
            "POST",
            &app.url("/api/admin/migrations/plans"),
            &[("Authorization", &auth)],
            Some(body.as_bytes()),
        );
        assert_eq!((r.status, crate::error_code(&r.json())), (400, "INVALID_REQUEST"), "{body}: {}", r.body);
    }
    let r = send(
        &agent(),
        "GET",
        &app.url("/api/admin/migrations/plans/verify?limit=x"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

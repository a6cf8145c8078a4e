use std::sync::{Arc, Barrier};

use crate::shared;
use crate::support::{get, token, unique};

fn users_with(auth_id: &str) -> Vec<serde_json::Value> {
    shared().app.sql(&format!("SELECT * FROM users WHERE auth_id = '{auth_id}'"))
}

#[test]
fn a_new_user_gets_the_free_plan_in_the_old_format_and_one_row() {
    let who = unique("new-user");
    let r = get(&shared().app.url("/api/plan/me"), Some(&token(&who)));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cancelAt",
            "currentPeriodEnd",
            "ok",
            "plan",
            "planUpdatedAt",
            "scheduledAt",
            "scheduledPlan",
            "subscriptionStatus",
            "trialEndsAt"
        ]
    );
    assert_eq!(body["ok"], true);
    assert_eq!(body["plan"], "free");
    for k in ["subscriptionStatus", "trialEndsAt", "currentPeriodEnd", "cancelAt", "scheduledPlan", "scheduledAt"] {
        assert!(body[k].is_null(), "{k}");
    }
    let updated = body["planUpdatedAt"].as_str().unwrap();
    assert!(updated.len() == 20 && updated.ends_with('Z') && updated.contains('T'), "{updated}");
    assert_eq!(r.header("Cache-Control"), Some("private, no-store"));

    let rows = users_with(&who);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["plan"], "free");
    assert_eq!(rows[0]["email"], format!("{who}@example.test"));
    assert!(rows[0]["id"].as_str().unwrap().starts_with("usr_"));
}

#[test]
fn asking_again_returns_the_same_row_and_writes_nothing() {
    let who = unique("repeat-user");
    let first = get(&shared().app.url("/api/plan/me"), Some(&token(&who)));
    assert_eq!(first.status, 200);
    let id = users_with(&who)[0]["id"].clone();
    let second = get(&shared().app.url("/api/plan/me"), Some(&token(&who)));
    assert_eq!(second.status, 200);
    assert_eq!(second.json(), first.json());
    let rows = users_with(&who);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], id);
    assert_eq!(second.header("X-D1-Rows-Written"), Some("0"));
    assert_eq!(second.header("X-D1-Rows-Read"), Some("1"));
    assert_eq!(second.header("X-D1-Round-Trips"), Some("1"), "one D1 call for an existing user");
}

#[test]
fn twenty_concurrent_first_requests_create_exactly_one_row() {
    let who = unique("racing-user");
    let t = token(&who);
    let url = shared().app.url("/api/plan/me");
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (t, url, barrier) = (t.clone(), url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&url, Some(&t))
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json(), answers[0].json());
    }
    assert_eq!(users_with(&who).len(), 1);
}

#[test]
fn different_users_get_different_rows() {
    let (a, b) = (unique("user-a"), unique("user-b"));
    assert_eq!(get(&shared().app.url("/api/plan/me"), Some(&token(&a))).status, 200);
    assert_eq!(get(&shared().app.url("/api/plan/me"), Some(&token(&b))).status, 200);
    assert_ne!(users_with(&a)[0]["id"], users_with(&b)[0]["id"]);
}

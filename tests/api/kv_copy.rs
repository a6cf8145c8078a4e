//! The legacy KV copy converges on D1: written after the response from the user's
//! current row, kept due in the outbox until a write succeeds with no change meanwhile.

use std::time::Duration;

use serde_json::json;

use crate::fixtures::{deliver, event, new_customer, run_cron, subscription, user_row, Customer};
use crate::support::{now, test_config, unique, App};
use crate::{shared, stripe_options, PRICE_ESSENTIAL, PRICE_PREMIUM, PRICE_PRO};

/// A test app's configuration ([`test_config`]) without the KV bindings: every KV
/// read and write fails.
pub(crate) fn config_without_kv() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("plangate-no-kv"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = test_config(&dir, false);
    let mut out = String::new();
    let mut skip = false;
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        if line.trim_start().starts_with('[') {
            skip = line.trim() == "[[kv_namespaces]]";
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.contains("APP_KV") && out.contains("[[d1_databases]]"), "{out}");
    std::fs::write(&path, out).unwrap();
    path
}

/// All four legacy keys the old readers use, as D1 says they should be (`None`: the key
/// must not exist).
fn expected_legacy(app: &App, c: &Customer) -> Vec<(String, Option<String>)> {
    let row = user_row(app, &c.user_id);
    let trialing = row["subscription_status"] == "trialing";
    vec![
        (
            format!("planByUid:{}", c.auth_id),
            Some(if trialing { "trial".to_string() } else { row["plan"].as_str().unwrap().to_string() }),
        ),
        (
            format!("billingStatus:{}", c.auth_id),
            Some(row["subscription_status"].as_str().unwrap_or("none").to_string()),
        ),
        (format!("trialEndByUid:{}", c.auth_id), row["trial_ends_at"].as_i64().map(|t| (t * 1000).to_string())),
        (format!("trialUsedByUid:{}", c.auth_id), (row["trial_used"].as_i64() != Some(0)).then(|| "true".to_string())),
    ]
}

/// `subscription` trialing until a week from now.
fn trialing(c: &Customer, price: &str) -> serde_json::Value {
    let mut sub = subscription(c, "trialing", price);
    sub["trial_end"] = json!(now() + 7 * 86_400);
    sub
}

fn assert_kv_matches_d1(app: &App, c: &Customer) {
    for (key, want) in expected_legacy(app, c) {
        let got = app.kv_get_when(&key, Duration::from_secs(10), |v| *v == want);
        assert_eq!(got, want, "{key}");
    }
}

#[test]
fn kv_copies_that_failed_while_kv_was_down_converge_once_it_heals() {
    let stripe = &shared().stripe;
    let persist = std::env::temp_dir().join(unique("plangate-kvdown"));
    let down = App::spawn(crate::AppOptions {
        persist: Some(persist.clone()),
        config: Some(config_without_kv()),
        ..stripe_options(stripe)
    });
    let users: Vec<Customer> = (0..3).map(|i| new_customer(&down, &format!("kvdown{i}"))).collect();
    for (i, c) in users.iter().enumerate() {
        // The first one trials, so every legacy key has a value to converge on.
        let sub = match i {
            0 => trialing(c, PRICE_ESSENTIAL),
            _ => subscription(c, "active", [PRICE_PRO, PRICE_PREMIUM][i - 1]),
        };
        stripe.put_subscription(sub.clone());
        let ev = event(&format!("evt_kvdown_{}", c.subscription), "customer.subscription.created", now(), sub);
        let r = deliver(&down, &ev);
        assert_eq!(r.status, 200, "KV being down never fails a delivery: {}", r.body);
    }
    run_cron(&down, Some(now() + 600)); // the cron cannot write either
    let due = down.count("SELECT COUNT(*) FROM kv_outbox");
    assert_eq!(due, 3, "every copy is still due");
    down.stop();
    drop(down);

    let healed =
        App::spawn(crate::AppOptions { persist: Some(persist.clone()), migrate: false, ..stripe_options(stripe) });
    run_cron(&healed, Some(now() + 7200));
    assert_eq!(user_row(&healed, &users[0].user_id)["subscription_status"], "trialing");
    for c in &users {
        assert_kv_matches_d1(&healed, c);
    }
    assert_eq!(healed.count("SELECT COUNT(*) FROM kv_outbox"), 0, "nothing left due");
    let listing = crate::support::send(
        &crate::support::agent(),
        "GET",
        &healed.url("/api/admin/webhook-events"),
        &[("Authorization", &format!("Bearer {}", crate::ADMIN_TOKEN))],
        None,
    );
    assert_eq!(listing.json()["kvCopiesDue"], 0, "{}", listing.body);
    drop(healed);
    let _ = std::fs::remove_dir_all(&persist);
}

#[test]
fn concurrent_deliveries_for_one_user_leave_kv_on_the_newest_state() {
    let s = shared();
    let c = new_customer(&s.app, "kv-race");
    let t0 = now() - 100;
    // Stripe's history: a trial, then essential → pro → premium → canceled.
    let states = [
        ("trialing", PRICE_ESSENTIAL),
        ("active", PRICE_ESSENTIAL),
        ("active", PRICE_PRO),
        ("active", PRICE_PREMIUM),
        ("canceled", PRICE_PREMIUM),
    ];
    let events: Vec<_> = states
        .iter()
        .enumerate()
        .map(|(i, (status, price))| {
            event(
                &format!("evt_kvrace_{i}_{}", c.subscription),
                "customer.subscription.updated",
                t0 + i as i64,
                if *status == "trialing" { trialing(&c, price) } else { subscription(&c, status, price) },
            )
        })
        .collect();
    for round in 0..3 {
        // What Stripe says now: trialing (every legacy key set), canceled (the trial's
        // end deleted), then premium.
        s.stripe.put_subscription(match round {
            0 => trialing(&c, PRICE_PRO),
            1 => subscription(&c, "canceled", PRICE_PREMIUM),
            _ => subscription(&c, "active", PRICE_PREMIUM),
        });
        let threads: Vec<_> = events
            .iter()
            .cycle()
            .skip(round)
            .take(12)
            .cloned()
            .map(|ev| {
                let mut ev = ev;
                ev["id"] = json!(format!("{}_{round}_{}", ev["id"].as_str().unwrap(), unique("x")));
                std::thread::spawn(move || deliver(&shared().app, &ev))
            })
            .collect();
        for t in threads {
            let r = t.join().unwrap();
            assert!(r.status == 200 || r.status == 202, "{}", r.body);
        }
        let status = user_row(&s.app, &c.user_id)["subscription_status"].clone();
        assert_eq!(status, ["trialing", "canceled", "active"][round], "round {round}: D1 holds what Stripe says");
        assert_kv_matches_d1(&s.app, &c);
    }
    let row = user_row(&s.app, &c.user_id);
    assert_eq!((row["plan"].as_str(), row["subscription_status"].as_str()), (Some("premium"), Some("active")));
    assert_eq!((row["trial_ends_at"].as_i64(), row["trial_used"].as_i64()), (None, Some(1)), "{row}");
}

#[test]
fn only_the_legacy_keys_whose_value_changed_are_written_and_a_resync_rewrites_all() {
    let s = shared();
    let c = new_customer(&s.app, "kv-diff");
    let admin = format!("Bearer {}", crate::ADMIN_TOKEN);
    let plan_key = format!("planByUid:{}", c.auth_id);
    let status_key = format!("billingStatus:{}", c.auth_id);
    let settle = |want: &str| {
        // The copies are written after the response: wait for the outbox to empty.
        let start = std::time::Instant::now();
        while s.app.count(&format!("SELECT COUNT(*) FROM kv_outbox WHERE user_id = '{}'", c.user_id)) > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "copies of {want} still due");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    s.stripe.put_subscription(subscription(&c, "active", PRICE_ESSENTIAL));
    let r = deliver(
        &s.app,
        &event(
            &format!("evt_kvd1_{}", c.subscription),
            "customer.subscription.created",
            now(),
            subscription(&c, "active", PRICE_ESSENTIAL),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    settle("essential");
    assert_kv_matches_d1(&s.app, &c);
    // Someone overwrites the plan key behind plangate's back; then only the status
    // changes at Stripe. The flush writes the status and leaves the plan key alone.
    s.app.kv_put(&plan_key, "sentinel");
    s.stripe.put_subscription(subscription(&c, "past_due", PRICE_ESSENTIAL));
    let r = deliver(
        &s.app,
        &event(
            &format!("evt_kvd2_{}", c.subscription),
            "customer.subscription.updated",
            now(),
            subscription(&c, "past_due", PRICE_ESSENTIAL),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    settle("past_due");
    let status = s.app.kv_get_when(&status_key, Duration::from_secs(10), |v| v.as_deref() == Some("past_due"));
    assert_eq!(status.as_deref(), Some("past_due"));
    assert_eq!(
        s.app.kv_get_when(&plan_key, Duration::ZERO, |_| true).as_deref(),
        Some("sentinel"),
        "unchanged: not written"
    );
    // An admin re-sync repairs copies that diverged: every key is written again.
    let body = json!({"userId": c.user_id}).to_string();
    let r = crate::support::send(
        &crate::support::agent(),
        "POST",
        &s.app.url("/api/admin/resync"),
        &[("Authorization", &admin)],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    settle("resync");
    assert_kv_matches_d1(&s.app, &c);
}

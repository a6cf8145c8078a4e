//! The test-account purge (`POST /api/admin/purge-test-accounts`): a dry run lists
//! exactly what the purge then deletes, and nothing outside the match is touched.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{agent, now, send, token, unique, App, Resp};
use crate::ADMIN_TOKEN;

const TABLES: [&str; 9] = [
    "users",
    "usage",
    "usage_requests",
    "credit_transactions",
    "customers",
    "billing_locks",
    "kv_outbox",
    "plan_changes",
    "stripe_payments",
];
const KV_PREFIXES: [&str; 5] = ["planByUid:", "billingStatus:", "trialEndByUid:", "trialUsedByUid:", "entitlements:"];

fn purge(app: &App, body: &Value) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send(
        &agent(),
        "POST",
        &app.url("/api/admin/purge-test-accounts"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

fn hash(email: &str) -> String {
    hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()))
}

/// A user (`usr_<tag>_<name>`, auth id `<tag>-<name>`) with a row in every table that
/// references users, and its five KV keys.
fn user_sql(tag: &str, name: &str, email: Option<&str>) -> String {
    let (id, auth, t) = (format!("usr_{tag}_{name}"), format!("{tag}-{name}"), now());
    let email_sql = email.map_or("NULL".to_string(), |e| format!("'{e}'"));
    let hash_sql = email.map_or("NULL".to_string(), |e| format!("'{}'", hash(e)));
    format!(
        "INSERT INTO users (id, auth_id, email, plan_updated_at, created_at, updated_at) VALUES ('{id}', '{auth}', {email_sql}, {t}, {t}, {t});
INSERT INTO usage (user_id, period, feature, used, period_end, updated_at) VALUES ('{id}', 'm2026-01', 'cover_letter', 1, 0, {t});
INSERT INTO usage_requests (user_id, idempotency_key, feature, amount, period, token, created_at) VALUES ('{id}', 'k', 'cover_letter', 1, 'm2026-01', 't', {t});
INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, created_at) VALUES ('ct_{id}', '{id}', 5, 'grant', 'test:{id}', {t});
INSERT INTO customers (id, user_id, email_hash, source) VALUES ('cust_{id}', '{id}', {hash_sql}, 'legacy');
INSERT INTO billing_locks (user_id, holder, action, expires_at) VALUES ('{id}', 'req_test', 'test', 0);
INSERT INTO kv_outbox (user_id, version, due_at) VALUES ('{id}', 1, 4102444800);
INSERT INTO plan_changes (user_id, old_plan, new_plan, cause, created_at) VALUES ('{id}', 'free', 'pro', 'test', {t});
INSERT INTO stripe_payments (id, user_id, amount, status, last_event_id, last_event_created, created_at, updated_at) VALUES ('pi_{id}', '{id}', 100, 'succeeded', 'evt_test', 0, {t}, {t});
"
    )
}

fn kv_pairs(tag: &str, names: &[&str]) -> Vec<(String, String)> {
    names.iter().flat_map(|n| KV_PREFIXES.iter().map(move |p| (format!("{p}{tag}-{n}"), "x".to_string()))).collect()
}

/// How many rows each table holds for the user.
fn rows_of(app: &App, tag: &str, name: &str) -> Vec<i64> {
    let id = format!("usr_{tag}_{name}");
    TABLES
        .iter()
        .map(|t| {
            let col = if *t == "users" { "id" } else { "user_id" };
            app.count(&format!("SELECT COUNT(*) FROM {t} WHERE {col} = '{id}'"))
        })
        .collect()
}

/// Every KV key of the test's auth ids (they all start with `tag`).
fn kv_of(app: &App, tag: &str) -> Vec<String> {
    let mut keys: Vec<String> = KV_PREFIXES.iter().flat_map(|p| app.kv_keys("APP_KV", &format!("{p}{tag}"))).collect();
    keys.sort();
    keys
}

fn listed(body: &Value) -> Vec<(Option<String>, String, Option<String>)> {
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["userId"].as_str().map(str::to_string),
                u["authId"].as_str().unwrap().to_string(),
                u["email"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn a_dry_run_lists_exactly_what_the_purge_then_deletes_and_nothing_outside_the_match_is_touched() {
    let app = &crate::shared().app;
    let tag = unique("purge");
    let domain = format!("{tag}.example.test");
    let targets = [
        ("t1", format!("qa1@{domain}")),
        ("t2", format!("QA2@{}", domain.to_uppercase())),
        ("t3", format!("qa+3@{domain}")),
    ];
    let keepers = [
        ("k1", Some(format!("keep@other-{domain}"))),
        ("k2", Some(format!("keep@{domain}.evil.test"))),
        ("k3", Some(format!("keep@sub.{domain}"))),
        ("k4", None),
    ];
    let mut sql = String::new();
    for (name, email) in &targets {
        sql.push_str(&user_sql(&tag, name, Some(email)));
    }
    for (name, email) in &keepers {
        sql.push_str(&user_sql(&tag, name, email.as_deref()));
    }
    // Customer records not linked to any user: the target's email goes, the keeper's stays.
    sql.push_str(&format!(
        "INSERT INTO customers (id, user_id, email_hash, source) VALUES ('cust_{tag}_loose_t', NULL, '{}', 'legacy'), ('cust_{tag}_loose_k', NULL, '{}', 'legacy');",
        hash(&targets[0].1),
        hash(keepers[0].1.as_deref().unwrap())
    ));
    app.sql_exec(&sql);
    let all: Vec<&str> = targets.iter().map(|(n, _)| *n).chain(keepers.iter().map(|(n, _)| *n)).collect();
    app.kv_put_bulk("APP_KV", &kv_pairs(&tag, &all));
    let kv_before = kv_of(app, &tag);
    assert_eq!(kv_before.len(), 35);
    // The legacy customer API's keys (LEGACY_AUTH_KV): the purged records and the email
    // mappings naming them go; a keeper's, and a target's mapping naming another
    // record, stay.
    let record = |id: &str| format!("customer_{id}");
    let mapping = |email: &str| format!("email_to_customer_{}", hash(email));
    let (t1, t2, t3, k1) = (&targets[0].1, &targets[1].1, &targets[2].1, keepers[0].1.as_deref().unwrap());
    let legacy_gone = vec![
        (record(&format!("cust_usr_{tag}_t1")), "{}".to_string()),
        (record(&format!("cust_usr_{tag}_t2")), "{}".to_string()),
        (record(&format!("cust_usr_{tag}_t3")), "{}".to_string()),
        (record(&format!("cust_{tag}_loose_t")), "{}".to_string()),
        (mapping(t1), format!("cust_usr_{tag}_t1")),
        (mapping(t2), format!("\"cust_usr_{tag}_t2\"")),
    ];
    let legacy_kept = vec![
        (record(&format!("cust_usr_{tag}_k1")), "{}".to_string()),
        (record(&format!("cust_{tag}_loose_k")), "{}".to_string()),
        (mapping(t3), format!("cust_{tag}_elsewhere")),
        (mapping(k1), format!("cust_usr_{tag}_k1")),
    ];
    app.kv_put_bulk("LEGACY_AUTH_KV", &[legacy_gone.clone(), legacy_kept.clone()].concat());
    let mut legacy_listed: Vec<String> = legacy_gone.iter().map(|(k, _)| k.clone()).collect();
    legacy_listed.sort();
    let sorted = |v: &Value| {
        let mut keys: Vec<String> = v.as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
        keys.sort();
        keys
    };

    let expected_users: Vec<(Option<String>, String, Option<String>)> =
        targets.iter().map(|(n, e)| (Some(format!("usr_{tag}_{n}")), format!("{tag}-{n}"), Some(e.clone()))).collect();
    let expected_rows = json!({"users": 3, "usage": 3, "usage_requests": 3, "credit_transactions": 3, "customers": 4,
                               "billing_locks": 3, "kv_outbox": 3, "plan_changes": 3, "stripe_payments": 3});
    let pattern = format!("*@{domain}");

    // The dry run (the default) lists the accounts, their rows and keys, and deletes nothing.
    for body in [json!({"match": pattern}), json!({"match": pattern, "dryRun": true})] {
        let r = purge(app, &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let plan = r.json();
        assert_eq!(plan["dryRun"], true);
        assert_eq!(listed(&plan), expected_users);
        assert_eq!(plan["rows"], expected_rows);
        assert_eq!(plan["remaining"], 0);
        let keys: Vec<String> = kv_pairs(&tag, &["t1", "t2", "t3"]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(plan["kvKeys"], json!(keys));
        assert_eq!(sorted(&plan["legacyCustomerKeys"]), legacy_listed);
    }
    for (name, _) in &targets {
        assert_eq!(rows_of(app, &tag, name), vec![1; 9], "{name} untouched by the dry run");
    }
    assert_eq!(kv_of(app, &tag), kv_before);
    for (key, _) in legacy_gone.iter().chain(&legacy_kept) {
        assert!(app.kv_get_in("LEGACY_AUTH_KV", key).is_some(), "{key} untouched by the dry run");
    }

    // The purge answers the same list and deletes exactly that.
    let r = purge(app, &json!({"match": pattern, "dryRun": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    assert_eq!((done["dryRun"].as_bool(), done["kvFailed"].as_array().map(Vec::len)), (Some(false), Some(0)));
    assert_eq!(listed(&done), expected_users);
    assert_eq!(done["rows"], expected_rows);
    for (name, _) in &targets {
        assert_eq!(rows_of(app, &tag, name), vec![0; 9], "{name}");
    }
    for (name, _) in &keepers {
        assert_eq!(rows_of(app, &tag, name), vec![1; 9], "{name} is outside the match");
    }
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM customers WHERE id LIKE 'cust_{tag}_loose_%'")), 1);
    let kept: Vec<String> = kv_before.iter().filter(|k| k.contains("-k")).cloned().collect();
    assert_eq!(kept.len(), 20);
    assert_eq!(kv_of(app, &tag), kept, "the targets' KV keys are gone, the others' are not");
    assert_eq!(sorted(&done["legacyCustomerKeys"]), legacy_listed);
    for (key, _) in &legacy_gone {
        assert_eq!(app.kv_get_in("LEGACY_AUTH_KV", key), None, "{key} is purged");
    }
    for (key, value) in &legacy_kept {
        assert_eq!(app.kv_get_in("LEGACY_AUTH_KV", key).as_deref(), Some(value.as_str()), "{key} stays");
    }

    // Nothing is left to purge.
    let again = purge(app, &json!({"match": pattern, "dryRun": false})).json();
    assert_eq!(again["users"], json!([]));
    assert_eq!(again["rows"]["users"], 0);
}

#[test]
fn a_list_of_auth_ids_purges_those_accounts_including_ones_only_kv_knows() {
    let app = &crate::shared().app;
    let tag = unique("purgeids");
    app.sql_exec(&format!("{}{}", user_sql(&tag, "a", Some("a@ids.example.test")), user_sql(&tag, "c", None)));
    app.kv_put_bulk("APP_KV", &kv_pairs(&tag, &["a", "c"]));
    // Accounts only the legacy plan keys know: `b` had a subscription that ended, `d`
    // one Stripe still bills, `e` a record that cannot be read (it may say so), `f` a
    // bare status string only a paying customer had (no subscription id), `g` a legacy
    // trial with no subscription (nothing to bill).
    let legacy = |name: &str, plan: &str, status: &str| -> Vec<(String, String)> {
        let uid = format!("{tag}-{name}");
        vec![
            (format!("planByUid:{uid}"), plan.to_string()),
            (format!("billingStatus:{uid}"), status.to_string()),
            (format!("trialEndByUid:{uid}"), "1700000000000".to_string()),
            (format!("trialUsedByUid:{uid}"), "true".to_string()),
            (format!("entitlements:{uid}"), "{}".to_string()),
        ]
    };
    let billed = format!(r#"{{"status":"active","customerId":"cus_{tag}","subscriptionId":"sub_{tag}"}}"#);
    let ended = format!(r#"{{"status":"canceled","customerId":"cus_{tag}b","subscriptionId":"sub_{tag}b"}}"#);
    app.kv_put_bulk(
        "APP_KV",
        &[
            legacy("b", "pro", &ended),
            legacy("d", "pro", &billed),
            legacy("e", "no-such-plan", "active"),
            legacy("f", "premium", "active"),
            legacy("g", "trial", "trialing"),
        ]
        .concat(),
    );
    let ids = json!(["a", "b", "a", "d", "e", "f", "g"].map(|n| format!("{tag}-{n}")));

    let r = purge(app, &json!({"match": ids, "dryRun": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    assert_eq!(
        listed(&done),
        vec![
            (Some(format!("usr_{tag}_a")), format!("{tag}-a"), Some("a@ids.example.test".to_string())),
            (None, format!("{tag}-b"), None),
            (None, format!("{tag}-g"), None),
        ]
    );
    let skipped: Vec<(&str, &str)> = done["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["authId"].as_str().unwrap(), u["subscriptionStatus"].as_str().unwrap()))
        .collect();
    let (d, e, f) = (format!("{tag}-d"), format!("{tag}-e"), format!("{tag}-f"));
    assert_eq!(skipped, vec![(d.as_str(), "active"), (e.as_str(), "unreadable"), (f.as_str(), "active")], "{done}");
    assert_eq!(done["rows"]["users"], 1);
    assert_eq!(rows_of(app, &tag, "a"), vec![0; 9]);
    assert_eq!(rows_of(app, &tag, "c"), vec![1; 9]);
    let left = kv_of(app, &tag);
    assert_eq!(left.len(), 20, "{left:?}");
    let gone = ["a", "b", "g"].map(|n| format!("{tag}-{n}"));
    assert!(left.iter().all(|k| !gone.iter().any(|g| k.ends_with(g.as_str()))), "{left:?}");
}

#[test]
fn a_purge_takes_at_most_50_accounts_per_call_and_says_how_many_remain() {
    let app = &crate::shared().app;
    let tag = unique("purgemany");
    let t = now();
    let values: Vec<String> = (0..52)
        .map(|i| format!("('usr_{tag}_{i:03}', '{tag}-{i}', 'u{i}@{tag}.example.test', {t}, {t}, {t})"))
        .collect();
    app.sql_exec(&format!(
        "INSERT INTO users (id, auth_id, email, plan_updated_at, created_at, updated_at) VALUES {};",
        values.join(", ")
    ));
    let pattern = format!("u*@{tag}.example.test");
    let plan = purge(app, &json!({"match": pattern})).json();
    assert_eq!((plan["users"].as_array().map(Vec::len), plan["remaining"].as_i64()), (Some(50), Some(2)), "{plan}");
    let first = purge(app, &json!({"match": pattern, "dryRun": false}));
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["users"], plan["users"], "the purge takes what the dry run listed");
    assert_eq!((first["rows"]["users"].as_i64(), first["remaining"].as_i64()), (Some(50), Some(2)));
    let second = purge(app, &json!({"match": pattern, "dryRun": false})).json();
    assert_eq!((second["rows"]["users"].as_i64(), second["remaining"].as_i64()), (Some(2), Some(0)), "{second}");
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM users WHERE id LIKE 'usr_{tag}_%'")), 0);
}

#[test]
fn an_empty_or_match_everything_pattern_is_refused() {
    let app = &crate::shared().app;
    let refused = [
        json!({"match": ""}),
        json!({"match": "  "}),
        json!({"match": "*"}),
        json!({"match": "**"}),
        json!({"match": "*@*"}),
        json!({"match": "*@*.*"}),
        json!({"match": "*@*.com"}),
        json!({"match": "*@example.*"}),
        json!({"match": "*@test"}),
        json!({"match": "nobody"}),
        json!({}),
        json!({"match": null}),
        json!({"match": []}),
        json!({"match": [""]}),
        json!({"match": [1]}),
        json!({"match": (0..51).map(|i| format!("uid-{i}")).collect::<Vec<_>>()}),
        json!({"match": "*@*.co.uk"}),
        json!({"match": "*@qa*.com.au"}),
        json!({"match": "*@test.example.test", "dryRun": "no"}),
        json!({"match": "*@test.example.test", "dry_run": false}),
    ];
    for body in refused {
        let r = purge(app, &body);
        assert_eq!((r.status, crate::error_code(&r.json())), (400, "INVALID_REQUEST"), "{body}: {}", r.body);
    }
    let user = send(
        &agent(),
        "POST",
        &app.url("/api/admin/purge-test-accounts"),
        &[("Authorization", &format!("Bearer {}", token("someone")))],
        Some(br#"{"match":"*@test.example.test","dryRun":false}"#),
    );
    assert_eq!(user.status, 403, "{}", user.body);
}

#[test]
fn a_list_of_auth_ids_takes_only_the_records_linked_to_those_accounts_not_others_with_their_email() {
    // An account's email may come from a token that never verified it: a record of
    // that address nobody linked is someone else's until proven otherwise.
    let app = &crate::shared().app;
    let tag = unique("purgelinked");
    let victim = format!("victim@{tag}.example.test");
    app.sql_exec(&format!(
        "{}INSERT INTO customers (id, user_id, email_hash, source) VALUES ('cust_{tag}_victim', NULL, '{}', 'legacy');",
        user_sql(&tag, "a", Some(&victim)),
        hash(&victim)
    ));
    let victim_keys = vec![
        (format!("customer_cust_{tag}_victim"), "{}".to_string()),
        (format!("email_to_customer_{}", hash(&victim)), format!("cust_{tag}_victim")),
    ];
    app.kv_put_bulk("LEGACY_AUTH_KV", &victim_keys);

    for dry_run in [true, false] {
        let r = purge(app, &json!({"match": [format!("{tag}-a")], "dryRun": dry_run}));
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        assert_eq!(body["rows"]["customers"], 1, "only the account's own record: {body}");
        let own = format!("customer_cust_usr_{tag}_a");
        assert_eq!(body["legacyCustomerKeys"], json!([own]), "{body}");
    }
    assert_eq!(rows_of(app, &tag, "a"), vec![0; 9]);
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM customers WHERE id = 'cust_{tag}_victim'")), 1);
    for (key, value) in &victim_keys {
        assert_eq!(app.kv_get_in("LEGACY_AUTH_KV", key).as_deref(), Some(value.as_str()), "{key} stays");
    }
}

#[test]
fn when_kv_keys_cannot_be_deleted_nothing_is_deleted_from_d1_and_the_purge_says_call_again() {
    // KV first, D1 only once every key is gone: a key left behind would bring the
    // account back through a read-through after its row was deleted.
    let stripe = &crate::shared().stripe;
    let persist = std::env::temp_dir().join(unique("plangate-purgekvdown"));
    let down = App::spawn(crate::AppOptions {
        persist: Some(persist.clone()),
        config: Some(crate::kv_copy::config_without_kv()),
        ..crate::stripe_options(stripe)
    });
    let tag = unique("purgekv");
    down.sql_exec(&user_sql(&tag, "a", Some(&format!("a@{tag}.example.test"))));
    let r = purge(&down, &json!({"match": format!("*@{tag}.example.test"), "dryRun": false}));
    assert_eq!((r.status, crate::error_code(&r.json())), (503, "PURGE_INCOMPLETE"), "{}", r.body);
    let failed: Vec<String> = kv_pairs(&tag, &["a"]).into_iter().map(|(k, _)| k).collect();
    assert_eq!(r.json()["kvFailed"], json!(failed));
    assert_eq!(rows_of(&down, &tag, "a"), vec![1; 9], "D1 untouched");
    drop(down);
    let _ = std::fs::remove_dir_all(&persist);
}

#[test]
fn an_account_stripe_may_still_bill_or_a_billing_action_holds_is_left_alone_and_listed_as_skipped() {
    let app = &crate::shared().app;
    let tag = unique("purgesub");
    let domain = format!("{tag}.example.test");
    // (name, status, has a Stripe subscription): every status that may still bill, one
    // that ended, and a legacy trial (trialing with no subscription: nothing to bill).
    let accounts = [
        ("active", "active", true),
        ("trialing", "trialing", true),
        ("pastdue", "past_due", true),
        ("pending", "incomplete", true),
        ("unpaid", "unpaid", true),
        ("paused", "paused", true),
        ("ended", "canceled", true),
        ("legacytrial", "trialing", false),
        // Imported from a legacy record that kept the status as a bare string: no
        // subscription id, but a status only a paying customer had.
        ("legacypaid", "past_due", false),
        // A status this version does not know, and a subscription id without a status:
        // neither surely bills nothing.
        ("newstatus", "something_new", true),
        ("nostatus", "", true),
        ("expired", "incomplete_expired", true),
        ("busy", "canceled", true),
    ];
    let mut sql = String::new();
    for (name, status, billed) in accounts {
        sql.push_str(&user_sql(&tag, name, Some(&format!("{name}@{domain}"))));
        let sub = if billed { format!("'sub_{tag}_{name}'") } else { "NULL".into() };
        let status = if status.is_empty() { "NULL".to_string() } else { format!("'{status}'") };
        sql.push_str(&format!(
            "UPDATE users SET subscription_status = {status}, stripe_subscription_id = {sub} WHERE id = 'usr_{tag}_{name}';"
        ));
    }
    // A billing action of `busy` holds its lock: the batch leaves it (it may be
    // creating a subscription right now).
    sql.push_str(&format!("UPDATE billing_locks SET expires_at = {} WHERE user_id = 'usr_{tag}_busy';", now() + 600));
    app.sql_exec(&sql);
    let id = |n: &str| format!("usr_{tag}_{n}");
    for dry_run in [true, false] {
        let r = purge(app, &json!({"match": format!("*@{domain}"), "dryRun": dry_run}));
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        let ids = |field: &str| -> Vec<String> {
            let mut v: Vec<String> =
                body[field].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap().to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(ids("users"), vec![id("ended"), id("expired"), id("legacytrial")], "{body}");
        let mut expected: Vec<String> = [
            "active",
            "busy",
            "legacypaid",
            "newstatus",
            "nostatus",
            "paused",
            "pastdue",
            "pending",
            "trialing",
            "unpaid",
        ]
        .iter()
        .map(|n| id(n))
        .collect();
        expected.sort();
        assert_eq!(ids("skipped"), expected, "{body}");
        assert_eq!(body["rows"]["users"], 3, "{body}");
        assert!(body["skipped"].as_array().unwrap().iter().any(|u| u["subscriptionStatus"] == "past_due"));
    }
    for name in ["ended", "expired", "legacytrial"] {
        assert_eq!(rows_of(app, &tag, name), vec![0; 9], "{name} is purged");
    }
    for name in
        ["active", "trialing", "pastdue", "pending", "unpaid", "paused", "busy", "legacypaid", "newstatus", "nostatus"]
    {
        assert_eq!(rows_of(app, &tag, name), vec![1; 9], "{name} stays");
    }
}

//! Customer records (issue 10): the customer API on the legacy paths, its authorisation
//! matrix, linking by verified email only, the read-through import from
//! `LEGACY_AUTH_KV`, the dual write, and the backfill + verify of a whole legacy
//! namespace (on an app of its own, stopped and resumed).

use serde_json::{json, Value};

use crate::fixtures::request;
use crate::support::{claims, hs256, service_token, unique, App, Resp, JWT_SECRET};
use crate::{error_code, shared, stripe_options, ADMIN_TOKEN};

const LEGACY: &str = "LEGACY_AUTH_KV";

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `email_to_customer_<sha256 hex of lower(trim(email))>`, as the legacy writers made it.
fn mapping_key(email: &str) -> String {
    format!("email_to_customer_{}", sha256_hex(&email.trim().to_lowercase()))
}

/// A user's token carrying `email`; `verified` is the `email_verified` claim (absent
/// when `None`).
fn user_token(sub: &str, email: &str, verified: Option<Value>) -> String {
    let mut c = claims(sub);
    c["email"] = json!(email);
    if let Some(v) = verified {
        c["email_verified"] = v;
    }
    hs256(JWT_SECRET, &c)
}

fn verified(sub: &str, email: &str) -> String {
    user_token(sub, email, Some(json!(true)))
}

/// A legacy customer: its record and its email mapping put into `LEGACY_AUTH_KV`.
fn put_legacy(app: &App, id: &str, email: &str, extra: Value) -> Value {
    let mut record = json!({
        "customerId": id, "email": email, "name": "Legacy Name", "companyName": "Acme",
        "plan": "pro", "tier": "gold", "status": "active", "subscriptions": [{"id": "sub_legacy"}],
        "flairs": ["early-adopter"], "displayName": "legacy", "config": {"theme": "dark"},
        "features": {"beta": true}, "createdAt": 1_700_000_000_000_i64, "updatedAt": "2023-11-14T22:15:00Z",
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        record[k] = v;
    }
    app.kv_put_bulk(LEGACY, &[(format!("customer_{id}"), record.to_string()), (mapping_key(email), id.to_string())]);
    record
}

fn call(app: &App, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
    request(app, method, path, bearer, body.as_ref())
}

fn get_as(app: &App, path: &str, bearer: Option<&str>) -> Resp {
    call(app, "GET", path, bearer, None)
}

fn customer_row(app: &App, id: &str) -> Option<Value> {
    app.sql(&format!("SELECT * FROM customers WHERE id = '{id}'")).into_iter().next()
}

fn user_id_of(app: &App, auth_id: &str) -> String {
    app.sql(&format!("SELECT id FROM users WHERE auth_id = '{auth_id}'"))[0]["id"].as_str().unwrap().to_string()
}

/// An email address unique to this test run.
fn email(label: &str) -> String {
    format!("{}@Example.test", unique(label))
}

#[test]
fn a_verified_user_is_linked_to_their_legacy_record_by_email_imported_on_read_and_served_from_d1_after() {
    let app = &shared().app;
    let (id, mail) = (unique("cust-rt"), email("rt"));
    put_legacy(app, &id, &mail, json!({"legacyOnly": {"kept": [1, 2]}, "name": 42}));
    assert!(customer_row(app, &id).is_none(), "not in D1 before the first read");

    let sub = unique("rt-user");
    // The token's email differs in case and spaces: the mapping hashes lower(trim()).
    let token = verified(&sub, &format!("  {}  ", mail.to_uppercase()));
    let r = get_as(app, "/customer/me", Some(&token));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let c = r.json()["customer"].clone();
    assert_eq!(
        c,
        json!({
            "customerId": id, "email": mail, "companyName": "Acme", "plan": "pro", "tier": "gold",
            "status": "active", "subscriptions": [{"id": "sub_legacy"}], "flairs": ["early-adopter"],
            "displayName": "legacy", "config": {"theme": "dark"}, "features": {"beta": true},
            "createdAt": "2023-11-14T22:13:20Z", "updatedAt": "2023-11-14T22:15:00Z",
            // An odd known field and an unknown one come back as they were.
            "name": 42, "legacyOnly": {"kept": [1, 2]},
        })
    );
    let row = customer_row(app, &id).expect("imported on read");
    assert_eq!(row["user_id"], json!(user_id_of(app, &sub)));
    assert_eq!(row["source"], "legacy");
    assert_eq!(row["email_hash"], json!(sha256_hex(&mail.to_lowercase())));
    assert_eq!(row["created_at"], 1_700_000_000);
    assert!(row["imported_at"].as_i64().is_some());
    assert_eq!(
        serde_json::from_str::<Value>(row["extra"].as_str().unwrap()).unwrap(),
        json!({"name": 42, "legacyOnly": {"kept": [1, 2]}})
    );

    // From now on D1 answers: a later change of the legacy record is not read.
    put_legacy(app, &id, &mail, json!({"companyName": "Changed in KV"}));
    let again = get_as(app, "/customer/me", Some(&token)).json();
    assert_eq!(again["customer"]["companyName"], "Acme");
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM customers WHERE id = '{id}'")), 1);
}

#[test]
fn an_unverified_email_links_nothing_and_customer_me_answers_404() {
    let app = &shared().app;
    let (id, mail) = (unique("cust-unv"), email("unv"));
    put_legacy(app, &id, &mail, json!({}));
    let sub = unique("unv-user");
    for claim in [None, Some(json!(false)), Some(json!("true")), Some(json!(1))] {
        let r = get_as(app, "/customer/me", Some(&user_token(&sub, &mail, claim.clone())));
        assert_eq!(r.status, 404, "email_verified = {claim:?}: {}", r.body);
        assert_eq!(error_code(&r.json()), "CUSTOMER_RECORD_NOT_FOUND");
        assert!(r.json()["message"].as_str().unwrap().contains("verified"), "{}", r.body);
    }
    assert!(customer_row(app, &id).is_none_or(|row| row["user_id"].is_null()), "nothing linked");
    // The same user once the provider says the email is verified.
    let r = get_as(app, "/customer/me", Some(&verified(&sub, &mail)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(customer_row(app, &id).unwrap()["user_id"], json!(user_id_of(app, &sub)));
}

#[test]
fn a_record_linked_to_one_user_is_never_relinked_to_another_with_the_same_verified_email() {
    let app = &shared().app;
    let (id, mail) = (unique("cust-once"), email("once"));
    put_legacy(app, &id, &mail, json!({}));
    let first = unique("once-a");
    assert_eq!(get_as(app, "/customer/me", Some(&verified(&first, &mail))).status, 200);
    let second = unique("once-b");
    let r = get_as(app, "/customer/me", Some(&verified(&second, &mail)));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = get_as(app, &format!("/customer/{id}"), Some(&verified(&second, &mail)));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(customer_row(app, &id).unwrap()["user_id"], json!(user_id_of(app, &first)));
    // Linked for good: the first user keeps it even with an unverified token now.
    let r = get_as(app, "/customer/me", Some(&user_token(&first, &mail, None)));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_read_endpoints_answer_self_service_and_admin_and_refuse_everyone_else_without_revealing_anything() {
    let app = &shared().app;
    let (id, mail) = (unique("cust-mx"), email("mx"));
    put_legacy(app, &id, &mail, json!({}));
    let owner = verified(&unique("mx-owner"), &mail);
    let other_mail = email("mx-other");
    let other = verified(&unique("mx-other"), &other_mail);
    let unverified = user_token(&unique("mx-unv"), &mail, None);
    let service = service_token("mx-service");
    let enc = |e: &str| e.replace('@', "%40");
    let paths = [
        "/customer/me".to_string(),
        format!("/customer/{id}"),
        format!("/customer/by-email/{}", enc(&mail)),
        format!("/customer/by-email/{}", mail.to_lowercase()),
    ];
    // (caller, token, expected status for me, by id, by email, by email lowercased)
    let matrix: [(&str, Option<&str>, [u16; 4]); 6] = [
        ("self", Some(&owner), [200, 200, 200, 200]),
        ("other user", Some(&other), [404, 403, 403, 403]),
        ("unverified email", Some(&unverified), [404, 403, 403, 403]),
        ("service", Some(&service), [401, 200, 200, 200]),
        ("admin", Some(ADMIN_TOKEN), [401, 200, 200, 200]),
        ("anonymous", None, [401, 401, 401, 401]),
    ];
    for (who, token, want) in matrix {
        for (path, want) in paths.iter().zip(want) {
            let r = get_as(app, path, token);
            assert_eq!(r.status, want, "{who} GET {path}: {}", r.body);
            if want == 200 {
                assert_eq!(r.json()["customer"]["customerId"], json!(id), "{who} GET {path}");
            }
        }
    }
    // Another user learns nothing: an email or id that exists and one that does not
    // answer the same 403.
    for path in [format!("/customer/by-email/{}", enc(&email("nobody"))), format!("/customer/{}", unique("nobody"))] {
        let r = get_as(app, &path, Some(&other));
        assert_eq!((r.status, error_code(&r.json())), (403, "FORBIDDEN"), "{path}: {}", r.body);
        let r = get_as(app, &path, Some(&service));
        assert_eq!((r.status, error_code(&r.json())), (404, "CUSTOMER_RECORD_NOT_FOUND"), "service {path}: {}", r.body);
    }
    // The other user's own email (no record) is theirs to ask about: 404.
    let r = get_as(app, &format!("/customer/by-email/{}", enc(&other_mail)), Some(&other));
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn a_service_finds_a_legacy_record_by_id_or_by_email_importing_it_on_read() {
    let app = &shared().app;
    let service = service_token("rt-service");
    let (id, mail) = (unique("cust-svc"), format!("{}+tag@example.test", unique("svc")));
    put_legacy(app, &id, &mail, json!({"createdAt": 1_700_000_000}));
    // `+` in the path is a plus (emails have them), `%2B` too.
    let r = get_as(app, &format!("/customer/by-email/{mail}"), Some(&service));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["customer"]["createdAt"], "2023-11-14T22:13:20Z", "seconds read as seconds");
    let row = customer_row(app, &id).expect("imported");
    assert!(row["user_id"].is_null(), "a service read links nobody");
    let r = get_as(app, &format!("/customer/by-email/{}", mail.replace('+', "%2B")), Some(&service));
    assert_eq!(r.status, 200, "{}", r.body);

    let (id2, mail2) = (unique("cust-svc2"), email("svc2"));
    put_legacy(app, &id2, &mail2, json!({}));
    let r = get_as(app, &format!("/customer/{id2}"), Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(customer_row(app, &id2).unwrap()["source"], "legacy");
    // A broken legacy record is not guessed at.
    let broken = unique("cust-broken");
    app.kv_put_in(LEGACY, &format!("customer_{broken}"), "{not json");
    assert_eq!(get_as(app, &format!("/customer/{broken}"), Some(&service)).status, 404);
}

#[test]
fn an_email_several_records_share_resolves_to_the_one_the_legacy_mapping_names_not_the_oldest() {
    let app = &shared().app;
    let mail = email("shared");
    let (older, newer) = (unique("cust-older"), unique("cust-newer"));
    put_legacy(app, &older, &mail, json!({"createdAt": 1_600_000_000}));
    // The mapping names the newer record (the legacy API answered it for the email).
    put_legacy(app, &newer, &mail, json!({"createdAt": 1_700_000_000}));
    // The older one reaches D1 first, by its id.
    assert_eq!(get_as(app, &format!("/customer/{older}"), Some(ADMIN_TOKEN)).status, 200);
    let service = service_token("mapping-service");
    for _ in 0..2 {
        let r = get_as(app, &format!("/customer/by-email/{mail}"), Some(&service));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["customer"]["customerId"], newer.as_str(), "{}", r.body);
    }
    let marked = app.sql(&format!("SELECT id FROM customers WHERE id IN ('{older}', '{newer}') AND mapped = 1"));
    assert_eq!(marked, vec![json!({"id": newer})], "the mapped record is marked, so D1 alone answers it from now on");
    // A verified user of that email is linked to the mapped record too.
    let sub = unique("mapping-user");
    let r = get_as(app, "/customer/me", Some(&verified(&sub, &mail)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["customer"]["customerId"], newer.as_str());
    assert_eq!(customer_row(app, &newer).unwrap()["user_id"], user_id_of(app, &sub).as_str());
    assert!(customer_row(app, &older).unwrap()["user_id"].is_null());
}

#[test]
fn post_customer_creates_once_and_answers_409_customer_exists_for_a_taken_id_or_email() {
    let app = &shared().app;
    let service = service_token("post-service");
    // A user with a verified email creates their own record (profile fields only).
    let (sub, mail) = (unique("post-user"), email("post"));
    let token = verified(&sub, &mail);
    let r = call(app, "POST", "/customer", Some(&token), Some(json!({"name": "Ann", "displayName": "ann"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let c = r.json()["customer"].clone();
    let id = c["customerId"].as_str().unwrap().to_string();
    assert!(id.starts_with("cust_"), "{c}");
    assert_eq!((c["email"].as_str(), c["name"].as_str()), (Some(mail.as_str()), Some("Ann")));
    let row = customer_row(app, &id).unwrap();
    assert_eq!((row["source"].as_str(), row["user_id"].clone()), (Some("api"), json!(user_id_of(app, &sub))));
    // The dual write: the legacy readers see it.
    let legacy: Value = serde_json::from_str(&app.kv_get_in(LEGACY, &format!("customer_{id}")).unwrap()).unwrap();
    assert_eq!((legacy["customerId"].as_str(), legacy["name"].as_str()), (Some(id.as_str()), Some("Ann")));
    assert_eq!(app.kv_get_in(LEGACY, &mapping_key(&mail)), Some(id.clone()));
    // Twice: 409.
    let r = call(app, "POST", "/customer", Some(&token), Some(json!({})));
    assert_eq!((r.status, error_code(&r.json())), (409, "CUSTOMER_EXISTS"), "{}", r.body);
    // A user may not write plan fields, nor create without a verified email.
    let r = call(app, "POST", "/customer", Some(&verified(&unique("p2"), &email("p2"))), Some(json!({"plan": "pro"})));
    assert_eq!((r.status, error_code(&r.json())), (400, "FIELD_NOT_WRITABLE"), "{}", r.body);
    let r = call(app, "POST", "/customer", Some(&user_token(&unique("p3"), &email("p3"), None)), Some(json!({})));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(call(app, "POST", "/customer", None, Some(json!({}))).status, 401);

    // A service creates a record from the legacy JSON, its id kept.
    let (sid, smail) = (unique("cust-post"), email("post-svc"));
    let body = json!({"customerId": sid, "email": smail, "plan": "free", "createdAt": "2024-01-02T03:04:05Z", "x": 1});
    let r = call(app, "POST", "/customer", Some(&service), Some(body.clone()));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["customer"]["createdAt"], "2024-01-02T03:04:05Z");
    assert_eq!(r.json()["customer"]["x"], 1);
    for (what, body) in [
        ("the same id", body.clone()),
        ("the same email, another id", json!({"customerId": unique("cust-post"), "email": smail.to_uppercase()})),
    ] {
        let r = call(app, "POST", "/customer", Some(ADMIN_TOKEN), Some(body));
        assert_eq!((r.status, error_code(&r.json())), (409, "CUSTOMER_EXISTS"), "{what}: {}", r.body);
    }
    // The record's owner signs in later with that email verified: linked from D1.
    let owner = unique("post-owner");
    let r = get_as(app, "/customer/me", Some(&verified(&owner, &smail.to_uppercase())));
    assert_eq!((r.status, r.json()["customer"]["customerId"].clone()), (200, json!(sid)), "{}", r.body);
    assert_eq!(customer_row(app, &sid).unwrap()["user_id"], json!(user_id_of(app, &owner)));
    // Taken in the legacy namespace, not yet imported: 409 too.
    let (lid, lmail) = (unique("cust-post-legacy"), email("post-legacy"));
    put_legacy(app, &lid, &lmail, json!({}));
    let r = call(app, "POST", "/customer", Some(&service), Some(json!({"customerId": lid})));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call(app, "POST", "/customer", Some(&service), Some(json!({"email": lmail})));
    assert_eq!(r.status, 409, "{}", r.body);
    for bad in [json!({"customerId": "a/b"}), json!({"email": "not-an-email"}), json!({"email": 5})] {
        let r = call(app, "POST", "/customer", Some(&service), Some(bad.clone()));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

#[test]
fn patch_customer_me_changes_profile_fields_only_and_refuses_plan_fields_naming_them() {
    let app = &shared().app;
    let (id, mail) = (unique("cust-patch"), email("patch"));
    put_legacy(app, &id, &mail, json!({"legacyOnly": true}));
    let sub = unique("patch-user");
    let token = verified(&sub, &mail);
    for field in ["plan", "tier", "status", "subscriptions", "flairs", "features", "email", "customerId"] {
        let r = call(app, "PATCH", "/customer/me", Some(&token), Some(json!({"name": "X", field: "pro"})));
        assert_eq!((r.status, error_code(&r.json())), (400, "FIELD_NOT_WRITABLE"), "{field}: {}", r.body);
        assert_eq!(r.json()["field"], field, "the answer names the field");
        assert!(r.json()["message"].as_str().unwrap().contains(field));
    }
    assert_eq!(customer_row(app, &id).unwrap()["name"], "Legacy Name", "nothing changed");
    let r = call(app, "PATCH", "/customer/me", Some(&token), Some(json!({"nickname": "x"})));
    assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "{}", r.body);

    let r = call(
        app,
        "PATCH",
        "/customer/me",
        Some(&token),
        Some(json!({"name": "New", "displayName": null, "companyName": "NewCo", "config": {"theme": "light"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.json()["customer"].clone();
    assert_eq!((c["name"].as_str(), c["companyName"].as_str()), (Some("New"), Some("NewCo")));
    assert!(c.get("displayName").is_none(), "{c}");
    assert_eq!((c["plan"].as_str(), c["legacyOnly"].as_bool()), (Some("pro"), Some(true)), "the rest is kept");
    assert_ne!(c["updatedAt"], "2023-11-14T22:15:00Z");
    let legacy: Value = serde_json::from_str(&app.kv_get_in(LEGACY, &format!("customer_{id}")).unwrap()).unwrap();
    assert_eq!(legacy, c, "dual write: the legacy record is the API's view");

    // Who may patch: only a signed-in user with a record.
    assert_eq!(call(app, "PATCH", "/customer/me", None, Some(json!({"name": "x"}))).status, 401);
    // Who asks is checked before what they send: no token is 401 even with a body that is no object.
    assert_eq!(call(app, "PATCH", "/customer/me", None, Some(json!([1]))).status, 401);
    assert_eq!(call(app, "POST", "/customer", None, Some(json!([1]))).status, 401);
    assert_eq!(call(app, "PATCH", "/customer/me", Some(ADMIN_TOKEN), Some(json!({"name": "x"}))).status, 401);
    let svc = service_token("patch-svc");
    assert_eq!(call(app, "PATCH", "/customer/me", Some(&svc), Some(json!({"name": "x"}))).status, 401);
    let unv = user_token(&unique("patch-unv"), &mail, None);
    assert_eq!(call(app, "PATCH", "/customer/me", Some(&unv), Some(json!({"name": "x"}))).status, 404);
    let r = call(app, "PATCH", &format!("/customer/{id}"), Some(&token), Some(json!({"name": "x"})));
    assert_eq!(r.status, 405, "{}", r.body);
}

/// The legacy namespace of the backfill test: `valid` records of mixed shapes, the
/// broken keys, and the mapping keys that cannot resolve.
struct LegacySet {
    valid: Vec<String>,
    broken: Vec<String>,
    bad_mappings: Vec<String>,
}

fn legacy_set(app: &App, n: usize) -> LegacySet {
    let mut entries = Vec::new();
    let (mut valid, mut broken, mut bad_mappings) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("c{i:04}");
        // c0017 shares c0007's email (neither has a createdAt) and the mapping names
        // c0017: the email is c0017's, as the legacy API answered, not the first by id.
        let mail = format!("User{}@Legacy.example", if i == 17 { 7 } else { i });
        let record = match i % 10 {
            0 => json!({"customerId": id, "email": mail, "createdAt": 1_600_000_000_000_i64 + i as i64}),
            1 => json!({"customerId": id, "email": mail, "createdAt": 1_600_000_000 + i as i64, "updatedAt": "soon"}),
            2 => json!({"customerId": id, "email": mail, "createdAt": "2021-03-04T05:06:07.890+02:00"}),
            3 => json!({"email": mail, "subscriptions": {"odd": true}, "flairs": "one"}),
            4 => json!({"customerId": id, "email": mail, "name": ["not", "text"], "unknown": {"deep": [i]}}),
            5 => json!({"customerId": id}),
            _ => json!({"customerId": id, "email": mail, "name": format!("User {i}"), "plan": "essential"}),
        };
        if i % 10 != 5 && i != 7 {
            entries.push((mapping_key(&mail), id.clone()));
        }
        entries.push((format!("customer_{id}"), record.to_string()));
        valid.push(id);
    }
    for (key, value) in [
        ("customer_broken-json", "{\"customerId\": "),
        ("customer_broken-array", "[1, 2]"),
        ("customer_broken-mismatch", "{\"customerId\": \"someone-else\"}"),
        ("customer_broken-id", "{\"customerId\": {\"id\": 1}}"),
    ] {
        entries.push((key.to_string(), value.to_string()));
        broken.push(key.to_string());
    }
    // A mapping to a record that does not exist, and one to a record of another email.
    for (email, id) in [("ghost@legacy.example", "c-ghost"), ("wrong@legacy.example", "c0006")] {
        entries.push((mapping_key(email), id.to_string()));
        bad_mappings.push(mapping_key(email));
    }
    app.kv_put_bulk(LEGACY, &entries);
    LegacySet { valid, broken, bad_mappings }
}

fn backfill(app: &App, body: Value) -> Value {
    let r = call(app, "POST", "/api/admin/migrations/customers", Some(ADMIN_TOKEN), Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Walks the verification to its end: every mismatch, and the last page.
fn verify_all(app: &App, limit: u32) -> (Vec<Value>, Value) {
    let (mut all, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut path = format!("/api/admin/migrations/customers/verify?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", c.replace('%', "%25").replace('&', "%26").replace('+', "%2B")));
        }
        let r = get_as(app, &path, Some(ADMIN_TOKEN));
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        all.extend(page["mismatches"].as_array().unwrap().iter().cloned());
        if page["done"] == true {
            return (all, page);
        }
        cursor = Some(page["cursor"].as_str().unwrap().to_string());
    }
}

fn keys_of(mismatches: &[Value], problem: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        mismatches.iter().filter(|m| m["problem"] == problem).map(|m| m["key"].as_str().unwrap().to_string()).collect();
    keys.sort();
    keys
}

#[test]
fn the_backfill_imports_a_legacy_namespace_page_by_page_resumes_where_it_stopped_and_verify_ends_clean() {
    let app = App::spawn(stripe_options(&shared().stripe));
    let set = legacy_set(&app, 300);
    let mut broken = set.broken.clone();
    broken.sort();

    // Before: every record is missing.
    let (mismatches, last) = verify_all(&app, 500);
    assert_eq!(keys_of(&mismatches, "missing_in_d1").len(), 304);
    assert_eq!((last["legacyRecords"].clone(), last["d1Records"].clone()), (json!(304), json!(0)));
    assert_eq!((last["countsEqual"].clone(), last["clean"].clone()), (json!(false), json!(false)));

    // A dry run counts and writes nothing, not even the position.
    let dry = backfill(&app, json!({"dryRun": true, "limit": 120}));
    assert_eq!((dry["seen"].clone(), dry["dryRun"].clone()), (json!(120), json!(true)));
    assert_eq!(dry["imported"].as_u64().unwrap() + dry["failed"].as_array().unwrap().len() as u64, 120);
    assert_eq!(app.count("SELECT COUNT(*) FROM customers"), 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM app_state WHERE name = 'migration:customers:cursor'"), 0);

    // A record read (and so imported) before the backfill, then changed through the API.
    let user = verified(&unique("bf-user"), "user16@legacy.example");
    let r = call(&app, "PATCH", "/customer/me", Some(&user), Some(json!({"name": "Changed since"})));
    assert_eq!(r.status, 200, "{}", r.body);

    // Two pages, then the run "stops"; calls without a cursor resume from app_state.
    let (mut imported, mut failed, mut skipped, mut seen) = (0, Vec::new(), 0, 0);
    let (mut pages, mut mappings_seen, mut applied) = (0, 0, 0);
    loop {
        let page = backfill(&app, json!({"limit": 37}));
        pages += 1;
        // The records, then the email mappings.
        match page["phase"].as_str() {
            Some("records") => {
                assert_eq!(mappings_seen, 0, "no record page after the mappings' began");
                seen += page["seen"].as_u64().unwrap();
            }
            _ => mappings_seen += page["seen"].as_u64().unwrap(),
        }
        applied += page["mappingsApplied"].as_u64().unwrap();
        imported += page["imported"].as_u64().unwrap();
        skipped += page["skipped"]["alreadyInD1"].as_u64().unwrap();
        failed.extend(page["failed"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap().to_string()));
        if pages == 2 {
            let position = app.sql("SELECT value FROM app_state WHERE name = 'migration:customers:cursor'");
            assert_eq!(position.len(), 1, "the position is kept between calls");
            assert_eq!(app.count("SELECT COUNT(*) FROM customers"), 74 - failed.len() as i64);
        }
        if page["done"] == true {
            assert!(page["cursor"].is_null());
            break;
        }
        assert!(pages < 30, "the backfill does not end");
    }
    failed.sort();
    assert_eq!(seen, 304, "every key seen once");
    assert_eq!((mappings_seen, applied), (271, 269), "every mapping seen once; the two bad ones not applied");
    // Marked by the mappings phase (not by a read-through: nothing read it).
    let marked = app.sql("SELECT id FROM customers WHERE id IN ('c0007', 'c0017') AND mapped = 1");
    assert_eq!(marked, vec![json!({"id": "c0017"})]);
    assert_eq!(app.count("SELECT COUNT(*) FROM customers WHERE mapped = 1"), 269);
    let by_email =
        call(&app, "GET", &format!("/customer/by-email/{}", "user7%40legacy.example"), Some(ADMIN_TOKEN), None);
    assert_eq!(by_email.json()["customer"]["customerId"], "c0017", "{}", by_email.body);
    assert_eq!(failed, broken, "the broken records are reported with their keys");
    assert_eq!((imported, skipped), (299, 1), "the record read before was skipped, not overwritten");
    assert_eq!(app.count("SELECT COUNT(*) FROM customers"), 300);
    assert_eq!(app.count("SELECT COUNT(*) FROM customers WHERE source = 'legacy'"), 300);
    assert_eq!(app.sql("SELECT name FROM customers WHERE id = 'c0016'")[0]["name"], "Changed since");
    assert_eq!(app.count("SELECT COUNT(*) FROM app_state WHERE name = 'migration:customers:cursor'"), 0);

    // Idempotent: an explicit run from the start imports nothing twice.
    let again = backfill(&app, json!({"limit": 500, "cursor": null}));
    assert_eq!((again["seen"].clone(), again["imported"].clone()), (json!(304), json!(0)));
    assert_eq!((again["phase"].clone(), again["cursor"].clone()), (json!("records"), json!("mappings:")));
    assert_eq!(again["skipped"]["alreadyInD1"], 300);

    // The odd shapes landed as pinned.
    let row = |id: &str| app.sql(&format!("SELECT * FROM customers WHERE id = '{id}'")).remove(0);
    assert_eq!(row("c0010")["created_at"], 1_600_000_000);
    assert_eq!(row("c0011")["created_at"], 1_600_000_011);
    assert_eq!(
        serde_json::from_str::<Value>(row("c0011")["extra"].as_str().unwrap()).unwrap(),
        json!({"updatedAt": "soon"})
    );
    assert_eq!(row("c0012")["created_at"], 1_614_827_167);
    assert_eq!(row("c0013")["subscriptions"], r#"{"odd":true}"#);
    assert_eq!(row("c0013")["flairs"], r#""one""#);
    assert!(row("c0015")["email"].is_null() && row("c0015")["email_hash"].is_null());
    assert_eq!(
        serde_json::from_str::<Value>(row("c0014")["extra"].as_str().unwrap()).unwrap(),
        json!({"name": ["not", "text"], "unknown": {"deep": [14]}})
    );

    // Verify: the broken records and the two bad mappings, nothing else.
    let (mismatches, last) = verify_all(&app, 41);
    assert_eq!(keys_of(&mismatches, "missing_in_d1"), broken);
    let mut bad = set.bad_mappings.clone();
    bad.sort();
    let mut mapping_keys = [keys_of(&mismatches, "record_missing"), keys_of(&mismatches, "email_differs")].concat();
    mapping_keys.sort();
    assert_eq!(mapping_keys, bad, "{mismatches:?}");
    assert_eq!(mismatches.len(), 6, "{mismatches:?}");
    assert_eq!((last["legacyRecords"].clone(), last["d1Records"].clone()), (json!(304), json!(300)));
    assert_eq!(last["clean"], false);

    // Once the operator removes what cannot be migrated, verify reports zero.
    for key in broken.iter().chain(&set.bad_mappings) {
        app.kv_delete_in(LEGACY, key);
    }
    let (mismatches, last) = verify_all(&app, 500);
    assert!(mismatches.is_empty(), "{mismatches:?}");
    assert_eq!((last["countsEqual"].clone(), last["clean"].clone()), (json!(true), json!(true)));
    assert_eq!(set.valid.len(), 300);
}

#[test]
fn the_migration_endpoints_are_the_admins_and_check_their_input() {
    let app = &shared().app;
    let user = verified(&unique("mig-user"), &email("mig"));
    for (method, path) in
        [("POST", "/api/admin/migrations/customers"), ("GET", "/api/admin/migrations/customers/verify")]
    {
        assert_eq!(call(app, method, path, None, Some(json!({"dryRun": true}))).status, 401, "{path}");
        assert_eq!(call(app, method, path, Some(&user), Some(json!({"dryRun": true}))).status, 403, "{path}");
    }
    for bad in [json!({"dryrun": true}), json!({"limit": 0}), json!({"limit": 501}), json!({"dryRun": "yes"})] {
        let r = call(app, "POST", "/api/admin/migrations/customers", Some(ADMIN_TOKEN), Some(bad.clone()));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = get_as(app, "/api/admin/migrations/customers/verify?cursor=bogus", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get_as(app, "/api/admin/migrations/customers/verify?limit=0", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 400, "{}", r.body);
}

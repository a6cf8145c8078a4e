//! `public/openapi.json`, served as a static asset at `/openapi.json`: every route of
//! the router is documented and every documented route exists, every `$ref` resolves,
//! every error code is the README's, and real responses match the documented schemas
//! (checked by the small validator below, for the subset of JSON Schema the document
//! uses). The validator is strict about objects: a property a real response carries
//! that the schema does not list fails, so the document cannot fall behind the API.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::fixtures::{
    adjust, admin_get, admin_post, consume, deliver, event, event_id, new_customer, on_plan, request, spend, user_get,
    user_post,
};
use crate::support::{agent, claims, get, hs256, now, root, send, service_token, token, unique, Resp, JWT_SECRET};
use crate::{shared, ADMIN_TOKEN, ALLOWED_ORIGIN_FOR_TESTS};

fn document() -> Value {
    let text = std::fs::read_to_string(root().join("public/openapi.json")).expect("public/openapi.json");
    serde_json::from_str(&text).expect("public/openapi.json is JSON")
}

/// `(METHOD, path)` of every route in `src/lib.rs`'s `ROUTES` table, `{}` for a segment.
fn router_routes() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let table = &src[src.find("const ROUTES").expect("the ROUTES table")..];
    let table = &table[..table.find("];").unwrap()];
    let mut out = BTreeSet::new();
    for line in table.lines().filter(|l| l.trim_start().starts_with("Route {")) {
        let path = between(line, "path: \"", "\"").expect(line);
        let methods = between(line, "methods: &[", "]").expect(line);
        for m in methods.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()) {
            out.insert((m.to_string(), path.to_string()));
        }
    }
    assert!(out.len() > 20, "parsed too few routes from src/lib.rs: {out:?}");
    out
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    Some(&s[from..from + s[from..].find(end)?])
}

/// `/api/admin/webhook-events/{id}/retry` → `/api/admin/webhook-events/{}/retry`.
fn router_form(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            out.insert((m.to_uppercase(), router_form(path)));
        }
    }
    out
}

#[test]
fn every_route_of_the_router_is_documented_and_every_documented_route_exists() {
    let (router, documented) = (router_routes(), documented_routes(&document()));
    let missing: Vec<_> = router.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&router).collect();
    assert!(missing.is_empty(), "routes missing from public/openapi.json: {missing:?}");
    assert!(extra.is_empty(), "documented routes the router does not have: {extra:?}");
}

/// Every `{"$ref": …}` anywhere in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn pointer<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

/// Every code of the README's error tables with its statuses (`| \`CODE\` | 409 | … |`,
/// or `` `A` / `B` `` sharing a row); a code may have more than one status.
fn readme_codes() -> BTreeMap<String, BTreeSet<u16>> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let Ok(status) = cells[2].parse::<u16>() else { continue };
        for code in cells[1].split('/').map(|c| c.trim().trim_matches('`')) {
            if !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                out.entry(code.to_string()).or_default().insert(status);
            }
        }
    }
    assert!(out.len() > 30, "parsed too few codes from README.md: {out:?}");
    out
}

/// `(operation, status, codes)` of every documented error response.
fn documented_errors(doc: &Value) -> Vec<(String, u16, Vec<String>)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            for (status, resp) in item[*m]["responses"].as_object().unwrap() {
                let resp = resolve(doc, resp);
                let schema = &resp["content"]["application/json"]["schema"];
                let mut codes = Vec::new();
                for part in schema["allOf"].as_array().into_iter().flatten() {
                    let code = &part["properties"]["code"];
                    codes.extend(
                        code["enum"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from),
                    );
                    codes.extend(code["const"].as_str().map(String::from));
                }
                codes.extend(resolve(doc, schema)["properties"]["code"]["const"].as_str().map(String::from));
                if !codes.is_empty() {
                    out.push((format!("{} {path}", m.to_uppercase()), status.parse().unwrap(), codes));
                }
            }
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_1_its_refs_resolve_and_its_error_codes_are_the_readmes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    let broken: Vec<_> = all.iter().filter(|r| pointer(&doc, r).is_none()).collect();
    assert!(broken.is_empty(), "unresolved $refs: {broken:?}");

    let schemes: BTreeSet<&str> =
        doc["components"]["securitySchemes"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(schemes, BTreeSet::from(["adminToken", "serviceToken", "stripeSignature", "userBearer"]));
    assert_eq!(doc["components"]["securitySchemes"]["stripeSignature"]["name"], "Stripe-Signature");

    let readme = readme_codes();
    let listed: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, readme.keys().cloned().collect::<BTreeSet<_>>(), "ErrorCode vs README's error tables");
    let mut used = BTreeSet::new();
    for (op, status, codes) in documented_errors(&doc) {
        for code in codes {
            assert!(
                readme.get(&code).is_some_and(|s| s.contains(&status)),
                "{op}: {code} documented under {status}, the README says {:?}",
                readme.get(&code)
            );
            used.insert(code);
        }
    }
    let unused: Vec<_> = listed.difference(&used).collect();
    assert!(unused.is_empty(), "codes no operation answers: {unused:?}");

    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let op = &item[*m];
            assert!(op["operationId"].is_string() && op["summary"].is_string(), "{m} {path}");
            assert!(op["responses"].get("405").is_some() && op["responses"].get("500").is_some(), "{m} {path}");
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let bearer =
                secured && op["security"].as_array().unwrap().iter().any(|s| s.get("stripeSignature").is_none());
            assert_eq!(
                op["responses"].get("401").is_some(),
                bearer,
                "{m} {path}: 401 AUTH_REQUIRED iff a bearer token"
            );
            if *m == "post" && op.get("requestBody").is_some() {
                assert!(op["responses"].get("413").is_some(), "{m} {path}: 413");
            }
        }
    }
}

#[test]
fn the_document_is_served_as_a_static_file_and_api_misses_still_get_the_workers_json_404() {
    let app = crate::dev_app();
    let r = get(&app.url("/openapi.json"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("Content-Type").is_some_and(|t| t.starts_with("application/json")), "{:?}", r.headers);
    assert_eq!(r.json(), document());
    assert!(r.header("X-Request-Id").is_none(), "served by the assets, not the Worker");

    for path in ["/api/openapi.json", "/api/no-such-route", "/no-such-file"] {
        let r = get(&app.url(path), None);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.header("X-Request-Id").is_some(), "{path}: answered by the Worker");
        check(&document(), &format!("GET {path}"), 404, &r.json()).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let plans = get(&app.url("/api/plans"), None);
    assert_eq!(plans.status, 200, "{}", plans.body);
    assert!(plans.header("X-Request-Id").is_some());
    let health = get(&app.url("/health"), None);
    assert_eq!(health.status, 200, "{}", health.body);
}

#[test]
fn the_browser_client_and_its_types_are_served_as_static_files() {
    let app = crate::dev_app();
    for (path, file, kind) in [
        ("/client/plangate.js", "public/client/plangate.js", "javascript"),
        ("/client/plangate.d.ts", "public/client/plangate.d.ts", ""),
    ] {
        let r = get(&app.url(path), None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.body, std::fs::read_to_string(root().join(file)).unwrap(), "{path}");
        assert!(r.header("Content-Type").is_some_and(|t| t.contains(kind)), "{path}: {:?}", r.header("Content-Type"));
        // Pages on other origins import the module (a CORS fetch): public/_headers.
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "{path}");
    }
    assert_eq!(get(&app.url("/openapi.json"), None).header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(get(&app.url("/_headers"), None).status, 404, "the headers file is not served");
}

#[test]
fn real_dev_token_answers_match_the_document() {
    let ok = request(crate::dev_app(), "POST", "/api/dev/token", None, Some(&json!({"userId": unique("doc")})));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_documented("POST /api/dev/token", &ok);
    let bad = request(crate::dev_app(), "POST", "/api/dev/token", None, Some(&json!({"userId": "a b"})));
    assert_documented("POST /api/dev/token", &bad);
    let off = request(&shared().app, "POST", "/api/dev/token", None, Some(&json!({"userId": "alice"})));
    assert_documented("POST /api/dev/token", &off);
}

// -------------------------------------------------------------------------------------
// A validator for the subset of JSON Schema 2020-12 the document's responses use: $ref,
// allOf, oneOf, type (one or a list), const, enum, properties, required,
// additionalProperties, propertyNames, items, minimum, maximum, format date-time / uri.

fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = pointer(doc, r).unwrap_or_else(|| panic!("unresolved {r}"));
    }
    v
}

/// The property names `schema` (with its `allOf` parts) lists, and whether it allows
/// others (`additionalProperties`, or no `properties` at all).
fn known_properties(doc: &Value, schema: &Value, names: &mut BTreeSet<String>) -> bool {
    let schema = resolve(doc, schema);
    let mut open = schema.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false));
    if let Some(p) = schema.get("properties").and_then(Value::as_object) {
        names.extend(p.keys().cloned());
    }
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        open |= known_properties(doc, part, names);
    }
    open
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("type {other} is not in the validator's subset"),
    }
}

fn is_iso_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Errors of `v` against `schema` at `at`; `strict`: no properties beyond those listed.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, strict: bool, errs: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            validate(doc, part, v, at, false, errs);
        }
    }
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let passing: Vec<usize> = (0..alts.len())
            .filter(|&i| {
                let mut e = Vec::new();
                validate(doc, &alts[i], v, at, strict, &mut e);
                e.is_empty()
            })
            .collect();
        if passing.len() != 1 {
            errs.push(format!("{at}: matches {} of the oneOf alternatives (needs exactly 1): {v}", passing.len()));
        }
    }
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(t) => type_matches(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), v)),
            _ => panic!("bad type {t}"),
        };
        if !ok {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !v.is_null() && !options.contains(v) {
            errs.push(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{at}: {n} < minimum {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if n > max {
            errs.push(format!("{at}: {n} > maximum {max}"));
        }
    }
    if let (Some(format), Some(s)) = (schema.get("format").and_then(Value::as_str), v.as_str()) {
        let ok = match format {
            "date-time" => is_iso_utc(s),
            "uri" => s.starts_with("https://") || s.starts_with("http://"),
            _ => true,
        };
        if !ok {
            errs.push(format!("{at}: {s:?} is not a {format}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !obj.contains_key(name) {
                errs.push(format!("{at}: required property {name} is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                (Some(s), _) => validate(doc, s, x, &format!("{at}.{k}"), true, errs),
                (None, Some(s)) if s.is_object() => validate(doc, s, x, &format!("{at}.{k}"), true, errs),
                _ => {}
            }
        }
        if let Some(names) = schema.get("propertyNames") {
            for k in obj.keys() {
                validate(doc, names, &Value::String(k.clone()), &format!("{at} (property name {k})"), true, errs);
            }
        }
        if strict {
            let mut names = BTreeSet::new();
            let open = known_properties(doc, schema, &mut names);
            if !open && !names.is_empty() {
                for k in obj.keys().filter(|k| !names.contains(*k)) {
                    errs.push(format!("{at}: property {k} is not documented"));
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"), true, errs);
        }
    }
}

/// Checks `body` against the schema `doc` gives for `op` ("POST /api/x") answering
/// `status`. An undocumented path answers the shared `NotFound` response.
fn check(doc: &Value, op: &str, status: u16, body: &Value) -> Result<(), String> {
    let (method, path) = op.split_once(' ').unwrap();
    let response = match doc["paths"].get(path).and_then(|p| p.get(method.to_lowercase())) {
        _ if status == 404 && doc["paths"].get(path).is_none() => &doc["components"]["responses"]["NotFound"],
        Some(operation) => operation["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("{op}: status {status} is not documented (body {body})"))?,
        None => return Err(format!("{op} is not documented")),
    };
    let schema = &resolve(doc, response)["content"]["application/json"]["schema"];
    let mut errs = Vec::new();
    validate(doc, schema, body, "$", true, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{op} {status}:\n  {}", errs.join("\n  ")))
    }
}

fn assert_documented(op: &str, r: &crate::support::Resp) {
    check(&document(), op, r.status, &r.json()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_validator_finds_wrong_types_missing_and_undocumented_properties_and_bad_alternatives() {
    let doc = document();
    let plan = json!({"ok": true, "plan": "free", "subscriptionStatus": null, "trialEndsAt": null,
                      "currentPeriodEnd": null, "cancelAt": null, "scheduledPlan": null, "scheduledAt": null,
                      "planUpdatedAt": "2026-11-24T11:27:18Z"});
    assert_eq!(check(&doc, "GET /api/plan/me", 200, &plan), Ok(()));
    let mut extra = plan.clone();
    extra["surprise"] = json!(1);
    assert!(check(&doc, "GET /api/plan/me", 200, &extra).unwrap_err().contains("surprise is not documented"));
    let mut bad = plan.clone();
    bad["plan"] = json!("gold");
    assert!(check(&doc, "GET /api/plan/me", 200, &bad).unwrap_err().contains("not one of"));
    bad = plan.clone();
    bad["planUpdatedAt"] = json!("yesterday");
    assert!(check(&doc, "GET /api/plan/me", 200, &bad).unwrap_err().contains("date-time"));
    bad = plan.clone();
    bad.as_object_mut().unwrap().remove("cancelAt");
    assert!(check(&doc, "GET /api/plan/me", 200, &bad).unwrap_err().contains("cancelAt is missing"));
    assert!(check(&doc, "GET /api/plan/me", 418, &plan).unwrap_err().contains("not documented"));

    let redirect = json!({"ok": true, "action": "redirect", "url": "https://checkout.stripe.test/c/1"});
    assert_eq!(check(&doc, "POST /api/upgrade-plan", 200, &redirect), Ok(()));
    let neither = json!({"ok": true, "action": "teleport", "url": "https://x.test"});
    assert!(check(&doc, "POST /api/upgrade-plan", 200, &neither).unwrap_err().contains("0 of the oneOf"));
    // An error code another status owns.
    let wrong = json!({"ok": false, "code": "QUOTA_EXCEEDED", "message": "m"});
    assert!(check(&doc, "POST /api/upgrade-plan", 409, &wrong).is_err());
}

#[test]
fn real_catalog_plan_entitlements_usage_and_credits_answers_match_the_document() {
    let app = &shared().app;
    assert_documented("GET /health", &get(&app.url("/health"), None));
    assert_documented("GET /api/plans", &get(&app.url("/api/plans"), None));
    let c = new_customer(app, "openapi-reads");
    for path in ["/api/plan/me", "/api/entitlements", "/api/usage", "/api/credits?limit=5"] {
        let r = user_get(app, &c, path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_documented(&format!("GET {}", path.split('?').next().unwrap()), &r);
    }
    let counted = consume(app, &c, "ats_score", 1, &unique("k"));
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert_documented("POST /api/usage/consume", &counted);
    let check = request(
        app,
        "POST",
        "/api/entitlements/check",
        Some(&crate::support::service_token("openapi")),
        Some(&json!({"authId": c.auth_id, "feature": "cover_letter"})),
    );
    assert_eq!(check.status, 200, "{}", check.body);
    assert_documented("POST /api/entitlements/check", &check);
}

#[test]
fn real_error_answers_match_the_document() {
    let app = &shared().app;
    let c = new_customer(app, "openapi-errors");
    let broken = unique("openapi-legacy");
    app.kv_put_bulk("APP_KV", &[(format!("planByUid:{broken}"), "gold".into())]);
    let cases: Vec<(&str, crate::support::Resp, u16, &str)> = vec![
        ("GET /api/plan/me", get(&app.url("/api/plan/me"), Some(&token(&broken))), 500, "LEGACY_RECORD_UNREADABLE"),
        ("GET /api/plan/me", get(&app.url("/api/plan/me"), None), 401, "AUTH_REQUIRED"),
        ("GET /api/plan/me", get(&app.url("/api/plan/me"), Some("not-a-jwt")), 401, "AUTH_REQUIRED"),
        (
            "POST /api/upgrade-plan",
            request(app, "GET", "/api/upgrade-plan", Some(&token(&c.auth_id)), None),
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            "POST /api/upgrade-plan",
            user_post(app, &c, "/api/upgrade-plan", json!({"targetPlan": "gold"})),
            400,
            "INVALID_PLAN",
        ),
        ("POST /api/upgrade-plan", user_post(app, &c, "/api/upgrade-plan", json!({})), 400, "INVALID_REQUEST"),
        (
            "POST /api/downgrade-plan",
            user_post(app, &c, "/api/downgrade-plan", json!({"targetPlan": "free"})),
            409,
            "NO_ACTIVE_SUBSCRIPTION",
        ),
        (
            "POST /api/cancel-subscription",
            user_post(app, &c, "/api/cancel-subscription", json!({})),
            409,
            "NO_ACTIVE_SUBSCRIPTION",
        ),
        ("POST /api/usage/consume", consume(app, &c, "mock_interview", 1, &unique("k")), 403, "FEATURE_NOT_IN_PLAN"),
        ("POST /api/usage/consume", consume(app, &c, "job_analysis", 1, &unique("k")), 402, "INSUFFICIENT_CREDITS"),
        ("POST /api/usage/consume", consume(app, &c, "teleport", 1, &unique("k")), 400, "UNKNOWN_FEATURE"),
        (
            "POST /api/credits/checkout",
            user_post(app, &c, "/api/credits/checkout", json!({"pack": "huge"})),
            400,
            "UNKNOWN_PACK",
        ),
        (
            "POST /api/credits/spend",
            user_post(
                app,
                &c,
                "/api/credits/spend",
                json!({"amount": 5, "reason": "r", "idempotencyKey": unique("k")}),
            ),
            402,
            "INSUFFICIENT_CREDITS",
        ),
        (
            "POST /api/entitlements/check",
            user_post(app, &c, "/api/entitlements/check", json!({"feature": "ats_score"})),
            403,
            "FORBIDDEN",
        ),
        ("GET /api/admin/credits/shortfalls", user_get(app, &c, "/api/admin/credits/shortfalls"), 403, "FORBIDDEN"),
        (
            "POST /api/stripe-webhook",
            request(app, "POST", "/api/stripe-webhook", None, Some(&json!({"id": "evt_1"}))),
            400,
            "INVALID_SIGNATURE",
        ),
    ];
    for (op, r, status, code) in cases {
        assert_eq!((r.status, r.json()["code"].as_str()), (status, Some(code)), "{op}: {}", r.body);
        assert_documented(op, &r);
    }
    let mut used_up = None;
    for _ in 0..4 {
        used_up = Some(consume(app, &c, "ats_score", 1, &unique("k")));
    }
    let used_up = used_up.unwrap();
    assert_eq!((used_up.status, used_up.json()["code"].as_str()), (402, Some("QUOTA_EXCEEDED")), "{}", used_up.body);
    assert_documented("POST /api/usage/consume", &used_up);
}

#[test]
fn real_billing_answers_match_the_document() {
    let (app, stripe) = (&shared().app, &shared().stripe);
    let c = new_customer(app, "openapi-billing");
    let ret = format!("{ALLOWED_ORIGIN_FOR_TESTS}/account");
    let redirect = user_post(app, &c, "/api/upgrade-plan", json!({"targetPlan": "essential", "returnUrl": ret}));
    assert_eq!((redirect.status, redirect.json()["action"].as_str()), (200, Some("redirect")), "{}", redirect.body);
    assert_documented("POST /api/upgrade-plan", &redirect);
    let checkout = user_post(app, &c, "/api/credits/checkout", json!({"pack": "small", "returnUrl": ret}));
    assert_eq!(checkout.status, 200, "{}", checkout.body);
    assert_documented("POST /api/credits/checkout", &checkout);

    let (c, _) = on_plan(app, stripe, "openapi-paid", "essential");
    let again = user_post(app, &c, "/api/stripe-checkout", json!({"plan": "pro", "returnUrl": ret}));
    assert_eq!((again.status, again.json()["code"].as_str()), (409, Some("ALREADY_SUBSCRIBED")), "{}", again.body);
    assert_documented("POST /api/stripe-checkout", &again);
    let same = user_post(app, &c, "/api/upgrade-plan", json!({"targetPlan": "essential"}));
    assert_eq!(same.status, 409, "{}", same.body);
    assert_documented("POST /api/upgrade-plan", &same);
    let updated = user_post(app, &c, "/api/upgrade-plan", json!({"targetPlan": "pro"}));
    assert_eq!((updated.status, updated.json()["action"].as_str()), (200, Some("updated")), "{}", updated.body);
    assert_documented("POST /api/upgrade-plan", &updated);
    for (path, body) in [
        ("/api/downgrade-plan", json!({"targetPlan": "essential"})),
        ("/api/cancel-subscription", json!({})),
        ("/api/resume-subscription", json!({})),
        ("/api/sync-stripe-plan", json!({})),
    ] {
        let r = user_post(app, &c, path, body);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_documented(&format!("POST {path}"), &r);
    }
    let portal = user_post(app, &c, "/api/billing-portal", json!({"returnUrl": ret}));
    assert_eq!(portal.status, 200, "{}", portal.body);
    assert_documented("POST /api/billing-portal", &portal);
    let credits = user_get(app, &c, "/api/credits");
    assert_documented("GET /api/credits", &credits);
    let ent = user_get(app, &c, "/api/entitlements");
    assert_documented("GET /api/entitlements", &ent);
}

#[test]
fn real_credit_spending_webhook_and_admin_answers_match_the_document() {
    let (app, stripe) = (&shared().app, &shared().stripe);
    let c = new_customer(app, "openapi-admin");
    let adjusted = adjust(app, &c.user_id, 50, "openapi test");
    assert_eq!(adjusted.status, 200, "{}", adjusted.body);
    assert_documented("POST /api/admin/credits/adjust", &adjusted);
    let no_reason = admin_post(app, "/api/admin/credits/adjust", json!({"userId": c.user_id, "delta": 1}));
    assert_documented("POST /api/admin/credits/adjust", &no_reason);
    let paid_in_credits = consume(app, &c, "job_analysis", 1, &unique("k"));
    assert_eq!(paid_in_credits.status, 200, "{}", paid_in_credits.body);
    assert!(paid_in_credits.json()["credits"].is_object(), "{}", paid_in_credits.body);
    assert_documented("POST /api/usage/consume", &paid_in_credits);
    let spent = spend(app, &c, 5, &unique("k"));
    assert_eq!(spent.status, 200, "{}", spent.body);
    assert_documented("POST /api/credits/spend", &spent);
    let page = user_get(app, &c, "/api/credits?limit=1");
    assert!(page.json()["nextCursor"].is_string(), "{}", page.body);
    assert_documented("GET /api/credits", &page);
    let admin_page = admin_get(app, &format!("/api/admin/credits?userId={}", c.user_id));
    assert_eq!(admin_page.status, 200, "{}", admin_page.body);
    assert_documented("GET /api/admin/credits", &admin_page);
    for path in ["/api/admin/credits/shortfalls", "/api/admin/webhook-events?status=processed&limit=3"] {
        let r = admin_get(app, path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_documented(&format!("GET {}", path.split('?').next().unwrap()), &r);
    }
    let (paid, _) = on_plan(app, stripe, "openapi-resync", "essential");
    let one = admin_post(app, "/api/admin/resync", json!({"userId": paid.user_id}));
    assert_eq!(one.status, 200, "{}", one.body);
    assert_documented("POST /api/admin/resync", &one);
    let retry = admin_post(app, "/api/admin/webhook-events/evt_no_such_event/retry", json!({}));
    assert_eq!(retry.status, 404, "{}", retry.body);
    assert_documented("POST /api/admin/webhook-events/{id}/retry", &retry);

    let unknown_subscription = json!({"id": "sub_openapi_none", "object": "subscription", "customer": "cus_none"});
    let ev = event(&event_id("openapi"), "customer.subscription.trial_will_end", now(), unknown_subscription);
    let failed = deliver(app, &ev);
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_documented("POST /api/stripe-webhook", &failed);
    let ev = event(&event_id("openapi"), "product.created", now(), json!({"id": "prod_1", "object": "product"}));
    let first = deliver(app, &ev);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_documented("POST /api/stripe-webhook", &first);
    let again = deliver(app, &ev);
    assert_eq!(again.json()["status"], "duplicate", "{}", again.body);
    assert_documented("POST /api/stripe-webhook", &again);
}

/// A user's token carrying `email`, with `email_verified` as given.
fn token_with_email(sub: &str, email: &str, verified: bool) -> String {
    let mut c = claims(sub);
    c["email"] = json!(email);
    c["email_verified"] = json!(verified);
    hs256(JWT_SECRET, &c)
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

/// `POST /api/admin/migrations/credits{query}` with `csv` as a text/csv body.
fn credits_upload(query: &str, csv: &str, bearer: &str) -> Resp {
    let auth = format!("Bearer {bearer}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "text/csv")];
    let url = shared().app.url(&format!("/api/admin/migrations/credits{query}"));
    send(&agent(), "POST", &url, &headers, Some(csv.as_bytes()))
}

/// The answer has `status` (and `code`, for an error) and matches the document.
fn expect(op: &str, r: &Resp, status: u16, code: Option<&str>) -> Value {
    let body = r.json();
    assert_eq!((r.status, body["code"].as_str()), (status, code), "{op}: {}", r.body);
    assert_documented(op, r);
    body
}

#[test]
fn real_migration_customer_import_and_purge_answers_match_the_document() {
    let app = &shared().app;
    // Every account of this test has an email at its own domain (what the purge takes);
    // its legacy keys start with `!`, listed before any other test's.
    let tag = unique("oa");
    let domain = format!("{tag}.test");
    let (sub_a, sub_b) = (format!("{tag}-a"), format!("{tag}-b"));
    let (mail_a, mail_b) = (format!("a@{domain}"), format!("b@{domain}"));
    let (ada, bob) = (token_with_email(&sub_a, &mail_a, true), token_with_email(&sub_b, &mail_b, false));
    let service = service_token("openapi");
    let call = |method: &str, path: &str, bearer: &str, body: Option<Value>| {
        request(app, method, path, Some(bearer), body.as_ref())
    };

    // --- Legacy plans: a readable record and an unreadable one, listed first.
    let (legacy_ok, legacy_bad) = (format!("!{tag}-plan-ok"), format!("!{tag}-plan-bad"));
    app.kv_put_bulk(
        "APP_KV",
        &[(format!("planByUid:{legacy_ok}"), "pro".into()), (format!("planByUid:{legacy_bad}"), "gold".into())],
    );
    let op = "POST /api/admin/migrations/plans";
    let dry = call(
        "POST",
        "/api/admin/migrations/plans",
        ADMIN_TOKEN,
        Some(json!({"dryRun": true, "limit": 2, "cursor": "0:"})),
    );
    let body = expect(op, &dry, 200, None);
    assert_eq!((body["seen"].as_i64(), body["imported"].as_i64()), (Some(2), Some(1)), "{body}");
    assert!(body["failed"][format!("planByUid:{legacy_bad}")].is_string(), "{body}");
    // A run from a finished position: a real answer that writes nothing.
    let done = call("POST", "/api/admin/migrations/plans", ADMIN_TOKEN, Some(json!({"cursor": "4:"})));
    assert_eq!(expect(op, &done, 200, None)["done"], true);
    expect(
        op,
        &call("POST", "/api/admin/migrations/plans", ADMIN_TOKEN, Some(json!({"limit": 0}))),
        400,
        Some("INVALID_REQUEST"),
    );
    expect(
        op,
        &call("POST", "/api/admin/migrations/plans", &ada, Some(json!({"dryRun": true}))),
        403,
        Some("FORBIDDEN"),
    );
    let op = "GET /api/admin/migrations/plans/verify";
    let verify = call("GET", "/api/admin/migrations/plans/verify?limit=2", ADMIN_TOKEN, None);
    let body = expect(op, &verify, 200, None);
    assert_eq!(body["mismatches"][&legacy_ok], "missing", "{body}");
    expect(
        op,
        &call("GET", "/api/admin/migrations/plans/verify?cursor=nope", ADMIN_TOKEN, None),
        400,
        Some("INVALID_REQUEST"),
    );
    expect(op, &call("GET", "/api/admin/migrations/plans/verify", &ada, None), 403, Some("FORBIDDEN"));

    // --- Customer records.
    let op = "POST /customer";
    let r = call("POST", "/customer", &ada, Some(json!({"name": "Ada", "plan": "pro"})));
    assert_eq!(expect(op, &r, 400, Some("FIELD_NOT_WRITABLE"))["field"], "plan");
    let created = call("POST", "/customer", &ada, Some(json!({"name": "Ada", "config": {"theme": "dark"}})));
    let id_a = expect(op, &created, 201, None)["customer"]["customerId"].as_str().unwrap().to_string();
    expect(op, &call("POST", "/customer", &ada, Some(json!({"name": "Ada"}))), 409, Some("CUSTOMER_EXISTS"));
    expect(op, &call("POST", "/customer", &bob, Some(json!({}))), 403, Some("FORBIDDEN"));
    // A service's legacy record (for Bob's email, never linked: he has not verified it),
    // with an odd known field and an unknown one, answered as they were.
    let legacy = json!({"email": mail_b, "name": 42, "createdAt": 1_700_000_000_000_i64, "tier": "gold",
                        "subscriptions": [{"id": "sub_legacy"}], "legacyOnly": {"kept": [1, 2]}});
    let by_service = call("POST", "/customer", &service, Some(legacy));
    let record = expect(op, &by_service, 201, None)["customer"].clone();
    assert_eq!((record["name"].clone(), record["createdAt"].clone()), (json!(42), json!("2023-11-14T22:13:20Z")));
    let id_b = record["customerId"].as_str().unwrap().to_string();
    let again = call("POST", "/customer", ADMIN_TOKEN, Some(json!({"customerId": id_b})));
    expect(op, &again, 409, Some("CUSTOMER_EXISTS"));
    expect(op, &call("POST", "/customer", ADMIN_TOKEN, Some(json!({"email": "nobody"}))), 400, Some("INVALID_REQUEST"));

    let op = "GET /customer/me";
    expect(op, &call("GET", "/customer/me", &ada, None), 200, None);
    expect(op, &call("GET", "/customer/me", &bob, None), 404, Some("CUSTOMER_RECORD_NOT_FOUND"));
    expect(op, &call("GET", "/customer/me", ADMIN_TOKEN, None), 401, Some("AUTH_REQUIRED"));
    let op = "PATCH /customer/me";
    let patched = call("PATCH", "/customer/me", &ada, Some(json!({"companyName": "Acme", "displayName": null})));
    assert_eq!(expect(op, &patched, 200, None)["customer"]["companyName"], "Acme");
    let r = call("PATCH", "/customer/me", &ada, Some(json!({"email": "x@example.test"})));
    assert_eq!(expect(op, &r, 400, Some("FIELD_NOT_WRITABLE"))["field"], "email");
    expect(op, &call("PATCH", "/customer/me", &ada, Some(json!({"bogus": 1}))), 400, Some("INVALID_REQUEST"));
    expect(
        op,
        &call("PATCH", "/customer/me", &bob, Some(json!({"name": "Bob"}))),
        404,
        Some("CUSTOMER_RECORD_NOT_FOUND"),
    );

    let op = "GET /customer/{id}";
    for bearer in [&ada, ADMIN_TOKEN, &service] {
        expect(op, &call("GET", &format!("/customer/{id_a}"), bearer, None), 200, None);
    }
    expect(op, &call("GET", &format!("/customer/{id_a}"), &bob, None), 403, Some("FORBIDDEN"));
    expect(
        op,
        &call("GET", &format!("/customer/{tag}-none"), ADMIN_TOKEN, None),
        404,
        Some("CUSTOMER_RECORD_NOT_FOUND"),
    );
    let op = "GET /customer/by-email/{email}";
    expect(op, &call("GET", &format!("/customer/by-email/{mail_a}"), &ada, None), 200, None);
    expect(op, &call("GET", &format!("/customer/by-email/{mail_b}"), &service, None), 200, None);
    expect(op, &call("GET", &format!("/customer/by-email/{mail_a}"), &bob, None), 403, Some("FORBIDDEN"));
    let none = call("GET", &format!("/customer/by-email/none@{domain}"), ADMIN_TOKEN, None);
    expect(op, &none, 404, Some("CUSTOMER_RECORD_NOT_FOUND"));

    // --- The customer records' migration: a readable legacy record and a broken one,
    // listed first.
    let (record_ok, record_bad) = (format!("customer_!{tag}-ok"), format!("customer_!{tag}-bad"));
    let ok_json = json!({"customerId": format!("!{tag}-ok"), "email": format!("legacy@{domain}")}).to_string();
    app.kv_put_bulk("LEGACY_AUTH_KV", &[(record_ok.clone(), ok_json), (record_bad.clone(), "{not json".into())]);
    let op = "POST /api/admin/migrations/customers";
    let dry = call("POST", "/api/admin/migrations/customers", ADMIN_TOKEN, Some(json!({"dryRun": true, "limit": 2})));
    let body = expect(op, &dry, 200, None);
    assert_eq!((body["seen"].as_i64(), body["imported"].as_i64()), (Some(2), Some(1)), "{body}");
    assert_eq!(body["failed"][0]["key"], json!(record_bad), "{body}");
    let bad = call("POST", "/api/admin/migrations/customers", ADMIN_TOKEN, Some(json!({"dryrun": true})));
    expect(op, &bad, 400, Some("INVALID_REQUEST"));
    expect(op, &call("POST", "/api/admin/migrations/customers", &ada, Some(json!({}))), 403, Some("FORBIDDEN"));
    let op = "GET /api/admin/migrations/customers/verify";
    let (mut cursor, mut pages, mut missing) = (None::<String>, 0, false);
    loop {
        pages += 1;
        assert!(pages < 50, "the verification does not end");
        let mut path = "/api/admin/migrations/customers/verify?limit=500".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = expect(op, &call("GET", &path, ADMIN_TOKEN, None), 200, None);
        missing |= page["mismatches"].as_array().unwrap().iter().any(|m| m["key"] == json!(record_ok));
        if page["done"] == true {
            break;
        }
        cursor = Some(page["cursor"].as_str().unwrap().to_string());
    }
    assert!(missing, "the legacy record not in D1 is reported");
    let r = call("GET", "/api/admin/migrations/customers/verify?limit=0", ADMIN_TOKEN, None);
    expect(op, &r, 400, Some("INVALID_REQUEST"));
    expect(op, &call("GET", "/api/admin/migrations/customers/verify", &ada, None), 403, Some("FORBIDDEN"));
    for key in [&record_ok, &record_bad] {
        app.kv_delete_in("LEGACY_AUTH_KV", key);
    }

    // --- The legacy credit import (its staged files are the shared app's: no other test
    // stages any there). Ada is matched by her verified customer record.
    let op = "POST /api/admin/migrations/credits";
    let r = credits_upload("?commit=true", "", ADMIN_TOKEN);
    assert_eq!(expect(op, &r, 409, Some("FILES_MISSING"))["missing"].as_array().map(Vec::len), Some(3));
    expect(op, &credits_upload("", "", ADMIN_TOKEN), 400, Some("INVALID_REQUEST"));
    let users_header = "id,email,credits_balance,stripe_customer_id,created_at,updated_at\r\n";
    let broken = format!("{users_header}{tag}-L1,{mail_a},lots,,,\r\n");
    let r = credits_upload("?file=users", &broken, ADMIN_TOKEN);
    assert_eq!(expect(op, &r, 400, Some("INVALID_CSV"))["line"], 2, "{}", r.body);
    let users = format!("{users_header}{tag}-L1,{mail_a},200,,2024-01-01 00:00:00+00,\r\n{tag}-L2,,30,,,\r\n");
    let staged = expect(op, &credits_upload("?file=users", &users, ADMIN_TOKEN), 200, None);
    assert_eq!(staged["staged"], json!({"users": 2}), "{staged}");
    let r = credits_upload("?commit=true", "", ADMIN_TOKEN);
    assert_eq!(expect(op, &r, 409, Some("FILES_MISSING"))["staged"], json!({"users": 2}));
    let payments = format!(
        "id,user_id,stripe_payment_intent_id,amount,status,created_at,updated_at\r\n\
         {tag}-P1,{tag}-L1,pi_{tag},500,paid,2024-01-01 00:00:00+00,\r\n"
    );
    expect(op, &credits_upload("?file=payments", &payments, ADMIN_TOKEN), 200, None);
    let transactions = format!(
        "id,user_id,delta,reason,stripe_event_id,metadata,created_at\r\n\
         {tag}-T1,{tag}-L1,150,purchase,,\"{{\"\"order\"\": 1}}\",2024-01-01 00:00:00+00\r\n\
         {tag}-T2,{tag}-ghost,5,bonus,,,\r\n{tag}-T3,,1,grant,,,\r\n"
    );
    let r = credits_upload("?file=credit_transactions", &transactions, ADMIN_TOKEN);
    assert_eq!(expect(op, &r, 200, None)["missing"], json!([]));
    let plan = expect(op, &credits_upload("?commit=true", "", ADMIN_TOKEN), 200, None);
    assert_eq!((plan["dryRun"].clone(), plan["difference"].clone()), (json!(true), json!(0)), "{plan}");
    assert_eq!(plan["matched"][0]["by"], "verified_email", "{plan}");
    assert_eq!(plan["unmatched"][0]["email"], Value::Null, "{plan}");
    assert!(plan["orphanUserIds"].as_array().unwrap().contains(&Value::Null), "{plan}");
    let done = expect(op, &credits_upload("?commit=true&dryRun=false", "", ADMIN_TOKEN), 200, None);
    assert_eq!((done["importedCredits"].clone(), done["difference"].clone()), (json!(200), json!(0)), "{done}");
    expect(op, &credits_upload("?commit=true", "", &ada), 403, Some("FORBIDDEN"));

    // --- The purge of this test's accounts: Ada and Bob (and the record made for Bob's
    // email), then the legacy plan keys by auth id.
    let op = "POST /api/admin/purge-test-accounts";
    let pattern = format!("*@{domain}");
    let dry = expect(
        op,
        &call("POST", "/api/admin/purge-test-accounts", ADMIN_TOKEN, Some(json!({"match": pattern}))),
        200,
        None,
    );
    assert_eq!((dry["dryRun"].clone(), dry["users"].as_array().map(Vec::len)), (json!(true), Some(2)), "{dry}");
    assert_eq!(dry["rows"]["customers"], 2, "{dry}");
    let purged =
        call("POST", "/api/admin/purge-test-accounts", ADMIN_TOKEN, Some(json!({"match": pattern, "dryRun": false})));
    let purged = expect(op, &purged, 200, None);
    assert_eq!((purged["users"].clone(), purged["rows"].clone()), (dry["users"].clone(), dry["rows"].clone()));
    let by_id = json!({"match": [legacy_ok, legacy_bad], "dryRun": false});
    let r = expect(op, &call("POST", "/api/admin/purge-test-accounts", ADMIN_TOKEN, Some(by_id)), 200, None);
    assert_eq!(
        r["users"][0],
        json!({"userId": null, "authId": legacy_ok, "email": null, "subscriptionStatus": null}),
        "{r}"
    );
    expect(
        op,
        &call("POST", "/api/admin/purge-test-accounts", ADMIN_TOKEN, Some(json!({"match": "*"}))),
        400,
        Some("INVALID_REQUEST"),
    );
    expect(
        op,
        &call("POST", "/api/admin/purge-test-accounts", &ada, Some(json!({"match": pattern}))),
        403,
        Some("FORBIDDEN"),
    );
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM users WHERE email LIKE '%@{domain}'")), 0);
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM customers WHERE id IN ('{id_a}', '{id_b}')")), 0);
}

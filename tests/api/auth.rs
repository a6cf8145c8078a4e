use serde_json::json;

use crate::support::{
    b64url, claims, get, hs256, jwk, now, rs256, rsa_key, token, unique, AUDIENCE, ISSUER, JWT_SECRET,
};
use crate::{error_code, shared};

fn plan_me(token: Option<&str>) -> crate::support::Resp {
    get(&shared().app.url("/api/plan/me"), token)
}

fn assert_401(token: Option<&str>, why: &str) {
    let r = plan_me(token);
    assert_eq!(r.status, 401, "{why}: {}", r.body);
    assert_eq!(error_code(&r.json()), "AUTH_REQUIRED", "{why}");
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
}

/// 401 for the stated reason (the verifier's public message), not for another one.
fn assert_401_because(token: &str, reason: &str) {
    let r = plan_me(Some(token));
    assert_eq!(r.status, 401, "{reason}: {}", r.body);
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.ends_with(reason), "expected {reason:?}, got {message:?}");
}

/// `claims(sub)` with `changes` applied (`null` removes a claim).
fn claims_with(sub: &str, changes: serde_json::Value) -> serde_json::Value {
    let mut c = claims(sub);
    for (k, v) in changes.as_object().unwrap() {
        match v {
            serde_json::Value::Null => c.as_object_mut().unwrap().remove(k),
            v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
        };
    }
    c
}

#[test]
fn requests_without_a_token_or_with_another_scheme_get_401() {
    assert_401(None, "no header");
    let r = crate::support::send(
        &crate::support::agent(),
        "GET",
        &shared().app.url("/api/plan/me"),
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r.json()), "AUTH_REQUIRED");
}

#[test]
fn bad_tokens_get_401() {
    let who = unique("bad-token");
    let claims = claims(&who);
    assert_401(Some("not-a-jwt"), "garbage");
    assert_401(Some("a.b.c"), "three garbage segments");
    assert_401(Some(&hs256("another-secret-another-secret-0123456789", &claims)), "wrong secret");
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
    assert_401(Some(&none), "alg none");
    let good = hs256(JWT_SECRET, &claims);
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = claims_with("someone-else", json!({}));
    let header = input.split('.').next().unwrap();
    let tampered = format!("{header}.{}.{}", b64url(forged.to_string().as_bytes()), good.rsplit('.').next().unwrap());
    assert_401(Some(&tampered), "tampered payload");
    assert!(shared().app.sql(&format!("SELECT id FROM users WHERE auth_id IN ('{who}', 'someone-else')")).is_empty());
}

#[test]
fn expired_and_not_yet_valid_tokens_get_401() {
    let who = unique("expired");
    let expired = claims_with(&who, json!({"iat": now() - 7200, "exp": now() - 3600}));
    assert_401_because(&hs256(JWT_SECRET, &expired), "token expired");
    let early = claims_with(&who, json!({"nbf": now() + 3600, "exp": now() + 7200}));
    assert_401_because(&hs256(JWT_SECRET, &early), "token not yet valid");
    assert_401_because(&hs256(JWT_SECRET, &claims_with(&who, json!({"exp": null}))), "token expired");
    // Within the 60 s leeway a just-expired token still works.
    let r = plan_me(Some(&hs256(JWT_SECRET, &claims_with(&who, json!({"iat": null, "exp": now() - 20})))));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The shared app has `AUTH_JWKS_URL`, so it requires `AUTH_ISSUER` and `AUTH_AUDIENCE`
/// (configuration refuses the URL without them); they apply to every token it accepts.
#[test]
fn tokens_for_another_issuer_or_audience_are_refused() {
    let who = unique("other-project");
    let sign = |changes| hs256(JWT_SECRET, &claims_with(&who, changes));
    assert_401_because(&sign(json!({"aud": "another-project"})), "token audience not accepted");
    assert_401_because(&sign(json!({"aud": ["another-project"]})), "token audience not accepted");
    assert_401_because(&sign(json!({"aud": null})), "token audience not accepted");
    assert_401_because(
        &sign(json!({"iss": "https://securetoken.google.com/another-project"})),
        "token issuer not accepted",
    );
    assert_401_because(&sign(json!({"iss": format!("{ISSUER}/")})), "token issuer not accepted");
    assert_401_because(&sign(json!({"iss": null})), "token issuer not accepted");
    assert!(shared().app.sql(&format!("SELECT id FROM users WHERE auth_id = '{who}'")).is_empty());
    // Our audience among others passes.
    let r = plan_me(Some(&sign(json!({"aud": ["another-project", AUDIENCE]}))));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_valid_token_reaches_the_plan() {
    assert_eq!(plan_me(Some(&token(&unique("valid")))).status, 200);
}

/// All RS256 checks run in order in one test: they share the Worker's JWKS cache and
/// the count of fetches the JWKS server has seen.
#[test]
fn rs256_tokens_are_verified_against_the_cached_jwks_and_rotation_is_picked_up() {
    let s = shared();
    let key_a = rsa_key("rsa_a");
    let key_b = rsa_key("rsa_b");
    let who = unique("firebase-user");
    let claims = claims_with(&who, json!({"email": "fb@example.test"}));

    let base_hits = s.jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let r = plan_me(Some(&rs256(&key_a, "key-a", &claims)));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let hits = s.jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(hits - base_hits <= 1, "JWKS fetched {} times for 5 requests: not cached", hits - base_hits);
    assert!(hits >= 1);
    assert_eq!(s.app.count(&format!("SELECT count(*) FROM users WHERE auth_id = '{who}'")), 1);

    // The right kid but the wrong key: bad signature.
    assert_401(Some(&rs256(&key_b, "key-a", &claims)), "signed by another key");
    // The public key used as an HS256 secret: refused.
    let public_as_secret = jwk(&key_a, "key-a").to_string();
    assert_401(Some(&hs256(&public_as_secret, &claims)), "HS/RS confusion");
    // Expired RS256.
    let expired = claims_with(&who, json!({"iat": now() - 7200, "exp": now() - 3600}));
    assert_401(Some(&rs256(&key_a, "key-a", &expired)), "expired rs256");
    // A token of another project signed by the same provider's key (Firebase's key set
    // is shared by every project): refused for its audience or issuer.
    let other_project = claims_with(&who, json!({"aud": "another-project"}));
    assert_401_because(&rs256(&key_a, "key-a", &other_project), "token audience not accepted");
    let other_issuer = claims_with(&who, json!({"iss": "https://securetoken.google.com/another-project"}));
    assert_401_because(&rs256(&key_a, "key-a", &other_issuer), "token issuer not accepted");

    // Key rotation: the IdP publishes key-b; a token naming it forces one refresh.
    *s.jwks.keys.lock().unwrap() = json!({"keys": [jwk(&key_a, "key-a"), jwk(&key_b, "key-b")]});
    let before = s.jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    let r = plan_me(Some(&rs256(&key_b, "key-b", &claims)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.jwks.hits.load(std::sync::atomic::Ordering::SeqCst), before + 1);

    // An unknown kid right after: refused, and no new fetch (refreshes are rate-limited).
    assert_401(Some(&rs256(&key_b, "key-unknown", &claims)), "unknown kid");
    assert_eq!(s.jwks.hits.load(std::sync::atomic::Ordering::SeqCst), before + 1);
}

use crate::shared;
use crate::support::{agent, send, token, unique, ALLOWED_ORIGIN};

fn preflight(origin: &str) -> crate::support::Resp {
    preflight_for(origin, "GET", "/api/plan/me", "authorization")
}

fn preflight_for(origin: &str, method: &str, path: &str, headers: &str) -> crate::support::Resp {
    send(
        &agent(),
        "OPTIONS",
        &shared().app.url(path),
        &[("Origin", origin), ("Access-Control-Request-Method", method), ("Access-Control-Request-Headers", headers)],
        None,
    )
}

/// The comma-separated header names of `value`, lowercase.
fn names(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect()
}

#[test]
fn a_preflight_from_an_allowed_origin_is_answered_with_that_origin() {
    let r = preflight(ALLOWED_ORIGIN);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some(ALLOWED_ORIGIN));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert!(r.header("Access-Control-Allow-Headers").unwrap().to_ascii_lowercase().contains("authorization"));
    assert!(r.header("Access-Control-Allow-Methods").unwrap().contains("GET"));
    assert_eq!(r.header("Vary"), Some("Origin"));
}

#[test]
fn a_preflight_allows_exactly_the_headers_a_browser_call_needs() {
    // A JSON POST from a page: bearer token and Content-Type: application/json.
    let r = preflight_for(ALLOWED_ORIGIN, "POST", "/api/stripe-checkout", "authorization,content-type");
    assert_eq!(r.status, 204);
    assert_eq!(names(r.header("Access-Control-Allow-Headers")), ["authorization", "content-type"]);
    assert!(r.header("Access-Control-Allow-Methods").unwrap().contains("POST"));
}

#[test]
fn a_preflight_from_a_foreign_origin_gets_no_allow_origin() {
    for origin in ["https://evil.example", "https://app.example.test.evil.example", "null"] {
        let r = preflight(origin);
        assert!(r.header("Access-Control-Allow-Origin").is_none(), "{origin}");
        assert!(r.header("Access-Control-Allow-Credentials").is_none(), "{origin}");
    }
}

#[test]
fn real_responses_carry_cors_headers_only_for_allowed_origins_and_never_a_wildcard() {
    let t = token(&unique("cors"));
    let auth = format!("Bearer {t}");
    let url = shared().app.url("/api/plan/me");
    let ok = send(&agent(), "GET", &url, &[("Origin", ALLOWED_ORIGIN), ("Authorization", &auth)], None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("Access-Control-Allow-Origin"), Some(ALLOWED_ORIGIN));
    // The shared app has EXPOSE_D1_STATS on, so the D1 counts are readable too.
    assert_eq!(
        names(ok.header("Access-Control-Expose-Headers")),
        ["x-request-id", "x-d1-rows-read", "x-d1-rows-written", "x-d1-round-trips"]
    );
    let foreign = send(&agent(), "GET", &url, &[("Origin", "https://evil.example"), ("Authorization", &auth)], None);
    assert_eq!(foreign.status, 200);
    assert!(foreign.header("Access-Control-Allow-Origin").is_none());
    // Errors carry CORS headers too, so the browser can read the error code.
    let err = send(&agent(), "GET", &url, &[("Origin", ALLOWED_ORIGIN)], None);
    assert_eq!(err.status, 401);
    assert_eq!(err.header("Access-Control-Allow-Origin"), Some(ALLOWED_ORIGIN));
    for r in [&ok, &foreign, &err] {
        assert!(r.headers.iter().all(|(_, v)| v != "*"));
    }
}

#[test]
fn without_d1_stats_only_the_request_id_is_exposed() {
    // `broken()` has EXPOSE_D1_STATS unset (default options), as qa and production do.
    let r = send(&agent(), "GET", &crate::broken().url("/api/plans"), &[("Origin", ALLOWED_ORIGIN)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some(ALLOWED_ORIGIN));
    assert_eq!(names(r.header("Access-Control-Expose-Headers")), ["x-request-id"]);
}

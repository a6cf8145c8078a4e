use crate::shared;
use crate::support::{agent, send, token, unique, ALLOWED_ORIGIN};

fn preflight(origin: &str) -> crate::support::Resp {
    send(
        &agent(),
        "OPTIONS",
        &shared().app.url("/api/plan/me"),
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    )
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
    assert_eq!(ok.header("Access-Control-Expose-Headers"), Some("X-Request-Id"));
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

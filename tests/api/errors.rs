use std::time::Duration;

use crate::support::{agent, get, json_log_lines, post_chunked, send, token, unique};
use crate::{broken, error_code, shared};

#[test]
fn an_unknown_route_is_a_json_404() {
    for path in ["/nope", "/api/plan", "/api/plan/me/extra", "/API/PLANS"] {
        let r = get(&shared().app.url(path), None);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(error_code(&r.json()), "NOT_FOUND");
        assert!(r.header("Content-Type").unwrap().starts_with("application/json"));
    }
}

#[test]
fn a_wrong_method_is_a_json_405_with_allow() {
    let r = send(&agent(), "DELETE", &shared().app.url("/api/plan/me"), &[], None);
    assert_eq!(r.status, 405);
    assert_eq!(error_code(&r.json()), "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("Allow"), Some("GET"));
}

#[test]
fn a_body_over_the_default_one_mebibyte_limit_is_413() {
    let t = token(&unique("big-body"));
    let auth = format!("Bearer {t}");
    let body = vec![b'x'; 1024 * 1024 + 1];
    let r = send(&agent(), "POST", &shared().app.url("/api/plan/me"), &[("Authorization", &auth)], Some(&body));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(error_code(&r.json()), "PAYLOAD_TOO_LARGE");
    // At the limit the body is not the problem (the method is).
    let body = vec![b'x'; 1024 * 1024];
    let r = send(&agent(), "POST", &shared().app.url("/api/plan/me"), &[("Authorization", &auth)], Some(&body));
    assert_eq!(r.status, 405, "{}", r.body);
}

/// A chunked upload has no Content-Length to refuse up front: the Worker must stop
/// reading at the limit. The client sends 2 MiB of an 8 MiB body and holds the rest
/// back for 20 s; the 413 must arrive meanwhile (a Worker that buffers the whole body
/// first could only answer after the hold), before authentication or any D1 work.
#[test]
fn a_chunked_upload_over_the_limit_is_refused_while_it_is_still_being_sent() {
    let who = unique("chunked-8mib");
    let auth = format!("Bearer {}", token(&who));
    let url = shared().app.url("/api/stripe-checkout");
    let up = post_chunked(
        &url,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        8 * 1024 * 1024,
        2 * 1024 * 1024,
        Duration::from_secs(20),
    );
    assert_eq!(up.resp.status, 413, "{}", up.resp.body);
    assert_eq!(error_code(&up.resp.json()), "PAYLOAD_TOO_LARGE");
    assert!(up.resp.header("Content-Length").is_some() || up.resp.header("Transfer-Encoding").is_some());
    assert!(up.answered_while_held, "answered only after {:?}: the body was read whole first", up.elapsed);
    assert!(up.elapsed < Duration::from_secs(10), "took {:?}", up.elapsed);
    // Nothing written: the caller was never even looked up.
    assert!(shared().app.sql(&format!("SELECT id FROM users WHERE auth_id = '{who}'")).is_empty());
    // The same route with a small chunked body is read and reaches the handler.
    let small = post_chunked(&url, &[("Authorization", &auth)], 1000, 1000, Duration::ZERO);
    assert_eq!(small.resp.status, 400, "{}", small.resp.body);
    assert_eq!(error_code(&small.resp.json()), "INVALID_REQUEST");
}

#[test]
fn the_body_limit_is_configurable() {
    let app = broken();
    let r = send(&agent(), "POST", &app.url("/api/plan/me"), &[], Some(&[b'x'; 2048]));
    assert_eq!(r.status, 413);
    assert_eq!(error_code(&r.json()), "PAYLOAD_TOO_LARGE");
    assert!(r.json()["message"].as_str().unwrap().contains("1024"));
    let r = send(&agent(), "POST", &app.url("/api/plan/me"), &[], Some(&[b'x'; 512]));
    assert_eq!(r.status, 405);
    // Chunked, without Content-Length: the configured limit too.
    let up = post_chunked(&app.url("/api/stripe-checkout"), &[], 2048, 2048, Duration::ZERO);
    assert_eq!(up.resp.status, 413, "{}", up.resp.body);
    assert!(up.resp.json()["message"].as_str().unwrap().contains("1024"));
}

#[test]
fn d1_row_counts_are_sent_only_when_expose_d1_stats_is_on() {
    // The shared app sets EXPOSE_D1_STATS=true (as wrangler.toml's development vars do).
    let on = get(&shared().app.url("/health"), None);
    assert_eq!(on.status, 200, "{}", on.body);
    assert!(on.header("X-D1-Rows-Read").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", on.headers);
    assert!(on.header("X-D1-Rows-Written").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", on.headers);
    // `broken()` has default options, which leave it unset (blank over wrangler.toml's
    // development value), as qa and production do: no X-D1-* header at all.
    for path in ["/health", "/api/plans"] {
        let off = get(&broken().url(path), None);
        assert_eq!(off.status, 200, "{path}: {}", off.body);
        assert!(off.header("X-Request-Id").is_some());
        let leaked: Vec<_> = off.headers.iter().filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-d1")).collect();
        assert!(leaked.is_empty(), "{path}: {leaked:?}");
    }
}

#[test]
fn a_database_failure_is_a_generic_500_and_its_cause_is_logged_with_the_request_id() {
    let app = broken(); // no migrations: the users table does not exist
    let r = get(&app.url("/api/plan/me"), Some(&token(&unique("db-down"))));
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(error_code(&r.json()), "SERVER_ERROR");
    let lower = r.body.to_ascii_lowercase();
    for leak in ["sqlite", "no such table", "d1", "users", "error:", "stack", "at "] {
        assert!(!lower.contains(leak), "response leaks {leak:?}: {}", r.body);
    }
    let request_id = r.header("X-Request-Id").expect("request id header").to_string();
    // The cause is in the log, as one JSON line carrying the same request id.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines = json_log_lines(&app.log_text());
        if let Some(line) = lines.iter().find(|l| l["requestId"] == request_id.as_str()) {
            assert_eq!(line["level"], "error");
            assert_eq!(line["status"], 500);
            assert!(line["error"].as_str().unwrap().contains("no such table"), "{line}");
            assert!(!line.to_string().contains(crate::support::JWT_SECRET));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log line for {request_id}:\n{}", app.log_tail());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Health still answers (D1 itself is up) and the public catalog does not need D1.
    assert_eq!(get(&app.url("/health"), None).status, 200);
    assert_eq!(get(&app.url("/api/plans"), None).status, 200);
}

//! `POST /api/dev/token`: a development user's token, only on a Worker running with
//! `ENVIRONMENT=development` (`make dev`); everywhere else the route does not exist.

use serde_json::json;

use crate::fixtures::request;
use crate::support::{get, unique};
use crate::{dev_app, error_code, shared};

#[test]
fn the_dev_token_endpoint_answers_404_like_an_unknown_route_unless_the_worker_runs_in_development() {
    let app = &shared().app;
    let r = request(app, "POST", "/api/dev/token", None, Some(&json!({"userId": "alice"})));
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json(), request(app, "POST", "/api/no-such-route", None, Some(&json!({}))).json());
    assert_eq!(error_code(&r.json()), "NOT_FOUND");
}

#[test]
fn a_development_worker_gives_a_dev_user_a_token_the_api_accepts() {
    let app = dev_app();
    let user = unique("dev-user");
    let r = request(app, "POST", "/api/dev/token", None, Some(&json!({"userId": user})));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["userId"], user.as_str());
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let token = body["token"].as_str().unwrap();
    // The app requires the test issuer and audience: the token carries them.
    let me = get(&app.url("/api/plan/me"), Some(token));
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["plan"], "free");
    let row = app.sql(&format!("SELECT email FROM users WHERE auth_id = '{user}'"));
    assert_eq!(row[0]["email"], format!("{user}@example.com"));

    for bad in [json!({}), json!({"userId": ""}), json!({"userId": "two words"}), json!({"userId": "x".repeat(65)})] {
        let r = request(app, "POST", "/api/dev/token", None, Some(&bad));
        assert_eq!((r.status, error_code(&r.json())), (400, "INVALID_REQUEST"), "{bad}: {}", r.body);
    }
    assert_eq!(request(app, "GET", "/api/dev/token", None, None).status, 405);
}

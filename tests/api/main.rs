//! End-to-end tests: a real `wrangler dev` (local D1 and KV, fresh state per run) and
//! the built Worker. `make test` builds the Worker first.

// Native test binary: wall-clock calls are fine here (the ban is for the wasm32 Worker).
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod cors;
mod errors;
mod health;
mod plan_me;

use std::sync::OnceLock;

use serde_json::Value;
use support::{App, AppOptions, JwksServer};

pub struct Shared {
    pub app: App,
    pub jwks: JwksServer,
}

/// One app for most tests, with HS256 and RS256 (JWKS served by this process) enabled.
/// It stops when the test process exits (its stdin pipe closes).
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let jwks = JwksServer::start(
            serde_json::json!({"keys": [support::jwk(&support::rsa_key("rsa_a"), "key-a")]}),
        );
        let app = App::spawn(AppOptions::default().var("AUTH_JWKS_URL", &jwks.url));
        Shared { app, jwks }
    })
}

/// A second app with a small body limit and **no migrations**, so D1 queries fail.
pub fn broken() -> &'static App {
    static BROKEN: OnceLock<App> = OnceLock::new();
    BROKEN.get_or_init(|| {
        App::spawn(
            AppOptions {
                migrate: false,
                ..AppOptions::default()
            }
            .var("MAX_BODY_BYTES", "1024"),
        )
    })
}

pub fn error_code(body: &Value) -> &str {
    assert_eq!(body["ok"], false, "{body}");
    body["code"].as_str().unwrap_or_default()
}

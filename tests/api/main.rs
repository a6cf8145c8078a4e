//! End-to-end tests: a real `wrangler dev` (local D1 and KV, fresh state per run) and
//! the built Worker. `make test` builds the Worker first.

// Native test binary: wall-clock calls are fine here (the ban is for the wasm32 Worker).
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod billing;
mod cors;
mod credit_import;
mod credits;
mod customers;
mod dev_token;
mod entitlements;
mod errors;
mod fixtures;
mod health;
mod kv_copy;
mod openapi;
mod plan_me;
mod plan_migration;
mod purge;
mod usage;
mod webhooks;

use std::sync::OnceLock;

use serde_json::Value;
use support::stripe_fake::StripeFake;
use support::{App, AppOptions, JwksServer};

pub use support::stripe_fake::{
    ADMIN_TOKEN, PACK_LARGE_AMOUNT, PACK_SMALL_AMOUNT, PRICE_ESSENTIAL, PRICE_PACK_LARGE, PRICE_PACK_SMALL,
    PRICE_PREMIUM, PRICE_PRO, SERVICE_JWT_SECRET, WEBHOOK_SECRET, WEBHOOK_SECRET_OLD,
};

/// The browser origin the test apps allow (returnUrl must be on it).
pub const ALLOWED_ORIGIN_FOR_TESTS: &str = support::ALLOWED_ORIGIN;

pub struct Shared {
    pub app: App,
    pub jwks: JwksServer,
    pub stripe: StripeFake,
}

/// Vars that point an app at the Stripe fake.
pub fn stripe_options(stripe: &StripeFake) -> AppOptions {
    stripe.app_options()
}

/// Tests that run the cron on `cron_app` hold this for their whole run: a cron run
/// (possibly "in the future") acts on every event of the app, so two such tests must
/// not interleave.
pub fn cron_serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tests that put 100 or more requests in flight at once hold this for their burst:
/// two such bursts together overload the local runtime on a small machine (wrangler
/// answers a few of them 503 "Your worker restarted mid-request").
pub fn load_serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An app of its own for tests that run the cron at a future time (retries after
/// backoff, retention): they would otherwise act on other tests' events.
pub fn cron_app() -> &'static App {
    static CRON: OnceLock<App> = OnceLock::new();
    CRON.get_or_init(|| App::spawn(stripe_options(&shared().stripe)))
}

/// One app for most tests, with HS256 and RS256 (JWKS served by this process, with the
/// required issuer and audience) enabled.
/// It stops when the test process exits (its stdin pipe closes).
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let jwks = JwksServer::start(serde_json::json!({"keys": [support::jwk(&support::rsa_key("rsa_a"), "key-a")]}));
        let stripe = StripeFake::start();
        let app = App::spawn(stripe_options(&stripe).with_jwks(&jwks.url));
        Shared { app, jwks, stripe }
    })
}

/// An app as `make dev` runs one: `public/` served (`[assets]`, see
/// `AppOptions::static_files`), `ENVIRONMENT=development` (the dev token endpoint), and
/// the test issuer and audience required (so dev tokens must carry them).
pub fn dev_app() -> &'static App {
    static DEV: OnceLock<App> = OnceLock::new();
    DEV.get_or_init(|| {
        let jwks = &shared().jwks.url;
        App::spawn(
            AppOptions { static_files: true, ..AppOptions::default() }
                .var("ENVIRONMENT", "development")
                .with_jwks(jwks),
        )
    })
}

/// A second app with a small body limit and **no migrations**, so D1 queries fail.
pub fn broken() -> &'static App {
    static BROKEN: OnceLock<App> = OnceLock::new();
    BROKEN.get_or_init(|| {
        App::spawn(AppOptions { migrate: false, ..AppOptions::default() }.var("MAX_BODY_BYTES", "1024"))
    })
}

pub fn error_code(body: &Value) -> &str {
    assert_eq!(body["ok"], false, "{body}");
    body["code"].as_str().unwrap_or_default()
}

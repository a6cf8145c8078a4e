//! plangate: billing and entitlements backend, one Cloudflare Worker.
//!
//! This file holds the Worker events and the one route table; everything else is in
//! `routes/` (handlers), `domain/` (pure logic), `store/` (D1 and KV), `auth/`.

pub mod auth;
pub mod billing;
pub mod clock;
pub mod config;
pub mod cors;
pub mod cron;
pub mod domain;
pub mod error;
pub mod fetch;
pub mod log;
pub mod routes;
pub mod store;
pub mod stripe;
pub mod util;

use worker::{event, Context, Env, Headers, Method, Request, Response};

use config::Config;
use error::ApiError;
use routes::{Ctx, Reply};
use store::db::Db;
use store::kv_store::KvStore;

#[derive(Clone, Copy)]
enum Handler {
    Health,
    Plans,
    PlanMe,
    StripeWebhook,
    AdminListEvents,
    AdminRetryEvent,
    AdminResync,
    UpgradePlan,
    StripeCheckout,
    BillingPortal,
    CancelSubscription,
    ResumeSubscription,
    DowngradePlan,
    SyncStripePlan,
    Entitlements,
    EntitlementsCheck,
    UsageConsume,
    Usage,
    Credits,
    CreditsCheckout,
    CreditsSpend,
    AdminCredits,
    AdminCreditsAdjust,
    AdminCreditShortfalls,
    AdminMigratePlans,
    AdminVerifyPlans,
    CustomerMe,
    Customer,
    CustomerByEmail,
    CustomerCreate,
    AdminCustomerBackfill,
    AdminCustomerVerify,
    AdminCreditImport,
    AdminPurgeTestAccounts,
    DevToken,
}

struct Route {
    /// Segments; `{}` matches one path segment, passed to the handler.
    path: &'static str,
    methods: &'static [&'static str],
    handler: Handler,
}

/// The route table. Every path answers OPTIONS (CORS preflight) as well.
const ROUTES: &[Route] = &[
    Route { path: "/health", methods: &["GET"], handler: Handler::Health },
    Route { path: "/api/plans", methods: &["GET"], handler: Handler::Plans },
    Route { path: "/api/plan/me", methods: &["GET"], handler: Handler::PlanMe },
    Route { path: "/api/stripe-webhook", methods: &["POST"], handler: Handler::StripeWebhook },
    Route { path: "/api/upgrade-plan", methods: &["POST"], handler: Handler::UpgradePlan },
    Route { path: "/api/stripe-checkout", methods: &["POST"], handler: Handler::StripeCheckout },
    Route { path: "/api/billing-portal", methods: &["POST"], handler: Handler::BillingPortal },
    Route { path: "/api/cancel-subscription", methods: &["POST"], handler: Handler::CancelSubscription },
    Route { path: "/api/resume-subscription", methods: &["POST"], handler: Handler::ResumeSubscription },
    Route { path: "/api/downgrade-plan", methods: &["POST"], handler: Handler::DowngradePlan },
    Route { path: "/api/sync-stripe-plan", methods: &["POST"], handler: Handler::SyncStripePlan },
    Route { path: "/api/admin/webhook-events", methods: &["GET"], handler: Handler::AdminListEvents },
    Route { path: "/api/admin/webhook-events/{}/retry", methods: &["POST"], handler: Handler::AdminRetryEvent },
    Route { path: "/api/admin/resync", methods: &["POST"], handler: Handler::AdminResync },
    Route { path: "/api/entitlements", methods: &["GET"], handler: Handler::Entitlements },
    Route { path: "/api/entitlements/check", methods: &["POST"], handler: Handler::EntitlementsCheck },
    Route { path: "/api/usage", methods: &["GET"], handler: Handler::Usage },
    Route { path: "/api/usage/consume", methods: &["POST"], handler: Handler::UsageConsume },
    Route { path: "/api/credits", methods: &["GET"], handler: Handler::Credits },
    Route { path: "/api/credits/checkout", methods: &["POST"], handler: Handler::CreditsCheckout },
    Route { path: "/api/credits/spend", methods: &["POST"], handler: Handler::CreditsSpend },
    Route { path: "/api/admin/credits", methods: &["GET"], handler: Handler::AdminCredits },
    Route { path: "/api/admin/credits/adjust", methods: &["POST"], handler: Handler::AdminCreditsAdjust },
    Route { path: "/api/admin/credits/shortfalls", methods: &["GET"], handler: Handler::AdminCreditShortfalls },
    Route { path: "/api/admin/migrations/plans", methods: &["POST"], handler: Handler::AdminMigratePlans },
    Route { path: "/api/admin/migrations/plans/verify", methods: &["GET"], handler: Handler::AdminVerifyPlans },
    // The legacy customer API's paths; `/customer/me` before `/customer/{}`.
    Route { path: "/customer", methods: &["POST"], handler: Handler::CustomerCreate },
    Route { path: "/customer/me", methods: &["GET", "PATCH"], handler: Handler::CustomerMe },
    Route { path: "/customer/by-email/{}", methods: &["GET"], handler: Handler::CustomerByEmail },
    Route { path: "/customer/{}", methods: &["GET"], handler: Handler::Customer },
    Route { path: "/api/admin/migrations/customers", methods: &["POST"], handler: Handler::AdminCustomerBackfill },
    Route { path: "/api/admin/migrations/customers/verify", methods: &["GET"], handler: Handler::AdminCustomerVerify },
    Route { path: "/api/admin/migrations/credits", methods: &["POST"], handler: Handler::AdminCreditImport },
    Route { path: "/api/admin/purge-test-accounts", methods: &["POST"], handler: Handler::AdminPurgeTestAccounts },
    Route { path: "/api/dev/token", methods: &["POST"], handler: Handler::DevToken },
];

fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let (mut p, mut a) = (pattern.split('/'), path.split('/'));
    let mut params = Vec::new();
    loop {
        match (p.next(), a.next()) {
            (None, None) => return Some(params),
            (Some("{}"), Some(seg)) if !seg.is_empty() => params.push(seg.to_string()),
            (Some(x), Some(y)) if x == y => {}
            _ => return None,
        }
    }
}

fn resolve(method: &str, path: &str) -> Result<(Handler, Vec<String>), ApiError> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let (route, params) =
        ROUTES.iter().find_map(|r| match_path(r.path, path).map(|p| (r, p))).ok_or(ApiError::NotFound)?;
    if route.methods.contains(&method) {
        Ok((route.handler, params))
    } else {
        Err(ApiError::MethodNotAllowed { allow: route.methods })
    }
}

async fn dispatch(handler: Handler, params: &[String], ctx: &Ctx<'_>, method: &str) -> Result<Reply, ApiError> {
    let param = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    match handler {
        Handler::Health => routes::health::get(ctx).await,
        Handler::Plans => routes::catalog::get(ctx),
        Handler::PlanMe => routes::plan::me(ctx).await,
        Handler::StripeWebhook => routes::webhook::stripe(ctx).await,
        Handler::AdminListEvents => routes::admin::list_events(ctx).await,
        Handler::AdminRetryEvent => routes::admin::retry_event(ctx, param(0)).await,
        Handler::AdminResync => routes::admin::resync(ctx).await,
        Handler::UpgradePlan => routes::billing::upgrade_plan(ctx).await,
        Handler::StripeCheckout => routes::billing::stripe_checkout(ctx).await,
        Handler::BillingPortal => routes::billing::billing_portal(ctx).await,
        Handler::CancelSubscription => routes::billing::cancel_subscription(ctx).await,
        Handler::ResumeSubscription => routes::billing::resume_subscription(ctx).await,
        Handler::DowngradePlan => routes::billing::downgrade_plan(ctx).await,
        Handler::SyncStripePlan => routes::billing::sync_stripe_plan(ctx).await,
        Handler::Entitlements => routes::entitlements::get(ctx).await,
        Handler::EntitlementsCheck => routes::entitlements::check(ctx).await,
        Handler::UsageConsume => routes::usage::consume(ctx).await,
        Handler::Usage => routes::usage::get(ctx).await,
        Handler::Credits => routes::credits::get(ctx).await,
        Handler::CreditsCheckout => routes::credits::checkout(ctx).await,
        Handler::CreditsSpend => routes::credits::spend(ctx).await,
        Handler::AdminCredits => routes::credits::admin_list(ctx).await,
        Handler::AdminCreditsAdjust => routes::credits::admin_adjust(ctx).await,
        Handler::AdminCreditShortfalls => routes::credits::admin_shortfalls(ctx).await,
        Handler::AdminMigratePlans => routes::plan_migration::backfill(ctx).await,
        Handler::AdminVerifyPlans => routes::plan_migration::verify(ctx).await,
        Handler::CustomerMe if method == "PATCH" => routes::customer::patch_me(ctx).await,
        Handler::CustomerMe => routes::customer::read(ctx, routes::customer::Read::Me, "").await,
        Handler::Customer => routes::customer::read(ctx, routes::customer::Read::Id, param(0)).await,
        Handler::CustomerByEmail => routes::customer::read(ctx, routes::customer::Read::Email, param(0)).await,
        Handler::CustomerCreate => routes::customer::create(ctx).await,
        Handler::AdminCustomerBackfill => routes::customer::backfill(ctx).await,
        Handler::AdminCustomerVerify => routes::customer::verify(ctx).await,
        // Boxed: these admin-only handlers stay out of the request future's state (smaller Wasm).
        Handler::AdminCreditImport => boxed(routes::credit_import::import(ctx)).await,
        Handler::AdminPurgeTestAccounts => boxed(routes::purge::purge_test_accounts(ctx)).await,
        Handler::DevToken => routes::dev::token(ctx),
    }
}

type ReplyFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, ApiError>> + 'a>>;

fn boxed<'a>(f: impl std::future::Future<Output = Result<Reply, ApiError>> + 'a) -> ReplyFuture<'a> {
    Box::pin(f)
}

/// Reads the body as a stream and stops at `limit` bytes whatever Content-Length said
/// (a chunked upload has none): a larger body is never held in memory whole.
async fn read_body(req: &mut Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    if req.inner().body().is_none() {
        return Ok(Vec::new());
    }
    let stream = req.stream().map_err(|_| ApiError::InvalidRequest("unreadable request body".into()))?;
    util::read_limited(stream, limit).await.map_err(|e| match e {
        Some(limit) => ApiError::PayloadTooLarge { limit },
        None => ApiError::InvalidRequest("unreadable request body".into()),
    })
}

/// A var or secret by name. The one lookup `Config::cached` is called with (fetch and
/// cron alike): it is generic over the lookup, and the configuration parser would be
/// in the Wasm once per closure type.
pub(crate) fn env_lookup(env: &Env) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| env.var(name).ok().map(|v| v.to_string())
}

fn build_response(status: u16, body: Option<String>, headers: &[(&'static str, String)]) -> worker::Result<Response> {
    let h = Headers::new();
    for (k, v) in headers {
        h.append(k, v)?;
    }
    let resp = match body {
        Some(b) => {
            h.set("Content-Type", "application/json; charset=utf-8")?;
            Response::from_bytes(b.into_bytes())?
        }
        None => Response::empty()?,
    };
    Ok(resp.with_status(status).with_headers(h))
}

/// After the response: the KV copies of the users this request changed (their outbox
/// rows make the cron finish whatever this does not).
async fn write_copies_later(env: Env, cfg: std::rc::Rc<Config>, user_ids: Vec<String>, request_id: String) {
    let Ok(d1) = env.d1("DB") else { return };
    let db = Db::new(d1);
    let billing = billing::Billing::new(&db, &cfg, KvStore::from_env(&env, "APP_KV"), clock::now(), &request_id);
    billing.flush_copies(&user_ids).await;
}

/// After the response: a cache entry (e.g. entitlements) put in `APP_KV`.
async fn cache_later(env: Env, key: String, value: String, ttl: u64, request_id: String) {
    let Some(kv) = KvStore::from_env(&env, "APP_KV") else { return };
    // A change since this answer was computed left a tombstone: the answer is old.
    if let (Ok(Some(current)), Some(at)) = (kv.get_text(&key).await, store::kv::computed_at(&value)) {
        if store::kv::superseded(&current, at) {
            return;
        }
    }
    let put = match kv.put_bytes(&key, value.as_bytes()) {
        Ok(p) => p.expiration_ttl(ttl).execute().await,
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        log::warn(&request_id, "kv.cache_put_failed", obj! {"error": e.to_string()});
    }
}

#[event(scheduled)]
pub async fn scheduled(event: worker::ScheduledEvent, env: Env, _ctx: worker::ScheduleContext) {
    cron::run(&event.cron(), event.schedule(), &env).await;
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
pub async fn fetch(mut req: Request, env: Env, worker_ctx: Context) -> worker::Result<Response> {
    // Request ids are unique: consume counts a use only for the request that claimed its
    // idempotency key, by this id. Without randomness there is no safe id: refuse.
    let Ok(hex) = util::random_hex(8) else {
        let err = ApiError::server("no randomness for a request id");
        return build_response(500, Some(err.body_json()), &[]);
    };
    let request_id = format!("req_{hex}");
    let origin = req.headers().get("Origin").ok().flatten();
    let method = req.method();
    let (path, query) = util::split_url(&req.inner().url());

    let cfg = match Config::cached(env_lookup(&env)) {
        Ok(c) => c,
        Err(e) => {
            let err = ApiError::server(format!("configuration: {e}"));
            log::error(&request_id, "config.invalid", obj! {"error": e.as_str()});
            return build_response(500, Some(err.body_json()), &[("X-Request-Id", request_id)]);
        }
    };
    let mut headers = cors::response_headers(&cfg, origin.as_deref());
    headers.push(("X-Request-Id", request_id.clone()));

    if method == Method::Options {
        let mut h = cors::preflight_headers(&cfg, origin.as_deref());
        h.push(("X-Request-Id", request_id.clone()));
        return build_response(204, None, &h);
    }

    let outcome = async {
        let declared = req.headers().get("Content-Length").ok().flatten();
        if let Some(len) = declared {
            match len.trim().parse::<u64>() {
                Ok(n) if n > cfg.max_body_bytes => return Err(ApiError::PayloadTooLarge { limit: cfg.max_body_bytes }),
                Ok(_) => {}
                Err(_) => return Err(ApiError::InvalidRequest("invalid Content-Length".into())),
            }
        }
        let (handler, params) = resolve(method.as_ref(), &path)?;
        let body = match method {
            Method::Post | Method::Put | Method::Patch => read_body(&mut req, cfg.max_body_bytes).await?,
            _ => Vec::new(),
        };
        let d1 = env.d1("DB").map_err(|e| ApiError::server(format!("D1 binding DB: {e}")))?;
        let db = Db::new(d1);
        let ctx = Ctx {
            env: &env,
            cfg: &cfg,
            db: &db,
            request_id: &request_id,
            now: clock::now(),
            authorization: req.headers().get("Authorization").ok().flatten(),
            // The same JS object, not a copy (`Headers::clone` copies every header).
            headers: Headers(req.headers().0.clone()),
            query,
            body,
            copies_due: Default::default(),
            cache_put: Default::default(),
        };
        let reply = dispatch(handler, &params, &ctx, method.as_ref()).await;
        let due = ctx.copies_due.take();
        if !due.is_empty() {
            worker_ctx.wait_until(write_copies_later(env.clone(), cfg.clone(), due, request_id.clone()));
        }
        if let Some((key, value, ttl)) = ctx.cache_put.take() {
            worker_ctx.wait_until(cache_later(env.clone(), key, value, ttl, request_id.clone()));
        }
        Ok((reply, (db.rows_read(), db.rows_written(), db.round_trips())))
    }
    .await;

    let (status, body) = match outcome {
        Ok((Ok(reply), (read, written, trips))) => {
            headers.extend(reply.headers);
            if cfg.expose_d1_stats {
                headers.push(("X-D1-Rows-Read", read.to_string()));
                headers.push(("X-D1-Rows-Written", written.to_string()));
                headers.push(("X-D1-Round-Trips", trips.to_string()));
            }
            (reply.status, util::json_text(&reply.body))
        }
        Ok((Err(e), _)) | Err(e) => {
            if let Some(cause) = e.log_cause() {
                log::error(
                    &request_id,
                    "request.failed",
                    obj! {"method": method.as_ref(), "path": path.as_str(), "status": e.status(), "error": cause},
                );
            }
            if let ApiError::MethodNotAllowed { allow } = &e {
                headers.push(("Allow", allow.join(", ")));
            }
            if matches!(e, ApiError::AuthRequired(_)) {
                headers.push(("WWW-Authenticate", "Bearer".to_string()));
            }
            (e.status(), e.body_json())
        }
    };
    build_response(status, Some(body), &headers)
}

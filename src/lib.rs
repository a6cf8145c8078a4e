//! plangate: billing and entitlements backend, one Cloudflare Worker.
//!
//! This file holds the Worker events and the one route table; everything else is in
//! `routes/` (handlers), `domain/` (pure logic), `store/` (D1 and KV), `auth/`.

pub mod auth;
pub mod clock;
pub mod config;
pub mod cors;
pub mod domain;
pub mod error;
pub mod log;
pub mod routes;
pub mod store;
pub mod util;

use serde_json::json;
use worker::{event, Context, Env, Headers, Method, Request, Response};

use config::Config;
use error::ApiError;
use routes::{Ctx, Reply};
use store::db::Db;

#[derive(Clone, Copy)]
enum Handler {
    Health,
    Plans,
    PlanMe,
}

struct Route {
    path: &'static str,
    methods: &'static [&'static str],
    handler: Handler,
}

/// The route table. Every path answers OPTIONS (CORS preflight) as well.
const ROUTES: &[Route] = &[
    Route {
        path: "/health",
        methods: &["GET"],
        handler: Handler::Health,
    },
    Route {
        path: "/api/plans",
        methods: &["GET"],
        handler: Handler::Plans,
    },
    Route {
        path: "/api/plan/me",
        methods: &["GET"],
        handler: Handler::PlanMe,
    },
];

fn resolve(method: &str, path: &str) -> Result<Handler, ApiError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let route = ROUTES
        .iter()
        .find(|r| r.path == path)
        .ok_or(ApiError::NotFound)?;
    if route.methods.contains(&method) {
        Ok(route.handler)
    } else {
        Err(ApiError::MethodNotAllowed {
            allow: route.methods,
        })
    }
}

async fn dispatch(handler: Handler, ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    match handler {
        Handler::Health => routes::health::get(ctx).await,
        Handler::Plans => routes::catalog::get(),
        Handler::PlanMe => routes::plan::me(ctx).await,
    }
}

fn env_lookup(env: &Env) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| env.var(name).ok().map(|v| v.to_string())
}

fn build_response(
    status: u16,
    body: Option<String>,
    headers: &[(&'static str, String)],
) -> worker::Result<Response> {
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

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
pub async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let request_id = format!(
        "req_{}",
        util::random_hex(8).unwrap_or_else(|_| "0".repeat(16))
    );
    let origin = req.headers().get("Origin").ok().flatten();
    let method = req.method();
    let path = req.path();

    let cfg = match Config::from_lookup(env_lookup(&env)) {
        Ok(c) => c,
        Err(e) => {
            let err = ApiError::server(format!("configuration: {e}"));
            log::error(&request_id, "config.invalid", json!({"error": e}));
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
                Ok(n) if n > cfg.max_body_bytes => {
                    return Err(ApiError::PayloadTooLarge {
                        limit: cfg.max_body_bytes,
                    })
                }
                Ok(_) => {}
                Err(_) => return Err(ApiError::InvalidRequest("invalid Content-Length".into())),
            }
        }
        let handler = resolve(method.as_ref(), &path)?;
        let d1 = env
            .d1("DB")
            .map_err(|e| ApiError::server(format!("D1 binding DB: {e}")))?;
        let db = Db::new(d1);
        let ctx = Ctx {
            env: &env,
            cfg: &cfg,
            db: &db,
            request_id: &request_id,
            now: clock::now(),
            authorization: req.headers().get("Authorization").ok().flatten(),
        };
        let reply = dispatch(handler, &ctx).await;
        Ok((reply, db.rows_read(), db.rows_written()))
    }
    .await;

    let (status, body) = match outcome {
        Ok((Ok(reply), read, written)) => {
            headers.extend(reply.headers);
            headers.push(("X-D1-Rows-Read", read.to_string()));
            headers.push(("X-D1-Rows-Written", written.to_string()));
            (reply.status, reply.body.to_string())
        }
        Ok((Err(e), _, _)) | Err(e) => {
            if let Some(cause) = e.log_cause() {
                log::error(
                    &request_id,
                    "request.failed",
                    json!({"method": method.as_ref(), "path": path, "status": e.status(), "error": cause}),
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

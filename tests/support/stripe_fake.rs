//! A stateful Stripe fake on loopback: serves subscriptions, customers and events the
//! test puts in it, fails on request for chosen ids, and records every request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub const SECRET_KEY: &str = "sk_test_plangate_fake";
pub const WEBHOOK_SECRET: &str = "whsec_e2e_current";
/// A second, older secret: deliveries signed with either pass (rotation).
pub const WEBHOOK_SECRET_OLD: &str = "whsec_e2e_previous";
pub const ADMIN_TOKEN: &str = "admin-e2e-token-0123456789";
pub const PRICE_ESSENTIAL: &str = "price_essential_e2e";
pub const PRICE_PRO: &str = "price_pro_e2e";
pub const PRICE_PREMIUM: &str = "price_premium_e2e";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct FakeState {
    pub subscriptions: BTreeMap<String, Value>,
    pub customers: BTreeMap<String, Value>,
    /// Events the Events API lists as `delivery_success=false`.
    pub undelivered: Vec<Value>,
    /// Ids (subscription, customer) whose reads answer 500.
    pub failing: BTreeSet<String>,
    /// Ids whose reads do not answer until released (a hung Stripe).
    pub hanging: BTreeSet<String>,
    pub requests: Vec<Recorded>,
}

#[derive(Clone)]
pub struct StripeFake {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"type": kind, "code": code, "message": message}}))
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(items: Vec<Value>, params: &[(String, String)]) -> Value {
    let limit = params.iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse().ok()).unwrap_or(10usize);
    let start = match params.iter().find(|(k, _)| k == "starting_after") {
        Some((_, after)) => items.iter().position(|i| i["id"] == after.as_str()).map(|p| p + 1).unwrap_or(items.len()),
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    json!({"object": "list", "data": page, "has_more": start + limit < items.len()})
}

impl StripeFake {
    /// Vars that point an app at this fake (with both webhook secrets, the prices,
    /// dual-write on and an admin token).
    pub fn app_options(&self) -> super::AppOptions {
        super::AppOptions::default()
            .var("STRIPE_API_BASE", &self.base)
            .var("STRIPE_SECRET_KEY", SECRET_KEY)
            .var("STRIPE_WEBHOOK_SECRET", &format!("{WEBHOOK_SECRET_OLD},{WEBHOOK_SECRET}"))
            .var("STRIPE_PRICE_ESSENTIAL", PRICE_ESSENTIAL)
            .var("STRIPE_PRICE_PRO", PRICE_PRO)
            .var("STRIPE_PRICE_PREMIUM", PRICE_PREMIUM)
            .var("DUAL_WRITE_KV", "true")
            .var("ADMIN_TOKEN", ADMIN_TOKEN)
    }

    pub fn start() -> StripeFake {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let fake =
            StripeFake { base: format!("http://127.0.0.1:{port}"), state: Arc::new(Mutex::new(FakeState::default())) };
        let state = fake.state.clone();
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let state = state.clone();
                std::thread::spawn(move || {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let url = req.url().to_string();
                    let (path, query) = url
                        .split_once('?')
                        .map(|(p, q)| (p.to_string(), q.to_string()))
                        .unwrap_or((url.clone(), String::new()));
                    let headers = req.headers().iter().map(|h| (h.field.to_string(), h.value.to_string())).collect();
                    let rec = Recorded { method: req.method().to_string(), path, query, headers, body };
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                    while state.lock().unwrap().hanging.iter().any(|id| rec.path.ends_with(id.as_str()))
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    let (status, value) = handle(&state, &rec);
                    state.lock().unwrap().requests.push(rec);
                    let resp = tiny_http::Response::from_string(value.to_string())
                        .with_status_code(status)
                        .with_header("Content-Type: application/json".parse::<tiny_http::Header>().unwrap());
                    let _ = req.respond(resp);
                });
            }
        });
        fake
    }

    pub fn set_hanging(&self, id: &str, hanging: bool) {
        let mut s = self.state.lock().unwrap();
        if hanging {
            s.hanging.insert(id.to_string());
        } else {
            s.hanging.remove(id);
        }
    }

    pub fn put_subscription(&self, sub: Value) {
        let id = sub["id"].as_str().unwrap().to_string();
        self.state.lock().unwrap().subscriptions.insert(id, sub);
    }

    pub fn put_customer(&self, customer: Value) {
        let id = customer["id"].as_str().unwrap().to_string();
        self.state.lock().unwrap().customers.insert(id, customer);
    }

    pub fn add_undelivered(&self, event: Value) {
        self.state.lock().unwrap().undelivered.push(event);
    }

    pub fn set_failing(&self, id: &str, failing: bool) {
        let mut s = self.state.lock().unwrap();
        if failing {
            s.failing.insert(id.to_string());
        } else {
            s.failing.remove(id);
        }
    }

    /// Requests whose path or query mentions `needle` (e.g. a subscription id).
    pub fn requests_about(&self, needle: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path.contains(needle) || r.query.contains(needle) || r.body.contains(needle))
            .cloned()
            .collect()
    }
}

fn handle(state: &Arc<Mutex<FakeState>>, r: &Recorded) -> (u16, Value) {
    if r.header("Authorization") != Some(&format!("Bearer {SECRET_KEY}")) {
        return error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key provided");
    }
    let params = query_pairs(&r.query);
    let s = state.lock().unwrap();
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "subscriptions", id]) => {
            if s.failing.contains(*id) {
                return error(500, "api_error", "", "injected failure");
            }
            match s.subscriptions.get(*id) {
                Some(v) => (200, v.clone()),
                None => error(404, "invalid_request_error", "resource_missing", "No such subscription"),
            }
        }
        ("GET", ["v1", "subscriptions"]) => {
            let customer = params.iter().find(|(k, _)| k == "customer").map(|(_, v)| v.clone());
            if customer.as_ref().is_some_and(|c| s.failing.contains(c)) {
                return error(500, "api_error", "", "injected failure");
            }
            let items: Vec<Value> = s
                .subscriptions
                .values()
                .filter(|v| customer.as_ref().is_none_or(|c| v["customer"] == c.as_str()))
                .cloned()
                .collect();
            (200, list(items, &params))
        }
        ("GET", ["v1", "customers", id]) => {
            if s.failing.contains(*id) {
                return error(500, "api_error", "", "injected failure");
            }
            match s.customers.get(*id) {
                Some(v) => (200, v.clone()),
                None => error(404, "invalid_request_error", "resource_missing", "No such customer"),
            }
        }
        ("GET", ["v1", "events"]) => {
            let gte =
                params.iter().find(|(k, _)| k == "created[gte]").and_then(|(_, v)| v.parse::<i64>().ok()).unwrap_or(0);
            let mut items: Vec<Value> =
                s.undelivered.iter().filter(|e| e["created"].as_i64().unwrap_or(0) >= gte).cloned().collect();
            items.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64().unwrap_or(0)));
            (200, list(items, &params))
        }
        _ => error(404, "invalid_request_error", "", &format!("Unrecognized request URL ({} {})", r.method, r.path)),
    }
}

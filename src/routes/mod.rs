//! Thin handlers: parse → domain → store → respond.

pub mod admin;
pub mod billing;
pub mod catalog;
pub mod credits;
pub mod entitlements;
pub mod health;
pub mod plan;
pub mod usage;
pub mod webhook;

use serde_json::Value;
use worker::Env;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::db::Db;

/// What a handler needs; built once per request by `lib.rs`.
pub struct Ctx<'a> {
    pub env: &'a Env,
    pub cfg: &'a Config,
    pub db: &'a Db,
    pub request_id: &'a str,
    pub now: i64,
    pub authorization: Option<String>,
    pub headers: worker::Headers,
    /// The raw query string.
    pub query: String,
    /// The raw body, already checked against `MAX_BODY_BYTES` (empty for GET).
    pub body: Vec<u8>,
    /// Users whose KV copies are due: written after the response (`wait_until`).
    pub copies_due: std::cell::RefCell<Vec<String>>,
    /// A KV value to cache after the response (key, value, TTL seconds).
    pub cache_put: std::cell::RefCell<Option<(String, String, u64)>>,
}

impl<'a> Ctx<'a> {
    /// Billing for this request. It holds no KV handle: nothing on the response path
    /// can touch KV. The copies it makes due are written after the response
    /// (`lib.rs`, `ctx.wait_until`) and by the cron, from the outbox.
    pub fn billing(&'a self) -> crate::billing::Billing<'a> {
        crate::billing::Billing::new(self.db, self.cfg, None, self.now, self.request_id)
            .deferring_copies_to(&self.copies_due)
    }

    pub fn app_kv(&self) -> Option<worker::KvStore> {
        self.env.kv("APP_KV").ok()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).ok().flatten()
    }

    pub fn query(&self, name: &str) -> Option<String> {
        crate::util::query_param(&self.query, name)
    }

    /// The body as JSON of type `T`; 400 `INVALID_REQUEST` saying what is wrong.
    pub fn json_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &self.body };
        serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidRequest(format!("Invalid JSON body: {e}")))
    }

    /// The verified caller, or 401.
    pub async fn identity(&self) -> Result<crate::auth::jwt::Identity, ApiError> {
        crate::auth::authenticate(self.authorization.as_deref(), self.cfg, self.app_kv(), self.now, self.request_id)
            .await
    }

    /// The verified caller as a user, a service or the admin, or 401.
    pub async fn caller(&self) -> Result<crate::auth::Caller, ApiError> {
        crate::auth::authenticate_caller(
            self.authorization.as_deref(),
            self.cfg,
            self.app_kv(),
            self.now,
            self.request_id,
        )
        .await
    }

    /// Drops the user's cached entitlements before answering: the caller's next read
    /// (in this location) sees what this request changed. A failure is logged: the
    /// cache expires within a minute, and nothing that spends reads it.
    pub async fn forget_entitlements(&self, auth_id: &str) {
        let Some(kv) = self.app_kv() else { return };
        if let Err(e) = kv.delete(&crate::store::kv::entitlements_key(auth_id)).await {
            crate::log::warn(
                self.request_id,
                "kv.entitlements_delete_failed",
                serde_json::json!({"error": e.to_string()}),
            );
        }
    }

    /// The body as a JSON object (empty body: `{}`); 400 otherwise.
    pub fn json_object(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        match self.json_body::<Value>()? {
            Value::Object(m) => Ok(m),
            _ => Err(ApiError::InvalidRequest("the body must be a JSON object".into())),
        }
    }
}

/// A successful answer: status, JSON body and extra headers.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Reply { status: 200, body, headers: Vec::new() }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A string field of a JSON body: `None` when absent or null; 400 when not a string,
/// empty, longer than `max` characters or holding control characters.
pub fn text_field(body: &serde_json::Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => {
            Err(ApiError::InvalidRequest(format!("{name} must be a non-empty string of at most {max} characters")))
        }
    }
}

pub fn required_text(body: &serde_json::Map<String, Value>, name: &str, max: usize) -> Result<String, ApiError> {
    text_field(body, name, max)?.ok_or_else(|| ApiError::InvalidRequest(format!("{name} is required")))
}

/// A whole-number field within `range`; `default` when absent.
pub fn int_field(
    body: &serde_json::Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    default: Option<i64>,
) -> Result<i64, ApiError> {
    let bad =
        || ApiError::InvalidRequest(format!("{name} must be a whole number from {} to {}", range.start(), range.end()));
    match body.get(name) {
        None | Some(Value::Null) => default.ok_or_else(|| ApiError::InvalidRequest(format!("{name} is required"))),
        Some(v) => v.as_i64().filter(|n| range.contains(n)).ok_or_else(bad),
    }
}

//! Thin handlers: parse → domain → store → respond.

pub mod admin;
pub mod billing;
pub mod catalog;
pub mod health;
pub mod plan;
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
}

impl<'a> Ctx<'a> {
    /// Billing for this request; KV copies are written after the response.
    pub fn billing(&'a self) -> crate::billing::Billing<'a> {
        crate::billing::Billing::new(self.db, self.cfg, self.app_kv(), self.now, self.request_id)
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
    ///
    /// Read with `from_str` after a UTF-8 check, never `from_slice`: serde_json's parser
    /// is generic over its reader, and D1 rows and stored payloads already need the
    /// `&str` one; a second reader would add another copy of the parser to the Wasm.
    pub fn json_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &self.body };
        let text =
            std::str::from_utf8(bytes).map_err(|_| ApiError::InvalidRequest("Invalid JSON body: not UTF-8".into()))?;
        serde_json::from_str(text).map_err(|e| ApiError::InvalidRequest(format!("Invalid JSON body: {e}")))
    }

    /// The verified caller, or 401.
    pub async fn identity(&self) -> Result<crate::auth::jwt::Identity, ApiError> {
        crate::auth::authenticate(self.authorization.as_deref(), self.cfg, self.app_kv(), self.now, self.request_id)
            .await
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

//! Thin handlers: parse → domain → store → respond.

pub mod admin;
pub mod billing;
pub mod catalog;
pub mod credit_import;
pub mod credits;
pub mod customer;
pub mod dev;
pub mod entitlements;
pub mod health;
pub mod plan;
pub mod plan_migration;
pub mod purge;
pub mod usage;
pub mod webhook;

use serde_json::{Map, Value};
use worker::Env;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::db::Db;
use crate::store::kv_store::KvStore;

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
    /// Billing for this request; KV copies are written after the response.
    pub fn billing(&'a self) -> crate::billing::Billing<'a> {
        crate::billing::Billing::new(self.db, self.cfg, self.app_kv(), self.now, self.request_id)
            .deferring_copies_to(&self.copies_due)
            .reading_legacy_plans()
    }

    pub fn app_kv(&self) -> Option<KvStore> {
        KvStore::from_env(self.env, "APP_KV")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).ok().flatten()
    }

    pub fn query(&self, name: &str) -> Option<String> {
        crate::util::query_param(&self.query, name)
    }

    /// `?limit=` as a [`page_limit`]: anything but a whole number is refused alike.
    pub fn query_limit(&self, default: i64, max: i64) -> Result<i64, ApiError> {
        page_limit(self.query("limit").map(|l| l.parse::<i64>().unwrap_or(0)), default, max)
    }

    /// The body as a JSON object (an empty body is `{}`); 400 `INVALID_REQUEST` saying
    /// what is wrong.
    pub fn json_body(&self) -> Result<JsonBody, ApiError> {
        JsonBody::parse(&self.body)
    }

    /// The verified caller, or 401.
    pub fn identity(&self) -> impl std::future::Future<Output = Result<crate::auth::jwt::Identity, ApiError>> + '_ {
        crate::auth::authenticate(self.authorization.as_deref(), self.cfg, self.app_kv(), self.now, self.request_id)
    }

    /// The verified caller as a user, a service or the admin, or 401.
    pub fn caller(&self) -> impl std::future::Future<Output = Result<crate::auth::Caller, ApiError>> + '_ {
        crate::auth::authenticate_caller(
            self.authorization.as_deref(),
            self.cfg,
            self.app_kv(),
            self.now,
            self.request_id,
        )
    }

    /// Drops the user's cached entitlements before answering: the caller's next read
    /// (in this location) sees what this request changed. The entry is replaced by a
    /// tombstone with the time, so a read that computed its answer before the change
    /// cannot put the old answer back. A failure is logged: the cache expires within a
    /// minute, and nothing that spends reads it.
    pub async fn forget_entitlements(&self, auth_id: &str) {
        use crate::store::kv;
        let Some(store) = self.app_kv() else { return };
        let key = kv::entitlements_key(auth_id);
        let put = match store.put_bytes(&key, kv::entitlements_tombstone(self.now).as_bytes()) {
            Ok(p) => p.expiration_ttl(kv::ENTITLEMENTS_TTL_SECONDS as u64).execute().await,
            Err(e) => Err(e),
        };
        if let Err(e) = put {
            crate::log::warn(self.request_id, "kv.entitlements_delete_failed", crate::obj! {"error": e.to_string()});
        }
    }

    /// The body as a JSON object (empty body: `{}`); 400 otherwise.
    pub fn json_object(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        Ok(self.json_body()?.0)
    }
}

/// A request body: one JSON object whose fields the handler reads by name. Read from a
/// `Value` rather than through `#[derive(Deserialize)]` structs: each derived struct
/// is its own copy of a serde visitor in the Wasm, these accessors exist once.
#[derive(Debug)]
pub struct JsonBody(Map<String, Value>);

fn invalid_body(why: String) -> ApiError {
    ApiError::InvalidRequest(format!("Invalid JSON body: {why}"))
}

impl JsonBody {
    /// Parsed with `from_str` after a UTF-8 check, never `from_slice`: serde_json's
    /// parser is generic over its reader, and D1 rows and stored payloads already need
    /// the `&str` one; a second reader would add another copy of the parser to the Wasm.
    pub fn parse(bytes: &[u8]) -> Result<JsonBody, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Map::new()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_body("not UTF-8".into()))?;
        match serde_json::from_str(text) {
            Ok(Value::Object(m)) => Ok(JsonBody(m)),
            Ok(_) => Err(invalid_body("expected a JSON object".into())),
            Err(e) => Err(invalid_body(e.to_string())),
        }
    }

    /// A field; `null` counts as absent.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A string field; `None` when absent or `null`.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_body(format!("`{name}` must be a string"))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, ApiError> {
        self.opt_str(name)?.ok_or_else(|| invalid_body(format!("missing field `{name}`")))
    }

    /// A whole-number field; `None` when absent or `null`.
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.field(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| invalid_body(format!("`{name}` must be a whole number"))),
        }
    }

    /// A boolean field; `false` when absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| invalid_body(format!("`{name}` must be true or false"))),
        }
    }

    /// Refuses fields other than `known` (where a misspelt field must not pass unseen).
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(invalid_body(format!("unknown field `{k}`, expected one of {}", known.join(", ")))),
            None => Ok(()),
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

/// A page size: `given` (absent: `default`), 400 unless a whole number from 1 to `max`.
/// The one check of every endpoint that pages (`?limit=` or a body's `limit`).
pub fn page_limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::InvalidRequest(format!("limit must be a whole number from 1 to {max}"))),
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

#[cfg(test)]
mod tests {
    use super::JsonBody;
    use crate::error::ApiError;

    fn body(text: &str) -> Result<JsonBody, ApiError> {
        JsonBody::parse(text.as_bytes())
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_body_is_an_empty_object_and_anything_but_an_object_is_refused() {
        assert!(body("").unwrap().opt_str("x").unwrap().is_none());
        assert!(body(" \n").unwrap().opt_str("x").unwrap().is_none());
        for bad in ["[]", "3", "\"x\"", "{", "{\"a\":}", "null"] {
            assert!(message(body(bad).unwrap_err()).starts_with("Invalid JSON body: "), "{bad}");
        }
        assert!(message(JsonBody::parse(b"{\"a\":\"\xff\"}").unwrap_err()).contains("UTF-8"));
    }

    #[test]
    fn fields_are_read_by_type_with_null_as_absent() {
        let b = body(r#"{"s":"x","n":5,"f":1.5,"big":18446744073709551615,"t":true,"z":null}"#).unwrap();
        assert_eq!(b.str("s").unwrap(), "x");
        assert_eq!(b.opt_str("z").unwrap(), None);
        assert_eq!(b.opt_str("absent").unwrap(), None);
        assert!(message(b.str("absent").unwrap_err()).contains("missing field `absent`"));
        assert!(message(b.str("z").unwrap_err()).contains("missing field `z`"));
        assert!(message(b.opt_str("n").unwrap_err()).contains("`n` must be a string"));
        assert_eq!(b.opt_int("n").unwrap(), Some(5));
        assert_eq!(b.opt_int("z").unwrap(), None);
        assert!(b.opt_int("f").is_err());
        assert!(b.opt_int("big").is_err());
        assert!(b.opt_int("s").is_err());
        assert!(b.flag("t").unwrap());
        assert!(!b.flag("absent").unwrap());
        assert!(b.flag("z").is_err());
        assert!(b.flag("n").is_err());
    }

    #[test]
    fn only_known_fields_pass_where_asked() {
        let b = body(r#"{"userId":"u","al":true}"#).unwrap();
        assert!(b.only(&["userId", "al"]).is_ok());
        let e = message(b.only(&["userId", "all"]).unwrap_err());
        assert!(e.contains("unknown field `al`"), "{e}");
    }
}

//! Bearer-token authentication: the pure verifier in `jwt`, plus the Worker-side key
//! store (memory + KV cache of the JWKS, honouring Cache-Control) and WebCrypto RSA.

pub mod b64;
pub mod jwt;

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use worker::js_sys::{Array, Object, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;

use crate::config::Config;
use crate::error::ApiError;
use crate::obj;
use crate::store::kv;
use crate::store::kv_store::KvStore;
use crate::util::with_timeout;
use jwt::{Identity, Jwk, Jwks, JwtError, KeyStore, Policy, RsaVerifier};

const JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
const JWKS_MAX_BYTES: usize = 64 * 1024;
const JWKS_DEFAULT_TTL: i64 = 3_600;
const JWKS_MIN_TTL: i64 = 60;
const JWKS_MAX_TTL: i64 = 86_400;
/// A token naming an unknown `kid` may force a JWKS refetch at most this often, so
/// random `kid`s cannot turn every request into an outbound fetch.
const FORCED_REFRESH_INTERVAL: i64 = 60;

/// `Authorization: Bearer <token>` → the token. Scheme is case-insensitive.
pub fn bearer_token(header: Option<&str>) -> Result<&str, ApiError> {
    let h = header.ok_or(ApiError::AuthRequired("missing bearer token"))?.trim();
    let (scheme, token) = h.split_once(' ').ok_or(ApiError::AuthRequired("missing bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::AuthRequired("missing bearer token"));
    }
    Ok(token.trim())
}

/// Cache lifetime from a `Cache-Control` header: `max-age` clamped to [60 s, 1 day];
/// 1 hour when absent; the minimum for `no-store`/`no-cache`.
pub fn cache_ttl(cache_control: Option<&str>) -> i64 {
    let Some(cc) = cache_control else {
        return JWKS_DEFAULT_TTL;
    };
    let mut ttl = JWKS_DEFAULT_TTL;
    for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return JWKS_MIN_TTL;
        }
        if let Some(v) = directive.strip_prefix("max-age=") {
            if let Ok(n) = v.trim_matches('"').parse::<i64>() {
                ttl = n;
            }
        }
    }
    ttl.clamp(JWKS_MIN_TTL, JWKS_MAX_TTL)
}

/// A fetched key set, kept in memory and in KV as `{"url","expiresAt","keys":{"keys":[…]}}`.
#[derive(Clone, Debug, PartialEq)]
struct CachedJwks {
    url: String,
    expires_at: i64,
    keys: Rc<Jwks>,
}

impl CachedJwks {
    fn from_json(text: &str) -> Result<CachedJwks, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let url = v.get("url").and_then(Value::as_str).ok_or("no string `url`")?;
        let expires_at = v.get("expiresAt").and_then(Value::as_i64).ok_or("no whole-number `expiresAt`")?;
        let keys = Jwks::from_json(v.get("keys").ok_or("no `keys`")?)?;
        Ok(CachedJwks { url: url.to_string(), expires_at, keys: Rc::new(keys) })
    }

    fn to_json(&self) -> String {
        crate::util::json_text(
            &obj! {"url": self.url.as_str(), "expiresAt": self.expires_at, "keys": self.keys.to_json()},
        )
    }
}

thread_local! {
    static MEMORY: RefCell<Option<CachedJwks>> = const { RefCell::new(None) };
    static LAST_FORCED_REFRESH: RefCell<i64> = const { RefCell::new(0) };
}

struct JwksStore<'a> {
    url: &'a str,
    kv: Option<KvStore>,
    now: i64,
    request_id: &'a str,
}

impl JwksStore<'_> {
    fn memory(&self) -> Option<CachedJwks> {
        MEMORY.with(|m| m.borrow().clone()).filter(|c| c.url == self.url)
    }

    async fn read_kv(&self) -> Option<CachedJwks> {
        let kv = self.kv.as_ref()?;
        let read = kv.get_text(&kv::jwks_cache_key(self.url)).await.map_err(|e| e.to_string());
        match read.and_then(|text| text.map(|t| CachedJwks::from_json(&t)).transpose()) {
            Ok(v) => v.filter(|c| c.url == self.url),
            Err(e) => {
                crate::log::warn(self.request_id, "jwks.kv_read_failed", obj! {"error": e.to_string()});
                None
            }
        }
    }

    async fn fetch(&self) -> Result<CachedJwks, String> {
        let send = async {
            let resp = crate::fetch::send("GET", self.url, &[], None).await.map_err(|e| format!("fetch: {e}"))?;
            if resp.status != 200 {
                return Err(format!("status {}", resp.status));
            }
            let ttl = cache_ttl(resp.cache_control.as_deref());
            if resp.body.len() > JWKS_MAX_BYTES {
                return Err("JWKS too large".into());
            }
            let keys = serde_json::from_str(&resp.body)
                .map_err(|e| e.to_string())
                .and_then(|v| Jwks::from_json(&v))
                .map_err(|e| format!("JWKS JSON: {e}"))?;
            Ok(CachedJwks { url: self.url.to_string(), expires_at: self.now + ttl, keys: Rc::new(keys) })
        };
        let fresh = with_timeout(send, JWKS_FETCH_TIMEOUT_MS).await.unwrap_or_else(|| Err("timeout".into()))?;
        MEMORY.with(|m| *m.borrow_mut() = Some(fresh.clone()));
        if let Some(kv) = &self.kv {
            let ttl = (fresh.expires_at - self.now).max(JWKS_MIN_TTL) as u64;
            // Bytes of serde_json's encoding: `put` of a value would link a second
            // serializer (serde-wasm-bindgen) just for this.
            let stored = match kv.put_bytes(&kv::jwks_cache_key(self.url), fresh.to_json().as_bytes()) {
                Ok(put) => put.expiration_ttl(ttl).execute().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                crate::log::warn(self.request_id, "jwks.kv_write_failed", obj! {"error": e});
            }
        }
        Ok(fresh)
    }
}

impl KeyStore for JwksStore<'_> {
    async fn keys(&self, refresh: bool) -> Result<Rc<Jwks>, JwtError> {
        let memory = self.memory();
        if refresh {
            let last = LAST_FORCED_REFRESH.with(|l| *l.borrow());
            if self.now - last < FORCED_REFRESH_INTERVAL {
                return memory.map(|c| c.keys).ok_or(JwtError::KeysUnavailable);
            }
            LAST_FORCED_REFRESH.with(|l| *l.borrow_mut() = self.now);
        } else {
            if let Some(c) = memory.as_ref().filter(|c| c.expires_at > self.now) {
                return Ok(c.keys.clone());
            }
            if let Some(c) = self.read_kv().await.filter(|c| c.expires_at > self.now) {
                MEMORY.with(|m| *m.borrow_mut() = Some(c.clone()));
                return Ok(c.keys);
            }
        }
        match self.fetch().await {
            Ok(c) => Ok(c.keys),
            Err(e) => {
                crate::log::error(self.request_id, "jwks.fetch_failed", obj! {"error": e});
                // Serve stale keys rather than lock everyone out while the IdP is down.
                memory.map(|c| c.keys).ok_or(JwtError::KeysUnavailable)
            }
        }
    }
}

struct WebCryptoRsa;

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) -> Result<(), JwtError> {
    Reflect::set(obj, &JsValue::from_str(key), &value.into()).map(|_| ()).map_err(|_| JwtError::Malformed)
}

impl RsaVerifier for WebCryptoRsa {
    async fn verify_rs256(&self, key: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
        let crypto = Reflect::get(&worker::js_sys::global(), &JsValue::from_str("crypto"))
            .map_err(|_| JwtError::KeysUnavailable)?;
        let subtle = crypto.unchecked_into::<worker::web_sys::Crypto>().subtle();
        let jwk = Object::new();
        set(&jwk, "kty", "RSA")?;
        set(&jwk, "n", key.n.as_deref().unwrap_or_default())?;
        set(&jwk, "e", key.e.as_deref().unwrap_or_default())?;
        set(&jwk, "alg", "RS256")?;
        set(&jwk, "ext", true)?;
        let algorithm = Object::new();
        set(&algorithm, "name", "RSASSA-PKCS1-v1_5")?;
        set(&algorithm, "hash", "SHA-256")?;
        let usages = Array::of1(&JsValue::from_str("verify"));
        let import =
            subtle.import_key_with_object("jwk", &jwk, &algorithm, false, &usages).map_err(|_| JwtError::UnknownKey)?;
        let crypto_key: worker::web_sys::CryptoKey =
            JsFuture::from(import).await.map_err(|_| JwtError::UnknownKey)?.unchecked_into();
        let verify = subtle
            .verify_with_object_and_u8_array_and_u8_array(&algorithm, &crypto_key, signature, message)
            .map_err(|_| JwtError::BadSignature)?;
        Ok(JsFuture::from(verify).await.map(|v| v.as_bool() == Some(true)).unwrap_or(false))
    }
}

/// Verifies the request's bearer token and returns who is calling.
pub async fn authenticate(
    authorization: Option<&str>,
    cfg: &Config,
    kv: Option<KvStore>,
    now: i64,
    request_id: &str,
) -> Result<Identity, ApiError> {
    let token = bearer_token(authorization)?;
    let policy = Policy {
        hs256_secret: cfg.jwt_secret.as_deref().map(str::as_bytes),
        rs256: cfg.jwks_url.is_some(),
        issuer: cfg.issuer.as_deref(),
        audience: cfg.audience.as_deref(),
        leeway: jwt::DEFAULT_LEEWAY_SECONDS,
    };
    if policy.hs256_secret.is_none() && !policy.rs256 {
        return Err(ApiError::server("no AUTH_JWT_SECRET and no AUTH_JWKS_URL: no token can be verified"));
    }
    let store = JwksStore { url: cfg.jwks_url.as_deref().unwrap_or_default(), kv, now, request_id };
    jwt::verify(token, &policy, &store, &WebCryptoRsa, now).await.map_err(|e| match e {
        JwtError::KeysUnavailable => ApiError::server("JWKS unavailable and nothing cached"),
        other => ApiError::AuthRequired(other.reason()),
    })
}

/// The scope a service token must carry.
pub const SERVICE_SCOPE: &str = "plangate:service";

/// Who calls an endpoint other backends use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A signed-in user (their own token).
    User(Identity),
    /// Another backend: an HS256 token signed with `SERVICE_JWT_SECRET` carrying the
    /// `plangate:service` scope (its `sub` names the service).
    Service(String),
    /// The operator (`ADMIN_TOKEN`).
    Admin,
}

/// Constant-time comparison of a presented token with `ADMIN_TOKEN` (both hashed
/// first, so neither length nor content leaks through timing).
pub fn admin_token_matches(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(presented.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies the bearer token as the admin's, a service's or a user's. A token signed
/// with the service secret but without the service scope is refused (403), never taken
/// for a user's.
pub async fn authenticate_caller(
    authorization: Option<&str>,
    cfg: &Config,
    kv: Option<KvStore>,
    now: i64,
    request_id: &str,
) -> Result<Caller, ApiError> {
    let token = bearer_token(authorization)?;
    if cfg.admin_token.as_deref().is_some_and(|expected| admin_token_matches(token, expected)) {
        return Ok(Caller::Admin);
    }
    if let Some(secret) = cfg.service_jwt_secret.as_deref() {
        let policy = Policy {
            hs256_secret: Some(secret.as_bytes()),
            rs256: false,
            issuer: None,
            audience: None,
            leeway: jwt::DEFAULT_LEEWAY_SECONDS,
        };
        let store = JwksStore { url: "", kv: None, now, request_id };
        match jwt::verify(token, &policy, &store, &WebCryptoRsa, now).await {
            Ok(id) if id.has_scope(SERVICE_SCOPE) => return Ok(Caller::Service(id.auth_id)),
            Ok(_) => return Err(ApiError::Forbidden("a service token needs the plangate:service scope")),
            // Not signed with the service secret: a user's token, perhaps.
            Err(JwtError::BadSignature | JwtError::UnsupportedAlgorithm) => {}
            Err(other) => return Err(ApiError::AuthRequired(other.reason())),
        }
    }
    authenticate(authorization, cfg, kv, now, request_id).await.map(Caller::User)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn admin_tokens_must_match_exactly() {
        assert!(admin_token_matches("secret-token", "secret-token"));
        assert!(!admin_token_matches("secret-token ", "secret-token"));
        assert!(!admin_token_matches("", "secret-token"));
        assert!(!admin_token_matches("secret-tokeN", "secret-token"));
    }

    #[test]
    fn the_bearer_scheme_is_required_and_case_insensitive() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        for bad in [None, Some(""), Some("Bearer"), Some("Bearer   "), Some("Basic abc"), Some("abc")] {
            assert_eq!(bearer_token(bad), Err(ApiError::AuthRequired("missing bearer token")), "{bad:?}");
        }
    }

    #[test]
    fn the_cached_key_set_round_trips_through_its_kv_json() {
        let key = Jwk {
            kty: "RSA".into(),
            kid: Some("k1".into()),
            alg: Some("RS256".into()),
            use_: None,
            n: Some("bm4".into()),
            e: Some("AQAB".into()),
        };
        let c = CachedJwks {
            url: "https://idp.example/jwks".into(),
            expires_at: 1_700_000_000,
            keys: Rc::new(Jwks { keys: vec![key] }),
        };
        let text = c.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["expiresAt"], 1_700_000_000);
        assert_eq!(v["keys"]["keys"][0], json!({"kty":"RSA","kid":"k1","alg":"RS256","n":"bm4","e":"AQAB"}));
        assert_eq!(CachedJwks::from_json(&text), Ok(c));
        for bad in [
            "",
            "[]",
            r#"{"url":"u","expiresAt":1}"#,
            r#"{"url":1,"expiresAt":1,"keys":{}}"#,
            r#"{"url":"u","expiresAt":1.5,"keys":{}}"#,
        ] {
            assert!(CachedJwks::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_control_sets_the_jwks_ttl_within_bounds() {
        assert_eq!(cache_ttl(None), 3600);
        assert_eq!(cache_ttl(Some("public, max-age=19845, must-revalidate, no-transform")), 19845);
        assert_eq!(cache_ttl(Some("max-age=5")), 60);
        assert_eq!(cache_ttl(Some("max-age=999999")), 86400);
        assert_eq!(cache_ttl(Some("no-store")), 60);
        assert_eq!(cache_ttl(Some("max-age=abc")), 3600);
    }
}

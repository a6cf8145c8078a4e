//! JWT verification, pure: no I/O and no clock. HS256 is checked here with `hmac`;
//! RS256 keys come from a [`KeyStore`] and signatures are checked by an
//! [`RsaVerifier`] (WebCrypto in the Worker, a native RSA crate in tests).
//!
//! Rules: the algorithm comes from an allow-list decided by configuration, never by
//! the token (`none` and every other `alg` are refused; an HS256 token is only ever
//! checked against `AUTH_JWT_SECRET`, so an RS256 public key can never act as an HMAC
//! secret); the signature is verified before any claim is trusted; `exp` is required;
//! `exp`/`nbf`/`iat` allow `leeway` seconds of clock skew; `iss`/`aud` are checked when
//! configured; `sub` is the auth id.

use std::rc::Rc;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::b64;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_SECONDS: i64 = 60;
/// Longer bearer tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Firebase and Auth0 ids are far shorter; this bounds what reaches D1.
const MAX_SUBJECT_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    UnsupportedAlgorithm,
    BadSignature,
    UnknownKey,
    KeysUnavailable,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingSubject,
}

impl JwtError {
    /// A reason safe to return to the client.
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::UnsupportedAlgorithm => "token algorithm not accepted",
            JwtError::BadSignature => "invalid token signature",
            JwtError::UnknownKey => "token signed by an unknown key",
            JwtError::KeysUnavailable => "signing keys unavailable",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::WrongIssuer => "token issuer not accepted",
            JwtError::WrongAudience => "token audience not accepted",
            JwtError::MissingSubject => "token has no subject",
        }
    }
}

/// What a verified token says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the identity provider's user id.
    pub auth_id: String,
    pub email: Option<String>,
    /// `email_verified`: the identity provider says the caller proved they own `email`.
    /// `false` when absent or not a JSON boolean (a string `"true"` is not `true`).
    pub email_verified: bool,
    /// `scope` (space-separated), e.g. `plangate:service` on a service token.
    pub scope: Option<String>,
}

impl Identity {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.as_deref().is_some_and(|s| s.split(' ').any(|x| x == wanted))
    }
}

/// Which tokens are accepted. Built from configuration once per request.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// `AUTH_JWT_SECRET`; `None` disables HS256.
    pub hs256_secret: Option<&'a [u8]>,
    /// `true` when `AUTH_JWKS_URL` is set.
    pub rs256: bool,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway: i64,
}

/// One JSON Web Key (only RSA keys are used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    pub kid: Option<String>,
    pub alg: Option<String>,
    /// `use`.
    pub use_: Option<String>,
    pub n: Option<String>,
    pub e: Option<String>,
}

/// An optional string member of a key: absent and `null` are `None`.
fn member(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("key member `{name}` is not a string")),
    }
}

impl Jwk {
    /// A key from its JSON: `kty` is required, the others are strings or absent/`null`,
    /// unknown members are ignored. Read by hand rather than derived: a `Deserialize`
    /// impl is a serde visitor in the Wasm per struct and per deserializer.
    pub fn from_json(v: &Value) -> Result<Jwk, String> {
        let obj = v.as_object().ok_or("a key is not an object")?;
        let kty = obj.get("kty").and_then(Value::as_str).ok_or("a key has no string `kty`")?;
        Ok(Jwk {
            kty: kty.to_string(),
            kid: member(obj, "kid")?,
            alg: member(obj, "alg")?,
            use_: member(obj, "use")?,
            n: member(obj, "n")?,
            e: member(obj, "e")?,
        })
    }

    /// The key's JSON; absent members are left out.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("kty".into(), Value::String(self.kty.clone()));
        for (name, v) in [("kid", &self.kid), ("alg", &self.alg), ("use", &self.use_), ("n", &self.n), ("e", &self.e)] {
            if let Some(s) = v {
                obj.insert(name.into(), Value::String(s.clone()));
            }
        }
        Value::Object(obj)
    }

    fn usable_for_rs256(&self) -> bool {
        self.kty == "RSA"
            && self.alg.as_deref().is_none_or(|a| a == "RS256")
            && self.use_.as_deref().is_none_or(|u| u == "sig")
            && self.n.is_some()
            && self.e.is_some()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// A key set from its JSON (`{"keys":[…]}`; no `keys` is an empty set).
    pub fn from_json(v: &Value) -> Result<Jwks, String> {
        let keys = match v.as_object().ok_or("the key set is not an object")?.get("keys") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                let mut keys = Vec::with_capacity(list.len());
                for k in list {
                    keys.push(Jwk::from_json(k)?);
                }
                keys
            }
            Some(_) => return Err("`keys` is not an array".into()),
        };
        Ok(Jwks { keys })
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("keys".into(), Value::Array(self.keys.iter().map(Jwk::to_json).collect()));
        Value::Object(obj)
    }

    /// The RS256 key for `kid`; a token without `kid` is accepted only when the set
    /// holds exactly one usable key.
    pub fn find_rs256(&self, kid: Option<&str>) -> Option<&Jwk> {
        let mut usable = self.keys.iter().filter(|k| k.usable_for_rs256());
        match kid {
            Some(kid) => usable.find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let first = usable.next()?;
                usable.next().is_none().then_some(first)
            }
        }
    }
}

/// Source of RS256 verification keys. `refresh` asks for keys newer than any cache
/// (used once when a token names an unknown `kid`, e.g. right after key rotation).
/// Shared (`Rc`): the isolate's cached set is handed out without copying it.
#[allow(async_fn_in_trait)]
pub trait KeyStore {
    async fn keys(&self, refresh: bool) -> Result<Rc<Jwks>, JwtError>;
}

/// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
#[allow(async_fn_in_trait)]
pub trait RsaVerifier {
    async fn verify_rs256(&self, key: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError>;
}

struct Parts<'t> {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
    signing_input: &'t str,
    signature: Vec<u8>,
}

fn decode_json_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64::decode(segment).ok_or(JwtError::Malformed)?;
    // `from_str`, never `from_slice`: each serde_json reader is a copy of the parser in
    // the Wasm, and plangate keeps one (see `routes::Ctx::json_body`).
    let text = std::str::from_utf8(&bytes).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed),
    }
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut it = token.split('.');
    let (h, p, s) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(JwtError::Malformed),
    };
    let header = decode_json_object(h)?;
    // A critical extension we do not understand must make the token invalid (RFC 7515 §4.1.11).
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedAlgorithm);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(JwtError::Malformed),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    let claims = decode_json_object(p)?;
    let signature = b64::decode(s).ok_or(JwtError::Malformed)?;
    Ok(Parts { alg, kid, claims, signing_input: &token[..h.len() + 1 + p.len()], signature })
}

/// HMAC-SHA256, compared in constant time by `verify_slice`.
pub fn hs256_valid(secret: &[u8], signing_input: &[u8], signature: &[u8]) -> bool {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input);
            mac.verify_slice(signature).is_ok()
        }
        Err(_) => false,
    }
}

/// Signs `claims` as an HS256 token; used by `make token` style tooling and tests.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    sign_hs256_json(secret, &crate::util::json_text(claims))
}

/// Signs a claims object already written as JSON (the dev token endpoint).
pub fn sign_hs256_json(secret: &[u8], claims: &str) -> String {
    // base64url of {"alg":"HS256","typ":"JWT"}
    let mut token = format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}", b64::encode(claims.as_bytes()));
    let tag = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(token.as_bytes());
            mac.finalize().into_bytes()
        }
        Err(_) => Default::default(),
    };
    token.push('.');
    token.push_str(&b64::encode(&tag));
    token
}

/// A NumericDate: a JSON number of seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| Some(f.floor() as i64))
                .ok_or(JwtError::Malformed),
        },
        Some(_) => Err(JwtError::Malformed),
    }
}

fn check_claims(claims: &Map<String, Value>, policy: &Policy<'_>, now: i64) -> Result<Identity, JwtError> {
    let leeway = policy.leeway.max(0);
    let exp = numeric_date(claims, "exp")?.ok_or(JwtError::Expired)?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if now.saturating_add(leeway) < iat {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(want) = policy.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(want) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(want) = policy.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(JwtError::MissingSubject),
        Some(_) => return Err(JwtError::Malformed),
    };
    if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES || sub.chars().any(char::is_control) {
        return Err(JwtError::MissingSubject);
    }
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty() && e.len() <= 320 && !e.chars().any(char::is_control))
        .map(str::to_string);
    let email_verified = claims.get("email_verified").and_then(Value::as_bool) == Some(true);
    let scope = claims.get("scope").and_then(Value::as_str).map(str::to_string);
    Ok(Identity { auth_id: sub.clone(), email, email_verified, scope })
}

/// Verifies `token` under `policy` at time `now` (unix seconds).
pub async fn verify<K: KeyStore, R: RsaVerifier>(
    token: &str,
    policy: &Policy<'_>,
    keys: &K,
    rsa: &R,
    now: i64,
) -> Result<Identity, JwtError> {
    let parts = split(token)?;
    match parts.alg.as_str() {
        "HS256" => {
            let secret = policy.hs256_secret.ok_or(JwtError::UnsupportedAlgorithm)?;
            if !hs256_valid(secret, parts.signing_input.as_bytes(), &parts.signature) {
                return Err(JwtError::BadSignature);
            }
        }
        "RS256" if policy.rs256 => {
            let kid = parts.kid.as_deref();
            let cached = keys.keys(false).await?;
            let key = match cached.find_rs256(kid) {
                Some(k) => k.clone(),
                None => keys.keys(true).await?.find_rs256(kid).cloned().ok_or(JwtError::UnknownKey)?,
            };
            if !rsa.verify_rs256(&key, parts.signing_input.as_bytes(), &parts.signature).await? {
                return Err(JwtError::BadSignature);
            }
        }
        _ => return Err(JwtError::UnsupportedAlgorithm),
    }
    check_claims(&parts.claims, policy, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
    use rsa::signature::{SignatureEncoding, Signer, Verifier};
    use rsa::traits::PublicKeyParts;
    use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
    use serde_json::json;
    use std::cell::Cell;

    const NOW: i64 = 1_760_000_000;
    const SECRET: &[u8] = b"test-secret-with-at-least-32-bytes!!";

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn key(name: &str) -> RsaPrivateKey {
        let pem = std::fs::read_to_string(format!("{}/tests/fixtures/{name}.pem", env!("CARGO_MANIFEST_DIR"))).unwrap();
        RsaPrivateKey::from_pkcs1_pem(&pem).unwrap()
    }

    fn jwk(k: &RsaPrivateKey, kid: &str) -> Jwk {
        let public = k.to_public_key();
        Jwk {
            kty: "RSA".into(),
            kid: Some(kid.into()),
            alg: Some("RS256".into()),
            use_: Some("sig".into()),
            n: Some(b64::encode(&public.n().to_bytes_be())),
            e: Some(b64::encode(&public.e().to_bytes_be())),
        }
    }

    #[test]
    fn a_key_set_is_read_from_json_with_optional_members_and_unknown_ones_ignored() {
        let set = Jwks::from_json(&json!({"keys": [
            {"kty": "RSA", "kid": "a", "use": "sig", "n": "bg", "e": "AQAB", "x5c": ["…"]},
            {"kty": "EC", "kid": null, "crv": "P-256"}
        ]}))
        .unwrap();
        assert_eq!(set.keys.len(), 2);
        assert_eq!(
            set.keys[0],
            Jwk {
                kty: "RSA".into(),
                kid: Some("a".into()),
                alg: None,
                use_: Some("sig".into()),
                n: Some("bg".into()),
                e: Some("AQAB".into())
            }
        );
        assert_eq!(set.keys[1].kid, None);
        assert_eq!(Jwks::from_json(&json!({})).unwrap(), Jwks::default());
        assert_eq!(Jwks::from_json(&set.to_json()).unwrap(), set);
        assert_eq!(set.keys[0].to_json(), json!({"kty":"RSA","kid":"a","use":"sig","n":"bg","e":"AQAB"}));
        for bad in [
            json!([]),
            json!({"keys": null}),
            json!({"keys": {}}),
            json!({"keys": [{"kid": "a"}]}),
            json!({"keys": [{"kty": "RSA", "n": 5}]}),
            json!({"keys": ["RSA"]}),
        ] {
            assert!(Jwks::from_json(&bad).is_err(), "{bad}");
        }
    }

    fn sign_rs256(k: &RsaPrivateKey, kid: &str, claims: &Value) -> String {
        let header = b64::encode(json!({"alg":"RS256","typ":"JWT","kid":kid}).to_string().as_bytes());
        let input = format!("{header}.{}", b64::encode(claims.to_string().as_bytes()));
        let sig: Signature = SigningKey::<sha2::Sha256>::new(k.clone()).sign(input.as_bytes());
        format!("{input}.{}", b64::encode(&sig.to_bytes()))
    }

    struct FixedKeys {
        cached: Jwks,
        fresh: Jwks,
        refreshes: Cell<u32>,
    }

    impl KeyStore for FixedKeys {
        async fn keys(&self, refresh: bool) -> Result<Rc<Jwks>, JwtError> {
            if refresh {
                self.refreshes.set(self.refreshes.get() + 1);
                Ok(Rc::new(self.fresh.clone()))
            } else {
                Ok(Rc::new(self.cached.clone()))
            }
        }
    }

    struct NativeRsa;

    impl RsaVerifier for NativeRsa {
        async fn verify_rs256(&self, key: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
            let n = b64::decode(key.n.as_deref().unwrap_or_default()).ok_or(JwtError::Malformed)?;
            let e = b64::decode(key.e.as_deref().unwrap_or_default()).ok_or(JwtError::Malformed)?;
            let public = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                .map_err(|_| JwtError::Malformed)?;
            let Ok(sig) = Signature::try_from(signature) else {
                return Ok(false);
            };
            Ok(VerifyingKey::<sha2::Sha256>::new(public).verify(message, &sig).is_ok())
        }
    }

    fn keys_with(jwks: Vec<Jwk>) -> FixedKeys {
        let set = Jwks { keys: jwks };
        FixedKeys { cached: set.clone(), fresh: set, refreshes: Cell::new(0) }
    }

    fn policy() -> Policy<'static> {
        Policy { hs256_secret: Some(SECRET), rs256: true, issuer: None, audience: None, leeway: DEFAULT_LEEWAY_SECONDS }
    }

    fn claims() -> Value {
        json!({"sub":"user-1","email":"a@example.com","iat":NOW - 10,"exp":NOW + 3600})
    }

    fn run(token: &str, policy: &Policy<'_>, keys: &FixedKeys) -> Result<Identity, JwtError> {
        block_on(verify(token, policy, keys, &NativeRsa, NOW))
    }

    fn run_default(token: &str) -> Result<Identity, JwtError> {
        run(token, &policy(), &keys_with(vec![jwk(&key("rsa_a"), "a")]))
    }

    #[test]
    fn a_valid_hs256_token_yields_the_subject_and_email() {
        let id = run_default(&sign_hs256(SECRET, &claims())).unwrap();
        assert_eq!(
            id,
            Identity {
                auth_id: "user-1".into(),
                email: Some("a@example.com".into()),
                email_verified: false,
                scope: None
            }
        );
    }

    #[test]
    fn email_verified_is_true_only_for_a_json_true() {
        let verified = |v: Option<Value>| {
            let mut c = claims();
            if let Some(v) = v {
                c["email_verified"] = v;
            }
            run_default(&sign_hs256(SECRET, &c)).unwrap().email_verified
        };
        assert!(verified(Some(json!(true))));
        for not in [None, Some(json!(false)), Some(json!("true")), Some(json!(1)), Some(Value::Null), Some(json!({}))] {
            assert!(!verified(not.clone()), "{not:?}");
        }
    }

    #[test]
    fn a_valid_rs256_token_is_verified_with_the_key_named_by_kid() {
        let k = key("rsa_a");
        let keys = keys_with(vec![jwk(&key("rsa_b"), "b"), jwk(&k, "a")]);
        let id = run(&sign_rs256(&k, "a", &claims()), &policy(), &keys).unwrap();
        assert_eq!(id.auth_id, "user-1");
        assert_eq!(keys.refreshes.get(), 0);
    }

    #[test]
    fn an_expired_token_is_refused_after_the_leeway_but_not_within_it() {
        let mut c = claims();
        c["exp"] = json!(NOW - 61);
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::Expired));
        c["exp"] = json!(NOW - 30);
        assert!(run_default(&sign_hs256(SECRET, &c)).is_ok());
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::Expired));
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_beyond_the_leeway() {
        let mut c = claims();
        c["nbf"] = json!(NOW + 120);
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::NotYetValid));
        c["nbf"] = json!(NOW + 30);
        assert!(run_default(&sign_hs256(SECRET, &c)).is_ok());
        let mut c = claims();
        c["iat"] = json!(NOW + 600);
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::NotYetValid));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let p = Policy { issuer: Some("https://securetoken.google.com/proj"), audience: Some("proj"), ..policy() };
        let mut c = claims();
        c["iss"] = json!("https://securetoken.google.com/proj");
        c["aud"] = json!("proj");
        assert!(run(&sign_hs256(SECRET, &c), &p, &keys_with(vec![])).is_ok());
        c["aud"] = json!(["other", "proj"]);
        assert!(run(&sign_hs256(SECRET, &c), &p, &keys_with(vec![])).is_ok());
        c["aud"] = json!("other");
        assert_eq!(run(&sign_hs256(SECRET, &c), &p, &keys_with(vec![])), Err(JwtError::WrongAudience));
        c["aud"] = json!("proj");
        c["iss"] = json!("https://evil.example");
        assert_eq!(run(&sign_hs256(SECRET, &c), &p, &keys_with(vec![])), Err(JwtError::WrongIssuer));
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(run(&sign_hs256(SECRET, &c), &p, &keys_with(vec![])), Err(JwtError::WrongIssuer));
    }

    #[test]
    fn a_tampered_payload_fails_the_signature_check() {
        let token = sign_hs256(SECRET, &claims());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = claims();
        forged["sub"] = json!("admin");
        parts[1] = b64::encode(forged.to_string().as_bytes());
        assert_eq!(run_default(&parts.join(".")), Err(JwtError::BadSignature));

        let k = key("rsa_a");
        let token = sign_rs256(&k, "a", &claims());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = b64::encode(forged.to_string().as_bytes());
        assert_eq!(run_default(&parts.join(".")), Err(JwtError::BadSignature));
    }

    #[test]
    fn a_tampered_signature_fails() {
        for token in [sign_hs256(SECRET, &claims()), sign_rs256(&key("rsa_a"), "a", &claims())] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut bytes = b64::decode(sig).unwrap();
            bytes[0] ^= 1;
            assert_eq!(run_default(&format!("{input}.{}", b64::encode(&bytes))), Err(JwtError::BadSignature));
        }
        assert_eq!(
            run_default(&sign_hs256(b"another-secret-another-secret-0000", &claims())),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused_with_or_without_a_signature() {
        let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64::encode(claims().to_string().as_bytes());
        assert_eq!(run_default(&format!("{header}.{payload}.")), Err(JwtError::UnsupportedAlgorithm));
        assert_eq!(run_default(&format!("{header}.{payload}.c2ln")), Err(JwtError::UnsupportedAlgorithm));
        for alg in ["None", "NONE", "HS512", "RS512", "ES256", "PS256"] {
            let header = b64::encode(json!({"alg":alg}).to_string().as_bytes());
            assert_eq!(run_default(&format!("{header}.{payload}.c2ln")), Err(JwtError::UnsupportedAlgorithm), "{alg}");
        }
    }

    #[test]
    fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
        // The classic confusion attack: take the published RS256 key and use it as an
        // HMAC secret. HS256 is only ever checked against AUTH_JWT_SECRET.
        let k = key("rsa_a");
        let j = jwk(&k, "a");
        let public_as_secret = j.to_json().to_string().into_bytes();
        let header = b64::encode(br#"{"alg":"HS256","kid":"a"}"#);
        let input = format!("{header}.{}", b64::encode(claims().to_string().as_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(&public_as_secret).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64::encode(&mac.finalize().into_bytes()));
        assert_eq!(run_default(&token), Err(JwtError::BadSignature));
        // …and with HS256 disabled it is refused on the algorithm alone.
        let rs_only = Policy { hs256_secret: None, ..policy() };
        assert_eq!(run(&token, &rs_only, &keys_with(vec![j])), Err(JwtError::UnsupportedAlgorithm));
    }

    #[test]
    fn an_rs256_token_is_refused_when_no_jwks_is_configured() {
        let p = Policy { rs256: false, ..policy() };
        let token = sign_rs256(&key("rsa_a"), "a", &claims());
        assert_eq!(run(&token, &p, &keys_with(vec![])), Err(JwtError::UnsupportedAlgorithm));
    }

    #[test]
    fn an_unknown_kid_refreshes_the_keys_once_then_fails() {
        let keys = keys_with(vec![jwk(&key("rsa_a"), "a")]);
        let token = sign_rs256(&key("rsa_b"), "b", &claims());
        assert_eq!(run(&token, &policy(), &keys), Err(JwtError::UnknownKey));
        assert_eq!(keys.refreshes.get(), 1);
    }

    #[test]
    fn a_rotated_key_is_found_by_the_refresh() {
        let keys = FixedKeys {
            cached: Jwks { keys: vec![jwk(&key("rsa_a"), "a")] },
            fresh: Jwks { keys: vec![jwk(&key("rsa_a"), "a"), jwk(&key("rsa_b"), "b")] },
            refreshes: Cell::new(0),
        };
        let token = sign_rs256(&key("rsa_b"), "b", &claims());
        assert!(run(&token, &policy(), &keys).is_ok());
        assert_eq!(keys.refreshes.get(), 1);
    }

    #[test]
    fn a_token_signed_by_another_key_under_a_known_kid_fails() {
        let token = sign_rs256(&key("rsa_b"), "a", &claims());
        assert_eq!(run_default(&token), Err(JwtError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let good = sign_hs256(SECRET, &claims());
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let cases = [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.###.$$$",
            long.as_str(),
            "eyJhbGciOiJIUzI1NiJ9.e30=.", // padded
        ];
        for t in cases {
            assert_eq!(run_default(t), Err(JwtError::Malformed), "{t:?}");
        }
        let (h, rest) = good.split_once('.').unwrap();
        let not_object = b64::encode(b"[1,2]");
        assert_eq!(run_default(&format!("{not_object}.{rest}")), Err(JwtError::Malformed));
        let _ = h;
        // A header with `crit` is refused.
        let crit = b64::encode(br#"{"alg":"HS256","crit":["exp"]}"#);
        assert_eq!(run_default(&format!("{crit}.{rest}")), Err(JwtError::UnsupportedAlgorithm));
    }

    #[test]
    fn claims_of_the_wrong_type_are_malformed_and_a_missing_subject_is_refused() {
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::Malformed));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::MissingSubject));
        c["sub"] = json!("");
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::MissingSubject));
        c["sub"] = json!(42);
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::Malformed));
        c["sub"] = json!("x".repeat(200));
        assert_eq!(run_default(&sign_hs256(SECRET, &c)), Err(JwtError::MissingSubject));
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let mut c = claims();
        c["exp"] = json!((NOW + 100) as f64 + 0.5);
        assert!(run_default(&sign_hs256(SECRET, &c)).is_ok());
    }

    #[test]
    fn a_jwks_without_kid_match_is_used_only_when_it_has_exactly_one_rsa_key() {
        let a = jwk(&key("rsa_a"), "a");
        let b = jwk(&key("rsa_b"), "b");
        assert!(Jwks { keys: vec![a.clone()] }.find_rs256(None).is_some());
        assert!(Jwks { keys: vec![a.clone(), b] }.find_rs256(None).is_none());
        let mut enc = a.clone();
        enc.use_ = Some("enc".into());
        assert!(Jwks { keys: vec![enc] }.find_rs256(Some("a")).is_none());
        let mut ec = a;
        ec.kty = "EC".into();
        assert!(Jwks { keys: vec![ec] }.find_rs256(Some("a")).is_none());
    }
}

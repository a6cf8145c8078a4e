//! Stripe's REST API by hand. Requests are data ([`StripeRequest`]) encoded with
//! Stripe's bracket syntax (`items[0][price]`, `metadata[user_id]`, `expand[]`) by pure
//! functions; [`StripeClient::send`] puts them on the wire with the runtime's `fetch`:
//! `Authorization: Bearer STRIPE_SECRET_KEY`, a pinned `Stripe-Version`, and an
//! `Idempotency-Key` on every POST. Network failures, 5xx and 429 are retried a bounded
//! number of times with the same idempotency key; every attempt has a timeout.

use serde_json::Value;

/// Stripe-Version sent when `STRIPE_API_VERSION` is not set. Responses are parsed
/// tolerantly (fields that moved between versions are looked for in both places).
pub const DEFAULT_API_VERSION: &str = "2024-06-20";
pub const IDEMPOTENCY_PREFIX: &str = "plangate:";
const MAX_ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// One Stripe API call, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeRequest {
    pub method: HttpMethod,
    /// Path below the API base, e.g. `/v1/subscriptions/sub_123`.
    pub path: String,
    /// Form parameters, already in bracket syntax, in order.
    pub params: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
}

/// Percent-encodes one form component (RFC 3986 unreserved characters stay as they are).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend(['%', HEX[usize::from(b >> 4)] as char, HEX[usize::from(b & 15)] as char]);
            }
        }
    }
    out
}

/// `application/x-www-form-urlencoded` body or query string.
pub fn encode_form(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in params {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode_component(k));
        out.push('=');
        out.push_str(&encode_component(v));
    }
    out
}

/// An idempotency key from stable ids, so the same logical action is the same Stripe
/// request however often it is retried, and plangate's own calls are recognisable.
pub fn idempotency_key(parts: &[&str]) -> String {
    format!("{IDEMPOTENCY_PREFIX}{}", parts.join(":"))
}

impl StripeRequest {
    pub fn get(path: impl Into<String>) -> Self {
        StripeRequest { method: HttpMethod::Get, path: path.into(), params: Vec::new(), idempotency_key: None }
    }

    pub fn post(path: impl Into<String>, idempotency_key: String) -> Self {
        StripeRequest {
            method: HttpMethod::Post,
            path: path.into(),
            params: Vec::new(),
            idempotency_key: Some(idempotency_key),
        }
    }

    /// A DELETE (e.g. cancelling a subscription now); Stripe ignores idempotency
    /// keys on DELETE, which is idempotent by itself.
    pub fn delete(path: impl Into<String>) -> Self {
        StripeRequest { method: HttpMethod::Delete, path: path.into(), params: Vec::new(), idempotency_key: None }
    }

    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((key.into(), value.into()));
        self
    }

    /// The full URL: GET/DELETE parameters go in the query string.
    pub fn url(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match self.method {
            HttpMethod::Post => format!("{base}{}", self.path),
            _ if self.params.is_empty() => format!("{base}{}", self.path),
            _ => format!("{base}{}?{}", self.path, encode_form(&self.params)),
        }
    }

    /// The form body (POST only).
    pub fn body(&self) -> Option<String> {
        (self.method == HttpMethod::Post).then(|| encode_form(&self.params))
    }

    /// Path segments must be ids, never user-controlled text: refuse anything else.
    pub fn is_safe_id(id: &str) -> bool {
        !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }
}

/// A Stripe failure, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeError {
    /// Could not reach Stripe, or no answer within the timeout.
    Unreachable(String),
    /// Stripe answered with an error object.
    Api { status: u16, kind: String, code: Option<String>, message: String, decline_code: Option<String> },
    /// A 2xx answer that is not the JSON we expect.
    Decode(String),
    /// Not configured (no `STRIPE_SECRET_KEY`).
    NotConfigured,
}

impl StripeError {
    /// Worth retrying with the same idempotency key.
    pub fn is_transient(&self) -> bool {
        match self {
            StripeError::Unreachable(_) => true,
            StripeError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl std::fmt::Display for StripeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StripeError::Unreachable(e) => write!(f, "stripe unreachable: {e}"),
            StripeError::Api { status, kind, code, message, .. } => {
                write!(f, "stripe {status} {kind}")?;
                if let Some(c) = code {
                    write!(f, " ({c})")?;
                }
                write!(f, ": {message}")
            }
            StripeError::Decode(e) => write!(f, "stripe answer not understood: {e}"),
            StripeError::NotConfigured => write!(f, "STRIPE_SECRET_KEY is not set"),
        }
    }
}

/// Interprets an HTTP answer from Stripe.
pub fn parse_response(status: u16, body: &str) -> Result<Value, StripeError> {
    let json: Option<Value> = serde_json::from_str(body).ok();
    if (200..300).contains(&status) {
        return json.ok_or_else(|| StripeError::Decode(format!("status {status}, body is not JSON")));
    }
    let err = json.as_ref().and_then(|j| j.get("error"));
    let field = |name: &str| err.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_string);
    Err(StripeError::Api {
        status,
        kind: field("type").unwrap_or_else(|| "api_error".into()),
        code: field("code"),
        message: field("message").unwrap_or_else(|| format!("HTTP {status}")),
        decline_code: field("decline_code"),
    })
}

/// Sends requests to `STRIPE_API_BASE`.
pub struct StripeClient {
    pub base: String,
    pub secret_key: Option<String>,
    pub api_version: String,
}

impl StripeClient {
    pub async fn send(&self, req: &StripeRequest) -> Result<Value, StripeError> {
        let key = self.secret_key.as_deref().ok_or(StripeError::NotConfigured)?;
        let mut last = StripeError::Unreachable("not attempted".into());
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                worker::Delay::from(std::time::Duration::from_millis(100 * (1 << attempt))).await;
            }
            match self.attempt(key, req).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn attempt(&self, key: &str, req: &StripeRequest) -> Result<Value, StripeError> {
        let auth = format!("Bearer {key}");
        let mut headers = vec![("Authorization", auth.as_str()), ("Stripe-Version", self.api_version.as_str())];
        if let Some(k) = &req.idempotency_key {
            headers.push(("Idempotency-Key", k.as_str()));
        }
        let body = req.body();
        if body.is_some() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        let call = async {
            let answer = crate::fetch::send(req.method.as_str(), &req.url(&self.base), &headers, body.as_deref())
                .await
                .map_err(StripeError::Unreachable)?;
            parse_response(answer.status, &answer.body)
        };
        crate::util::with_timeout(call, ATTEMPT_TIMEOUT_MS)
            .await
            .unwrap_or_else(|| Err(StripeError::Unreachable("timeout".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracket_syntax_is_percent_encoded_in_the_body() {
        let req = StripeRequest::post("/v1/checkout/sessions", idempotency_key(&["checkout", "usr_1", "pro"]))
            .param("mode", "subscription")
            .param("line_items[0][price]", "price_123")
            .param("line_items[0][quantity]", "1")
            .param("metadata[user_id]", "usr_1")
            .param("success_url", "https://app.example.com/ok?x=1&y=2")
            .param("expand[]", "subscription");
        assert_eq!(
            req.body().unwrap(),
            "mode=subscription&line_items%5B0%5D%5Bprice%5D=price_123&line_items%5B0%5D%5Bquantity%5D=1\
             &metadata%5Buser_id%5D=usr_1&success_url=https%3A%2F%2Fapp.example.com%2Fok%3Fx%3D1%26y%3D2\
             &expand%5B%5D=subscription"
        );
        assert_eq!(req.url("https://api.stripe.com/"), "https://api.stripe.com/v1/checkout/sessions");
        assert_eq!(req.idempotency_key.as_deref(), Some("plangate:checkout:usr_1:pro"));
    }

    #[test]
    fn get_parameters_go_in_the_query_string() {
        let req = StripeRequest::get("/v1/events")
            .param("delivery_success", "false")
            .param("created[gte]", "1700000000")
            .param("limit", "100");
        assert_eq!(
            req.url("http://127.0.0.1:9999"),
            "http://127.0.0.1:9999/v1/events?delivery_success=false&created%5Bgte%5D=1700000000&limit=100"
        );
        assert_eq!(req.body(), None);
        assert_eq!(StripeRequest::get("/v1/x").url("http://h"), "http://h/v1/x");
    }

    #[test]
    fn unicode_and_reserved_characters_are_encoded() {
        assert_eq!(encode_component("a b+c/ü"), "a%20b%2Bc%2F%C3%BC");
        assert_eq!(encode_component("-_.~"), "-_.~");
    }

    #[test]
    fn stripe_errors_are_parsed_into_a_typed_error() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        let e = parse_response(402, body).unwrap_err();
        assert_eq!(
            e,
            StripeError::Api {
                status: 402,
                kind: "card_error".into(),
                code: Some("card_declined".into()),
                message: "Your card has insufficient funds.".into(),
                decline_code: Some("insufficient_funds".into()),
            }
        );
        assert!(!e.is_transient());
        assert!(parse_response(500, "oops").unwrap_err().is_transient());
        assert!(parse_response(429, r#"{"error":{"type":"rate_limit_error"}}"#).unwrap_err().is_transient());
        assert!(matches!(parse_response(200, "not json"), Err(StripeError::Decode(_))));
        assert_eq!(parse_response(200, r#"{"id":"sub_1"}"#).unwrap()["id"], "sub_1");
        assert!(StripeError::Unreachable("timeout".into()).is_transient());
    }

    #[test]
    fn only_plain_ids_are_safe_in_paths() {
        assert!(StripeRequest::is_safe_id("sub_1NQx2aLkdIwHu7ix"));
        for bad in ["", "../v1/customers", "sub_1?expand=x", "sub 1", "sub%2F"] {
            assert!(!StripeRequest::is_safe_id(bad), "{bad}");
        }
    }
}

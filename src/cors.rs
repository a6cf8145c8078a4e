//! CORS decisions, pure. Only listed origins get `Access-Control-Allow-Origin`, always
//! echoed exactly (never `*`), with credentials allowed and `Vary: Origin`.

use crate::config::Config;

pub const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
pub const EXPOSE_HEADERS: &str = "X-Request-Id";
pub const MAX_AGE_SECONDS: &str = "600";

/// Headers to add to a normal (non-preflight) response.
pub fn response_headers(cfg: &Config, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Vary", "Origin".to_string())];
    if let Some(o) = origin.filter(|o| cfg.origin_allowed(o)) {
        h.push(("Access-Control-Allow-Origin", o.to_string()));
        h.push(("Access-Control-Allow-Credentials", "true".into()));
        h.push(("Access-Control-Expose-Headers", EXPOSE_HEADERS.into()));
    }
    h
}

/// Headers for a preflight (`OPTIONS` with `Access-Control-Request-Method`). A foreign
/// origin gets none of the allow headers, so the browser blocks the real request.
pub fn preflight_headers(cfg: &Config, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = response_headers(cfg, origin);
    if origin.is_some_and(|o| cfg.origin_allowed(o)) {
        h.push(("Access-Control-Allow-Methods", ALLOW_METHODS.into()));
        h.push(("Access-Control-Allow-Headers", ALLOW_HEADERS.into()));
        h.push(("Access-Control-Max-Age", MAX_AGE_SECONDS.into()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_lookup(|k| (k == "ALLOWED_ORIGINS").then(|| "https://app.example.com".to_string())).unwrap()
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_allowed_origin_is_echoed_with_credentials() {
        let h = preflight_headers(&cfg(), Some("https://app.example.com"));
        assert_eq!(get(&h, "Access-Control-Allow-Origin"), Some("https://app.example.com"));
        assert_eq!(get(&h, "Access-Control-Allow-Credentials"), Some("true"));
        assert!(get(&h, "Access-Control-Allow-Headers").unwrap().contains("Authorization"));
        assert_eq!(get(&h, "Vary"), Some("Origin"));
    }

    #[test]
    fn a_foreign_or_missing_origin_gets_no_allow_headers() {
        for origin in [Some("https://evil.example"), None, Some("null")] {
            for h in [preflight_headers(&cfg(), origin), response_headers(&cfg(), origin)] {
                assert!(h.iter().all(|(k, _)| !k.starts_with("Access-Control-Allow")), "{origin:?}");
            }
        }
    }

    #[test]
    fn the_wildcard_is_never_sent() {
        let h = response_headers(&cfg(), Some("https://app.example.com"));
        assert!(h.iter().all(|(_, v)| v != "*"));
    }
}

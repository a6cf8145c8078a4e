//! CORS decisions, pure. Only listed origins get `Access-Control-Allow-Origin`, always
//! echoed exactly (never `*`), with credentials allowed and `Vary: Origin`.

use crate::config::Config;

pub const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// The request headers a browser may send: the bearer token, and `Content-Type` because
/// JSON bodies are sent as `application/json` (not a CORS-safelisted type). Nothing else
/// is read from browsers (idempotency keys, where any, are in the JSON body;
/// `Stripe-Signature` comes from Stripe's servers, not from a page).
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type";
/// Response headers a page may read: the request id to quote in a report.
pub const EXPOSE_HEADERS: &str = "X-Request-Id";
/// The same with the D1 row counts, when `EXPOSE_D1_STATS` sends them.
pub const EXPOSE_HEADERS_WITH_D1_STATS: &str = "X-Request-Id, X-D1-Rows-Read, X-D1-Rows-Written, X-D1-Round-Trips";
pub const MAX_AGE_SECONDS: &str = "600";

/// Headers to add to a normal (non-preflight) response.
pub fn response_headers(cfg: &Config, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Vary", "Origin".to_string())];
    if let Some(o) = origin.filter(|o| cfg.origin_allowed(o)) {
        h.push(("Access-Control-Allow-Origin", o.to_string()));
        h.push(("Access-Control-Allow-Credentials", "true".into()));
        let expose = if cfg.expose_d1_stats { EXPOSE_HEADERS_WITH_D1_STATS } else { EXPOSE_HEADERS };
        h.push(("Access-Control-Expose-Headers", expose.into()));
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

    fn cfg_with_d1_stats() -> Config {
        Config { expose_d1_stats: true, ..cfg() }
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
    fn only_the_headers_the_api_reads_are_allowed() {
        let h = preflight_headers(&cfg(), Some("https://app.example.com"));
        assert_eq!(get(&h, "Access-Control-Allow-Headers"), Some("Authorization, Content-Type"));
        assert!(!get(&h, "Access-Control-Allow-Headers").unwrap().contains("Idempotency-Key"));
        assert_eq!(get(&h, "Access-Control-Allow-Methods"), Some("GET, POST, OPTIONS"));
    }

    #[test]
    fn the_request_id_is_exposed_and_the_d1_counts_only_when_sent() {
        let h = response_headers(&cfg(), Some("https://app.example.com"));
        assert_eq!(get(&h, "Access-Control-Expose-Headers"), Some("X-Request-Id"));
        let h = response_headers(&cfg_with_d1_stats(), Some("https://app.example.com"));
        assert_eq!(
            get(&h, "Access-Control-Expose-Headers"),
            Some("X-Request-Id, X-D1-Rows-Read, X-D1-Rows-Written, X-D1-Round-Trips")
        );
        assert_eq!(
            get(&response_headers(&cfg_with_d1_stats(), Some("https://evil.example")), "Access-Control-Expose-Headers"),
            None
        );
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

//! Configuration from `wrangler.toml` vars and secrets, parsed once per request from a
//! lookup function so the parsing is tested natively.

use crate::domain::plans::Catalog;
use crate::domain::subscription::PriceMap;
use crate::stripe::client::DEFAULT_API_VERSION;
use crate::stripe::signature::{parse_secrets, DEFAULT_TOLERANCE_SECONDS, MAX_SECRETS, MAX_TOLERANCE_SECONDS};
use crate::util::is_https_or_loopback_http;

pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";
/// HS256 keys shorter than the hash output are refused (RFC 7518 §3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `ENVIRONMENT`: `development`, `qa` or `production` (the default: unset fails
    /// closed); reported by `/health`.
    pub environment: String,
    /// `ALLOWED_ORIGINS`: exact browser origins allowed by CORS.
    pub allowed_origins: Vec<String>,
    /// `MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: u64,
    /// `AUTH_JWT_SECRET` (secret): enables HS256 tokens.
    pub jwt_secret: Option<String>,
    /// `AUTH_JWKS_URL`: enables RS256 tokens verified with keys from this URL.
    pub jwks_url: Option<String>,
    /// `AUTH_ISSUER` / `AUTH_AUDIENCE`: required `iss` / `aud` when set; both must be
    /// set with `AUTH_JWKS_URL` (a provider's key set, e.g. Firebase's, is shared by all
    /// of its projects: without them any project's token would pass).
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// `STRIPE_API_BASE`: where Stripe REST calls go (a local fake in tests).
    pub stripe_api_base: String,
    /// `STRIPE_API_VERSION`: the pinned `Stripe-Version` header.
    pub stripe_api_version: String,
    /// `STRIPE_SECRET_KEY` (secret).
    pub stripe_secret_key: Option<String>,
    /// `STRIPE_WEBHOOK_SECRET` (secret): one to `MAX_SECRETS` signing secrets,
    /// comma-separated.
    pub webhook_secrets: Vec<String>,
    /// `WEBHOOK_TOLERANCE_SECONDS`: oldest accepted signature timestamp, 1 s to 1 h;
    /// never disabled.
    pub webhook_tolerance: i64,
    /// `DUAL_WRITE_KV`: also write the legacy plan keys old readers use.
    pub dual_write_kv: bool,
    /// `MIGRATE_PLANS_IN_CRON`: each cron run backfills a slice of the legacy plan keys
    /// (as `POST /api/admin/migrations/plans` does) until the walk is done.
    pub migrate_plans_in_cron: bool,
    /// `EXPOSE_D1_STATS`: send `X-D1-Rows-Read` / `X-D1-Rows-Written` (development,
    /// `make bench`); off by default, so deployed Workers do not describe their internals.
    pub expose_d1_stats: bool,
    /// `ADMIN_TOKEN` (secret): bearer token of `/api/admin/*`.
    pub admin_token: Option<String>,
    /// `STRIPE_PRICE_<TIER>` for every paid tier of the catalog.
    pub prices: PriceMap,
    /// `STRIPE_PRICE_PACK_<ID>` for the credit packs of the catalog: (pack id, price).
    pub pack_prices: Vec<(&'static str, String)>,
    /// `SERVICE_JWT_SECRET` (secret): HS256 key of the service tokens other backends
    /// call `/api/entitlements/check` and `/api/usage/consume` with.
    pub service_jwt_secret: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A boolean var: `true`/`1` or `false`/`0`, `false` when unset; anything else is an error.
fn flag(name: &str, value: Option<String>) -> Result<bool, String> {
    match value.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(format!("{name} `{other}` must be true or false")),
    }
}

/// Normalises an origin for exact comparison: no trailing slash, lowercase scheme/host.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

thread_local! {
    /// The configuration of this isolate, once parsed successfully: vars and secrets
    /// cannot change inside an isolate (a deploy or secret change starts new ones).
    static PARSED: std::cell::RefCell<Option<std::rc::Rc<Config>>> = const { std::cell::RefCell::new(None) };
}

impl Config {
    /// The isolate's configuration: parsed on first use and kept. A failed parse is not
    /// kept, so every request (and cron run) meets it and logs it.
    pub fn cached(get: impl Fn(&str) -> Option<String>) -> Result<std::rc::Rc<Config>, String> {
        if let Some(c) = PARSED.with(|p| p.borrow().clone()) {
            return Ok(c);
        }
        let parsed = std::rc::Rc::new(Config::from_lookup(get)?);
        PARSED.with(|p| *p.borrow_mut() = Some(parsed.clone()));
        Ok(parsed)
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut allowed_origins = Vec::new();
        for entry in non_empty(get("ALLOWED_ORIGINS")).unwrap_or_default().split(',') {
            let o = normalize_origin(entry);
            if o.is_empty() {
                continue;
            }
            let is_origin = crate::util::parse_authority(&o)
                .is_some_and(|a| (a.scheme == "https" || a.scheme == "http") && a.rest.is_empty());
            if !is_origin {
                return Err(format!(
                    "ALLOWED_ORIGINS entry `{o}` is not an origin like https://app.example.com (`*` is not supported: credentials are allowed)"
                ));
            }
            allowed_origins.push(o);
        }
        let max_body_bytes = match non_empty(get("MAX_BODY_BYTES")) {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("MAX_BODY_BYTES `{s}` is not a positive whole number")),
            },
        };
        let jwt_secret = non_empty(get("AUTH_JWT_SECRET"));
        if let Some(s) = &jwt_secret {
            if s.len() < MIN_JWT_SECRET_BYTES {
                return Err(format!("AUTH_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"));
            }
        }
        let service_jwt_secret = non_empty(get("SERVICE_JWT_SECRET"));
        if let Some(s) = &service_jwt_secret {
            if s.len() < MIN_JWT_SECRET_BYTES {
                return Err(format!("SERVICE_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"));
            }
            if jwt_secret.as_deref() == Some(s.as_str()) {
                return Err(
                    "SERVICE_JWT_SECRET must differ from AUTH_JWT_SECRET: a user token would pass as a service".into(),
                );
            }
        }
        let pack_prices = Catalog::builtin()
            .packs()
            .iter()
            .filter_map(|p| Some((p.id, non_empty(get(&format!("STRIPE_PRICE_PACK_{}", p.id.to_ascii_uppercase())))?)))
            .collect();
        let jwks_url = non_empty(get("AUTH_JWKS_URL"));
        let (issuer, audience) = (non_empty(get("AUTH_ISSUER")), non_empty(get("AUTH_AUDIENCE")));
        if let Some(u) = &jwks_url {
            if !is_https_or_loopback_http(u) {
                return Err("AUTH_JWKS_URL must be an https:// URL (http only on localhost, 127.0.0.1 or [::1])".into());
            }
            let missing: Vec<&str> = [("AUTH_ISSUER", &issuer), ("AUTH_AUDIENCE", &audience)]
                .into_iter()
                .filter_map(|(name, v)| v.is_none().then_some(name))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} required with AUTH_JWKS_URL: a provider's key set is shared by all its projects, so without them any project's token would pass",
                    missing.join(" and ")
                ));
            }
        }
        let webhook_tolerance = match non_empty(get("WEBHOOK_TOLERANCE_SECONDS")) {
            None => DEFAULT_TOLERANCE_SECONDS,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=MAX_TOLERANCE_SECONDS).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "WEBHOOK_TOLERANCE_SECONDS `{s}` must be a whole number of seconds from 1 to {MAX_TOLERANCE_SECONDS}"
                    ))
                }
            },
        };
        let webhook_secrets = parse_secrets(get("STRIPE_WEBHOOK_SECRET").as_deref());
        if webhook_secrets.len() > MAX_SECRETS {
            return Err(format!(
                "STRIPE_WEBHOOK_SECRET holds {} secrets; at most {MAX_SECRETS} are supported (remove retired ones)",
                webhook_secrets.len()
            ));
        }
        let dual_write_kv = flag("DUAL_WRITE_KV", non_empty(get("DUAL_WRITE_KV")))?;
        let expose_d1_stats = flag("EXPOSE_D1_STATS", non_empty(get("EXPOSE_D1_STATS")))?;
        let migrate_plans_in_cron = flag("MIGRATE_PLANS_IN_CRON", non_empty(get("MIGRATE_PLANS_IN_CRON")))?;
        let stripe_api_base = non_empty(get("STRIPE_API_BASE")).unwrap_or_else(|| DEFAULT_STRIPE_API_BASE.into());
        if !is_https_or_loopback_http(&stripe_api_base) {
            return Err("STRIPE_API_BASE must be an https:// URL (http only on localhost, 127.0.0.1 or [::1])".into());
        }
        Ok(Config {
            stripe_api_base,
            stripe_api_version: non_empty(get("STRIPE_API_VERSION")).unwrap_or_else(|| DEFAULT_API_VERSION.into()),
            stripe_secret_key: non_empty(get("STRIPE_SECRET_KEY")),
            webhook_secrets,
            webhook_tolerance,
            dual_write_kv,
            migrate_plans_in_cron,
            expose_d1_stats,
            admin_token: non_empty(get("ADMIN_TOKEN")),
            prices: PriceMap::from_lookup(&Catalog::builtin(), &get),
            pack_prices,
            service_jwt_secret,
            // Absent means production: the development-only routes fail closed.
            environment: non_empty(get("ENVIRONMENT")).unwrap_or_else(|| "production".into()),
            allowed_origins,
            max_body_bytes,
            jwt_secret,
            jwks_url,
            issuer,
            audience,
        })
    }

    /// The Stripe price of a credit pack, when configured.
    pub fn pack_price(&self, pack: &str) -> Option<&str> {
        self.pack_prices.iter().find(|(p, _)| *p == pack).map(|(_, price)| price.as_str())
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let o = normalize_origin(origin);
        self.allowed_origins.contains(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_configuration_is_parsed_once_per_isolate_but_a_failure_is_never_kept() {
        std::thread::spawn(|| {
            let bad = Config::cached(|k| (k == "MAX_BODY_BYTES").then(|| "lots".to_string()));
            assert!(bad.is_err());
            let first = Config::cached(|k| (k == "MAX_BODY_BYTES").then(|| "2048".to_string())).unwrap();
            assert_eq!(first.max_body_bytes, 2048, "a failed parse was not kept");
            let again = Config::cached(|_| panic!("not parsed again")).unwrap();
            assert!(std::rc::Rc::ptr_eq(&first, &again));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.allowed_origins.is_empty());
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.environment, "production");
    }

    #[test]
    fn a_missing_environment_is_production_so_the_dev_token_endpoint_stays_off() {
        // `POST /api/dev/token` answers only when ENVIRONMENT is exactly `development`
        // (routes::dev): a deployment that forgot the var must not mint tokens.
        for env in [None, Some(""), Some("  ")] {
            let pairs: Vec<(&str, &str)> = env.map(|e| ("ENVIRONMENT", e)).into_iter().collect();
            assert_eq!(cfg(&pairs).unwrap().environment, "production", "{env:?}");
        }
        assert_eq!(cfg(&[("ENVIRONMENT", "development")]).unwrap().environment, "development");
        assert_eq!(cfg(&[("ENVIRONMENT", "qa")]).unwrap().environment, "qa");
    }

    #[test]
    fn origins_are_a_trimmed_comma_list_compared_exactly() {
        let c = cfg(&[("ALLOWED_ORIGINS", " https://app.example.com/, http://localhost:3000 ,")]).unwrap();
        assert_eq!(c.allowed_origins, ["https://app.example.com", "http://localhost:3000"]);
        assert!(c.origin_allowed("https://APP.example.com"));
        assert!(!c.origin_allowed("https://app.example.com.evil.io"));
        assert!(!c.origin_allowed("http://app.example.com"));
        assert!(!c.origin_allowed("null"));
    }

    #[test]
    fn a_wildcard_origin_or_bad_numbers_are_configuration_errors() {
        assert!(cfg(&[("ALLOWED_ORIGINS", "*")]).is_err());
        assert!(cfg(&[("MAX_BODY_BYTES", "1MB")]).is_err());
        assert!(cfg(&[("MAX_BODY_BYTES", "0")]).is_err());
        assert_eq!(cfg(&[("MAX_BODY_BYTES", "2048")]).unwrap().max_body_bytes, 2048);
    }

    #[test]
    fn pack_prices_and_the_service_secret_are_read_and_checked() {
        let c = cfg(&[("STRIPE_PRICE_PACK_SMALL", " price_small "), ("SERVICE_JWT_SECRET", &"s".repeat(32))]).unwrap();
        assert_eq!(c.pack_price("small"), Some("price_small"));
        assert_eq!(c.pack_price("large"), None, "no var: not for sale");
        assert!(c.service_jwt_secret.is_some());
        assert!(cfg(&[("SERVICE_JWT_SECRET", "short")]).unwrap_err().contains("SERVICE_JWT_SECRET"));
        let same = "x".repeat(40);
        let e = cfg(&[("SERVICE_JWT_SECRET", &same), ("AUTH_JWT_SECRET", &same)]).unwrap_err();
        assert!(e.contains("must differ"), "{e}");
    }

    #[test]
    fn a_short_jwt_secret_is_refused_and_an_empty_one_disables_hs256() {
        assert!(cfg(&[("AUTH_JWT_SECRET", "short")]).is_err());
        assert_eq!(cfg(&[("AUTH_JWT_SECRET", "  ")]).unwrap().jwt_secret, None);
        assert!(cfg(&[("AUTH_JWT_SECRET", &"x".repeat(32))]).unwrap().jwt_secret.is_some());
    }

    #[test]
    fn stripe_settings_have_safe_defaults_and_are_validated() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.stripe_api_base, "https://api.stripe.com");
        assert_eq!(c.webhook_tolerance, 300);
        assert!(c.webhook_secrets.is_empty());
        assert!(!c.dual_write_kv);
        let c = cfg(&[
            ("STRIPE_WEBHOOK_SECRET", "whsec_a, whsec_b"),
            ("DUAL_WRITE_KV", "true"),
            ("STRIPE_PRICE_PRO", "price_pro_1"),
            ("STRIPE_API_BASE", "http://127.0.0.1:4242"),
        ])
        .unwrap();
        assert_eq!(c.webhook_secrets, ["whsec_a", "whsec_b"]);
        assert!(c.dual_write_kv);
        assert_eq!(c.prices.tier_of("price_pro_1"), Catalog::builtin().parse("pro"));
        assert!(cfg(&[("WEBHOOK_TOLERANCE_SECONDS", "0")]).is_err());
        assert!(cfg(&[("WEBHOOK_TOLERANCE_SECONDS", "-5")]).is_err());
        assert!(cfg(&[("DUAL_WRITE_KV", "yes please")]).is_err());
        assert!(!cfg(&[]).unwrap().migrate_plans_in_cron);
        assert!(cfg(&[("MIGRATE_PLANS_IN_CRON", "1")]).unwrap().migrate_plans_in_cron);
        assert!(cfg(&[("MIGRATE_PLANS_IN_CRON", "on")]).is_err());
        assert!(cfg(&[("STRIPE_API_BASE", "http://stripe.evil.example")]).is_err());
    }

    /// A JWKS URL with the issuer and audience it requires.
    fn jwks(url: &str) -> Result<Config, String> {
        cfg(&[("AUTH_JWKS_URL", url), ("AUTH_ISSUER", "https://issuer.example"), ("AUTH_AUDIENCE", "proj")])
    }

    #[test]
    fn a_plain_http_jwks_url_is_only_allowed_on_loopback() {
        assert!(jwks("http://keys.example.com/jwks").is_err());
        assert!(jwks("http://127.0.0.1:9999/jwks").is_ok());
        assert!(jwks("https://www.googleapis.com/x").is_ok());
    }

    #[test]
    fn a_jwks_url_requires_an_issuer_and_an_audience() {
        let url = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";
        let c =
            cfg(&[("AUTH_JWKS_URL", url), ("AUTH_ISSUER", "https://securetoken.google.com/p"), ("AUTH_AUDIENCE", "p")])
                .unwrap();
        assert_eq!((c.issuer.as_deref(), c.audience.as_deref()), (Some("https://securetoken.google.com/p"), Some("p")));
        let e = cfg(&[("AUTH_JWKS_URL", url)]).unwrap_err();
        assert!(e.contains("AUTH_ISSUER and AUTH_AUDIENCE required"), "{e}");
        let e = cfg(&[("AUTH_JWKS_URL", url), ("AUTH_ISSUER", "https://securetoken.google.com/p")]).unwrap_err();
        assert!(e.starts_with("AUTH_AUDIENCE required"), "{e}");
        let e = cfg(&[("AUTH_JWKS_URL", url), ("AUTH_AUDIENCE", "p"), ("AUTH_ISSUER", "  ")]).unwrap_err();
        assert!(e.starts_with("AUTH_ISSUER required"), "{e}");
        // Without a JWKS URL (HS256 only) they stay optional.
        assert!(cfg(&[("AUTH_JWT_SECRET", &"x".repeat(32))]).is_ok());
        assert!(cfg(&[("AUTH_JWKS_URL", ""), ("AUTH_AUDIENCE", "p")]).is_ok());
    }

    #[test]
    fn webhook_secrets_beyond_the_supported_number_are_an_error_not_dropped() {
        let four = "whsec_1,whsec_2,whsec_3,whsec_4";
        assert_eq!(cfg(&[("STRIPE_WEBHOOK_SECRET", four)]).unwrap().webhook_secrets.len(), MAX_SECRETS);
        let e = cfg(&[("STRIPE_WEBHOOK_SECRET", &format!("{four},whsec_5"))]).unwrap_err();
        assert!(e.contains("5 secrets") && e.contains("at most 4"), "{e}");
        // Empty entries are not secrets and do not count.
        assert!(cfg(&[("STRIPE_WEBHOOK_SECRET", &format!("{four},, ,"))]).is_ok());
    }

    #[test]
    fn the_webhook_tolerance_must_be_from_one_second_to_one_hour() {
        for ok in ["1", "300", "3600"] {
            assert_eq!(cfg(&[("WEBHOOK_TOLERANCE_SECONDS", ok)]).unwrap().webhook_tolerance.to_string(), ok);
        }
        for bad in
            ["0", "-1", "3601", "86400", "9223372036854775807", "99999999999999999999", "-9223372036854775808", "5m"]
        {
            assert!(cfg(&[("WEBHOOK_TOLERANCE_SECONDS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn d1_stats_are_hidden_unless_enabled_and_the_flag_is_validated() {
        assert!(!cfg(&[]).unwrap().expose_d1_stats);
        assert!(!cfg(&[("EXPOSE_D1_STATS", "false")]).unwrap().expose_d1_stats);
        assert!(!cfg(&[("EXPOSE_D1_STATS", "")]).unwrap().expose_d1_stats);
        assert!(cfg(&[("EXPOSE_D1_STATS", "true")]).unwrap().expose_d1_stats);
        assert!(cfg(&[("EXPOSE_D1_STATS", " 1 ")]).unwrap().expose_d1_stats);
        let e = cfg(&[("EXPOSE_D1_STATS", "yes")]).unwrap_err();
        assert!(e.contains("EXPOSE_D1_STATS"), "{e}");
    }

    #[test]
    fn a_host_that_only_starts_like_loopback_is_refused_for_both_urls() {
        for evil in [
            "http://localhost.evil.test/jwks",
            "http://127.0.0.1.evil.test",
            "http://127.0.0.1@evil.test",
            "http://localhost:9999@evil.test/jwks",
            "http://localhost./jwks",
        ] {
            assert!(jwks(evil).is_err(), "AUTH_JWKS_URL {evil}");
            assert!(cfg(&[("STRIPE_API_BASE", evil)]).is_err(), "STRIPE_API_BASE {evil}");
        }
        for good in ["http://localhost:9999/jwks", "http://[::1]:9999", "HTTP://127.0.0.1:4242"] {
            assert!(jwks(good).is_ok(), "AUTH_JWKS_URL {good}");
            assert!(cfg(&[("STRIPE_API_BASE", good)]).is_ok(), "STRIPE_API_BASE {good}");
        }
    }

    #[test]
    fn an_allowed_origin_must_be_only_a_scheme_host_and_port() {
        assert!(cfg(&[("ALLOWED_ORIGINS", "http://[::1]:3000,https://app.example.com:8443")]).is_ok());
        for bad in
            ["app.example.com", "https://app.example.com/app", "https://u@app.example.com", "ftp://x.example", "null"]
        {
            assert!(cfg(&[("ALLOWED_ORIGINS", bad)]).is_err(), "{bad}");
        }
    }
}

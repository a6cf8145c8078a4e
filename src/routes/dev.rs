//! `POST /api/dev/token {userId}`: a development user's bearer token, so the account
//! page can be tried without an identity provider (`make dev`). Answers 404, as if the
//! route did not exist, unless `ENVIRONMENT` is exactly `development` and HS256 tokens
//! are enabled (`AUTH_JWT_SECRET`).

use super::{Ctx, Reply};
use crate::auth::jwt::sign_hs256_json;
use crate::domain::time::iso8601;
use crate::error::ApiError;

const LIFETIME_SECONDS: i64 = 3600;

/// The claims of `user`'s token, as JSON: `sub`, an `email` (`user@example.com` unless
/// the id is one), an hour of validity, and the issuer and audience tokens must carry
/// here. Written by hand (the id's characters need no escaping): cheaper in the Wasm
/// than building a `Value`.
fn claims(user: &str, now: i64, issuer: Option<&str>, audience: Option<&str>) -> Result<String, ApiError> {
    if user.is_empty() || user.len() > 64 || !user.bytes().all(|c| c.is_ascii_alphanumeric() || b"._@+-".contains(&c)) {
        return Err(ApiError::InvalidRequest("userId must be 1 to 64 letters, digits or ._@+-".into()));
    }
    let domain = if user.contains('@') { "" } else { "@example.com" };
    let mut c = format!(r#"{{"sub":"{user}","email":"{user}{domain}","iat":{now},"exp":{}"#, now + LIFETIME_SECONDS);
    for (name, value) in [("iss", issuer), ("aud", audience)] {
        if let Some(v) = value {
            c.push_str(&format!(r#","{name}":{}"#, crate::util::json_text(&v.into())));
        }
    }
    c.push('}');
    Ok(c)
}

pub fn token(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let secret = match (ctx.cfg.environment.as_str(), ctx.cfg.jwt_secret.as_deref()) {
        ("development", Some(secret)) => secret,
        _ => return Err(ApiError::NotFound),
    };
    let body = ctx.json_body()?;
    let user = body.str("userId")?;
    let c = claims(user, ctx.now, ctx.cfg.issuer.as_deref(), ctx.cfg.audience.as_deref())?;
    Ok(Reply::ok(crate::obj! {
        "ok": true,
        "token": sign_hs256_json(secret.as_bytes(), &c),
        "userId": user,
        "expiresAt": iso8601(ctx.now + LIFETIME_SECONDS),
    })
    .header("Cache-Control", "no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dev_token_names_the_user_lasts_an_hour_and_carries_the_required_issuer_and_audience() {
        let c: serde_json::Value =
            serde_json::from_str(&claims("alice", 1_000, Some("https://issuer.test/\"x"), Some("proj")).unwrap())
                .unwrap();
        assert_eq!(
            c,
            json!({"sub": "alice", "email": "alice@example.com", "iat": 1_000, "exp": 4_600,
                   "iss": "https://issuer.test/\"x", "aud": "proj"})
        );
        let c: serde_json::Value = serde_json::from_str(&claims("bob@corp.test", 0, None, None).unwrap()).unwrap();
        assert_eq!((c["email"].as_str(), c.get("iss"), c.get("aud")), (Some("bob@corp.test"), None, None));
    }

    #[test]
    fn a_dev_token_verifies_with_the_secret_that_signed_it() {
        let token = sign_hs256_json(b"0123456789abcdef0123456789abcdef", &claims("alice", 1_000, None, None).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = crate::auth::b64::decode(parts[2]).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(crate::auth::jwt::hs256_valid(b"0123456789abcdef0123456789abcdef", input.as_bytes(), &sig));
        assert_eq!(crate::auth::b64::decode(parts[0]).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn a_dev_user_id_is_short_and_plain() {
        for bad in ["", "a b", "<script>", "é", &"x".repeat(65)] {
            assert!(matches!(claims(bad, 0, None, None), Err(ApiError::InvalidRequest(_))), "{bad:?}");
        }
        assert!(claims(&"x".repeat(64), 0, None, None).is_ok());
    }
}

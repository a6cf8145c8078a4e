//! `POST /api/dev/token {userId}`: a development user's bearer token, so the account
//! page can be tried without an identity provider (`make dev`). Answers 404, as if the
//! route did not exist, unless `ENVIRONMENT` is exactly `development` and HS256 tokens
//! are enabled (`AUTH_JWT_SECRET`).

use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::auth::jwt::sign_hs256;
use crate::domain::time::iso8601;
use crate::error::ApiError;

const LIFETIME_SECONDS: i64 = 3600;

/// The claims of `user`'s token: `sub`, an `email` (`user@example.com` unless the id is
/// one), an hour of validity, and the issuer and audience tokens must carry here.
fn claims(user: &str, now: i64, issuer: Option<&str>, audience: Option<&str>) -> Result<Value, ApiError> {
    if user.is_empty() || user.len() > 64 || !user.bytes().all(|c| c.is_ascii_alphanumeric() || b"._@+-".contains(&c)) {
        return Err(ApiError::InvalidRequest("userId must be 1 to 64 letters, digits or ._@+-".into()));
    }
    let email = if user.contains('@') { user.to_string() } else { format!("{user}@example.com") };
    let mut c = json!({"sub": user, "email": email, "iat": now, "exp": now + LIFETIME_SECONDS});
    if let Some(iss) = issuer {
        c["iss"] = json!(iss);
    }
    if let Some(aud) = audience {
        c["aud"] = json!(aud);
    }
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
    Ok(Reply::ok(json!({
        "ok": true, "token": sign_hs256(secret.as_bytes(), &c), "userId": user,
        "expiresAt": iso8601(ctx.now + LIFETIME_SECONDS),
    }))
    .header("Cache-Control", "no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_token_names_the_user_lasts_an_hour_and_carries_the_required_issuer_and_audience() {
        let c = claims("alice", 1_000, Some("https://issuer.test"), Some("proj")).unwrap();
        assert_eq!(
            c,
            json!({"sub": "alice", "email": "alice@example.com", "iat": 1_000, "exp": 4_600,
                             "iss": "https://issuer.test", "aud": "proj"})
        );
        let c = claims("bob@corp.test", 0, None, None).unwrap();
        assert_eq!((c["email"].as_str(), c.get("iss"), c.get("aud")), (Some("bob@corp.test"), None, None));
    }

    #[test]
    fn a_dev_user_id_is_short_and_plain() {
        for bad in ["", "a b", "<script>", "é", &"x".repeat(65)] {
            assert!(matches!(claims(bad, 0, None, None), Err(ApiError::InvalidRequest(_))), "{bad:?}");
        }
        assert!(claims(&"x".repeat(64), 0, None, None).is_ok());
    }
}

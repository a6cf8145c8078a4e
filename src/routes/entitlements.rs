//! `GET /api/entitlements` (the user's own, cached up to a minute in `APP_KV`) and
//! `POST /api/entitlements/check` (other backends ask whether a use is allowed).

use super::{int_field, required_text, text_field, Ctx, Reply};
use crate::auth::Caller;
use crate::billing::entitlements::MAX_USES;
use crate::error::ApiError;
use crate::store::kv;

/// `GET /api/entitlements`: plan, features, this period's usage and the credit balance.
/// Served from the cache while it is fresh (no D1 read); computed from D1 otherwise and
/// cached after the response. Every change of what it shows deletes the cache entry.
pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let key = kv::entitlements_key(&who.auth_id);
    if let Some(store) = ctx.app_kv() {
        if let Ok(Some(text)) = store.get_text(&key).await {
            if let Some(body) = kv::fresh_entitlements(&text, ctx.now) {
                return Ok(Reply::ok(body)
                    .header("Cache-Control", "private, no-store")
                    .header("X-Entitlements-Cache", "hit"));
            }
        }
    }
    let billing = ctx.billing();
    let user = billing.user_for(&who).await?;
    let body = billing.entitlements(&user).await?;
    *ctx.cache_put.borrow_mut() =
        Some((key, kv::entitlements_value(&body, ctx.now), kv::ENTITLEMENTS_TTL_SECONDS as u64));
    Ok(Reply::ok(body).header("Cache-Control", "private, no-store").header("X-Entitlements-Cache", "miss"))
}

/// `POST /api/entitlements/check {authId | userId, feature, amount?}` (a service token
/// or the admin token): `{allowed, reason, remaining}`. Reads D1 only; counts nothing.
pub async fn check(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    match ctx.caller().await? {
        Caller::Service(_) | Caller::Admin => {}
        Caller::User(_) => return Err(ApiError::Forbidden("a service token is required")),
    }
    let body = ctx.json_object()?;
    let feature = required_text(&body, "feature", 64)?;
    let amount = int_field(&body, "amount", 1..=MAX_USES as i64, Some(1))? as u64;
    let billing = ctx.billing();
    let user = billing
        .named_user(text_field(&body, "userId", 64)?.as_deref(), text_field(&body, "authId", 128)?.as_deref())
        .await?;
    let mut answer = billing.check(&user, &feature, amount).await?;
    answer["userId"] = user.id.as_str().into();
    Ok(Reply::ok(answer).header("Cache-Control", "no-store"))
}

//! `POST /api/usage/consume` (count a use, atomically, once per idempotency key) and
//! `GET /api/usage` (this period's usage).

use super::{int_field, required_text, text_field, Ctx, Reply};
use crate::auth::Caller;
use crate::billing::entitlements::{MAX_KEY_LEN, MAX_USES};
use crate::error::ApiError;

/// `POST /api/usage/consume {feature, amount?, idempotencyKey}`: the user's own token,
/// or a service (or admin) token naming the user with `authId` or `userId`.
pub async fn consume(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.json_object()?;
    let feature = required_text(&body, "feature", 64)?;
    let amount = int_field(&body, "amount", 1..=MAX_USES as i64, Some(1))? as u64;
    let key = required_text(&body, "idempotencyKey", MAX_KEY_LEN)?;
    let (user_id, auth_id) = (text_field(&body, "userId", 64)?, text_field(&body, "authId", 128)?);
    let billing = ctx.billing();
    let user = match ctx.caller().await? {
        Caller::User(who) => {
            if user_id.is_some() || auth_id.is_some() {
                return Err(ApiError::Forbidden("a user consumes for themself; userId and authId are for services"));
            }
            billing.user_for(&who).await?
        }
        Caller::Service(_) | Caller::Admin => billing.named_user(user_id.as_deref(), auth_id.as_deref()).await?,
    };
    let answer = billing.consume(&user, &feature, amount, &key).await?;
    // The cached entitlements show usage and the balance: the next read must see this.
    ctx.forget_entitlements(&user.auth_id).await;
    Ok(Reply::ok(answer).header("Cache-Control", "no-store"))
}

/// `GET /api/usage`: this period's usage of every counted feature of the plan.
pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let billing = ctx.billing();
    let user = billing.user_for(&who).await?;
    Ok(Reply::ok(billing.usage(&user).await?).header("Cache-Control", "private, no-store"))
}

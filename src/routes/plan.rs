//! `GET /api/plan/me`: the caller's plan, read from D1 (creating the user on first
//! sight, from the legacy plan keys when it has any).

use super::{Ctx, Reply};
use crate::error::ApiError;

pub async fn me(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let user = ctx.billing().user_for(&who).await?;
    let body = user.plan_view().to_json();
    Ok(Reply::ok(body).header("Cache-Control", "private, no-store"))
}

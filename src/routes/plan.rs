//! `GET /api/plan/me`: the caller's plan, read from D1 (creating the user on first sight).

use super::{Ctx, Reply};
use crate::domain::plans::Catalog;
use crate::error::ApiError;
use crate::store::users;
use crate::util::random_hex;

pub async fn me(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let catalog = Catalog::builtin();
    let default_plan = catalog.id(catalog.default_tier());
    let user =
        users::get_or_create_by_auth_id(ctx.db, &who, default_plan, ctx.now, || Ok(format!("usr_{}", random_hex(12)?)))
            .await?;
    let body = user.plan_view().to_json();
    Ok(Reply::ok(body).header("Cache-Control", "private, no-store"))
}

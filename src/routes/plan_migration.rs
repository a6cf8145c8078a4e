//! `POST /api/admin/migrations/plans` (backfill the legacy plan keys of `APP_KV` into
//! D1, a page per call) and `GET /api/admin/migrations/plans/verify` (compare them).

use super::{admin, Ctx, Reply};
use crate::billing::legacy::{DEFAULT_PAGE, MAX_PAGE};
use crate::domain::legacy_plan::Position;
use crate::error::ApiError;

fn limit(n: Option<i64>) -> Result<usize, ApiError> {
    Ok(super::page_limit(n, DEFAULT_PAGE as i64, MAX_PAGE as i64)? as usize)
}

fn cursor(c: Option<&str>) -> Result<Option<Position>, ApiError> {
    c.filter(|c| !c.is_empty())
        .map(|c| {
            Position::parse(c)
                .ok_or_else(|| ApiError::InvalidRequest("cursor is not one this endpoint returned".into()))
        })
        .transpose()
}

/// `{dryRun?, limit?, cursor?}` → `{dryRun, seen, imported, skipped: {reason: n},
/// failed: {key: reason}, mismatches: {}, done, cursor}` (README, "Migrating legacy plans").
pub async fn backfill(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let body = ctx.json_body()?;
    body.only(&["dryRun", "limit", "cursor"])?;
    let (from, limit) = (cursor(body.opt_str("cursor")?)?, limit(body.opt_int("limit")?)?);
    let out = ctx.billing().migrate_plans(from, limit, body.flag("dryRun")?, false).await?;
    Ok(Reply::ok(out))
}

/// `?cursor=&limit=` → the same page shape (`dryRun` true, `imported` 0): `skipped:
/// {matching, changedSince}`, `failed: {key: reason}` (unreadable records),
/// `mismatches: {authId: what differs}`, `done`, `cursor`.
pub async fn verify(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let from = cursor(ctx.query("cursor").as_deref())?;
    let n = ctx.query("limit").map(|l| l.parse::<i64>().unwrap_or(0));
    Ok(Reply::ok(ctx.billing().migrate_plans(from, limit(n)?, false, true).await?))
}

//! `GET /health`: version, commit and whether D1 answers. Public.

use super::{Ctx, Reply};
use crate::error::ApiError;
use crate::obj;

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let d1 = match ctx.db.row("SELECT 1 AS ok", &[]).await {
        Ok(Some(row)) if row.int("ok") == Some(1) => "ok",
        Ok(_) => "error",
        Err(e) => {
            crate::log::error(ctx.request_id, "health.d1_failed", obj! {"error": e.to_string()});
            "error"
        }
    };
    let healthy = d1 == "ok";
    Ok(Reply::ok(obj! {
        "ok": healthy,
        "service": "plangate",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("PLANGATE_GIT_COMMIT"),
        "environment": ctx.cfg.environment.as_str(),
        "d1": d1,
    })
    .with_status(if healthy { 200 } else { 503 })
    .header("Cache-Control", "no-store"))
}

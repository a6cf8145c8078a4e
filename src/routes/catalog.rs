//! `GET /api/plans`: the public catalog. No auth.

use serde_json::json;

use super::Reply;
use crate::domain::plans::Catalog;
use crate::error::ApiError;

pub fn get() -> Result<Reply, ApiError> {
    Ok(Reply::ok(json!({"ok": true, "tiers": Catalog::builtin().public_view()}))
        .header("Cache-Control", "public, max-age=300"))
}

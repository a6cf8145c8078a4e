//! `GET /api/plans`: the public catalog. No auth.

use super::Reply;
use crate::domain::plans::Catalog;
use crate::error::ApiError;
use crate::obj;

pub fn get() -> Result<Reply, ApiError> {
    Ok(Reply::ok(obj! {"ok": true, "tiers": Catalog::builtin().public_view()})
        .header("Cache-Control", "public, max-age=300"))
}

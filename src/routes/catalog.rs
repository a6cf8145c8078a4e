//! `GET /api/plans`: the public catalog (tiers, credit packs, credit costs). No auth.

use serde_json::json;

use super::{Ctx, Reply};
use crate::domain::plans::Catalog;
use crate::error::ApiError;

pub fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let catalog = Catalog::builtin();
    let packs: Vec<_> = catalog
        .packs()
        .iter()
        .map(|p| json!({"id": p.id, "name": p.name, "credits": p.credits, "available": ctx.cfg.pack_price(p.id).is_some()}))
        .collect();
    let mut costs = serde_json::Map::new();
    for id in catalog.feature_ids() {
        if let Some(cost) = catalog.credit_cost(id) {
            costs.insert(id.to_string(), json!(cost));
        }
    }
    Ok(Reply::ok(json!({"ok": true, "tiers": catalog.public_view(), "packs": packs, "creditCosts": costs}))
        .header("Cache-Control", "public, max-age=300"))
}

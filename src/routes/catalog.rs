//! `GET /api/plans`: the public catalog (tiers, credit packs, credit costs). No auth.

use serde_json::{Map, Value};

use super::{Ctx, Reply};
use crate::domain::plans::Catalog;
use crate::error::ApiError;
use crate::obj;

pub fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let catalog = Catalog::builtin();
    let packs: Vec<Value> = catalog
        .packs()
        .iter()
        .map(|p| obj! {"id": p.id, "name": p.name, "credits": p.credits, "available": ctx.cfg.pack_price(p.id).is_some()})
        .collect();
    let mut costs = Map::new();
    for id in catalog.feature_ids() {
        if let Some(cost) = catalog.credit_cost(id) {
            costs.insert(id.to_string(), Value::from(cost));
        }
    }
    Ok(Reply::ok(
        obj! {"ok": true, "tiers": catalog.public_view(), "packs": packs, "creditCosts": Value::Object(costs)},
    )
    .header("Cache-Control", "public, max-age=300"))
}

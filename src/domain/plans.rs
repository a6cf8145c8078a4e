//! The plan catalog compiled from `plans.toml` by `build.rs`, and the tier order.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureDef {
    pub id: &'static str,
    /// Uses per billing period (see `domain::quota`); `None` is unlimited.
    pub monthly_limit: Option<u64>,
    /// Credits per use for a feature paid in credits (then it has no limit).
    pub credit_cost: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierDef {
    pub id: &'static str,
    pub name: &'static str,
    pub trial_days: u32,
    /// Credits granted at the start of each paid billing period.
    pub credits_per_period: u64,
    pub features: &'static [FeatureDef],
}

/// A credit pack sold one-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackDef {
    pub id: &'static str,
    pub name: &'static str,
    pub credits: u64,
}

include!(concat!(env!("OUT_DIR"), "/catalog.rs"));

/// A tier of the catalog. Ordered by rank: `free < essential < pro < premium`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tier(u8);

/// What the API reports as a user's plan: `trial` while trialing, else the tier id.
pub const TRIAL_PLAN: &str = "trial";

#[derive(Debug, Clone, Copy)]
pub struct Catalog {
    tiers: &'static [TierDef],
    packs: &'static [PackDef],
}

impl Catalog {
    /// The catalog built from `plans.toml`. build.rs guarantees it is valid and non-empty.
    pub const fn builtin() -> Self {
        Catalog { tiers: TIERS, packs: PACKS }
    }

    pub fn packs(&self) -> &'static [PackDef] {
        self.packs
    }

    pub fn pack(&self, id: &str) -> Option<&'static PackDef> {
        self.packs.iter().find(|p| p.id == id)
    }

    /// Every feature id of any tier, in catalog order (lowest tier's first), once.
    pub fn feature_ids(&self) -> Vec<&'static str> {
        let mut ids: Vec<&'static str> = Vec::new();
        for t in self.tiers {
            for f in t.features {
                if !ids.contains(&f.id) {
                    ids.push(f.id);
                }
            }
        }
        ids
    }

    /// The credit cost per use of a feature paid in credits (the same on every tier).
    pub fn credit_cost(&self, feature: &str) -> Option<u64> {
        self.tiers.iter().flat_map(|t| t.features).find(|f| f.id == feature).and_then(|f| f.credit_cost)
    }

    /// The feature as `tier` has it; `None` when the tier lacks it.
    pub fn feature(&self, tier: Tier, feature: &str) -> Option<&'static FeatureDef> {
        self.def(tier).features.iter().find(|f| f.id == feature)
    }

    pub fn tiers(&self) -> impl Iterator<Item = (Tier, &'static TierDef)> {
        self.tiers.iter().enumerate().map(|(i, d)| (Tier(i as u8), d))
    }

    /// The plan of a user nobody has billed: the first tier.
    pub fn default_tier(&self) -> Tier {
        Tier(0)
    }

    pub fn parse(&self, id: &str) -> Option<Tier> {
        self.tiers.iter().position(|t| t.id == id).map(|i| Tier(i as u8))
    }

    pub fn def(&self, tier: Tier) -> &'static TierDef {
        &self.tiers[tier.0 as usize]
    }

    pub fn id(&self, tier: Tier) -> &'static str {
        self.def(tier).id
    }

    /// Tiers that can be bought (all but the default one).
    pub fn paid_tiers(&self) -> impl Iterator<Item = (Tier, &'static TierDef)> {
        self.tiers().skip(1)
    }

    /// The public view served by `GET /api/plans`: per tier `{id, name, rank,
    /// trialDays, features: [id…], limits: [{feature, monthly}], creditsPerPeriod}`,
    /// `monthly: null` meaning unlimited (features paid in credits have no limit entry).
    pub fn public_view(&self) -> Value {
        let tiers = self.tiers().map(|(tier, d)| {
            crate::obj! {
                "id": d.id,
                "name": d.name,
                "rank": tier.0,
                "trialDays": d.trial_days,
                "features": d.features.iter().map(|f| f.id).collect::<Vec<_>>(),
                "limits": d
                    .features
                    .iter()
                    .filter(|f| f.credit_cost.is_none())
                    .map(|f| crate::obj! {"feature": f.id, "monthly": f.monthly_limit})
                    .collect::<Vec<_>>(),
                "creditsPerPeriod": d.credits_per_period,
            }
        });
        Value::Array(tiers.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_orders_free_below_essential_below_pro_below_premium() {
        let c = Catalog::builtin();
        let ids: Vec<_> = c.tiers().map(|(_, d)| d.id).collect();
        assert_eq!(ids, ["free", "essential", "pro", "premium"]);
        let t = |s| c.parse(s).unwrap();
        assert!(t("free") < t("essential"));
        assert!(t("essential") < t("pro"));
        assert!(t("pro") < t("premium"));
        assert_eq!(c.default_tier(), t("free"));
    }

    #[test]
    fn unknown_and_reserved_plan_names_do_not_parse() {
        let c = Catalog::builtin();
        assert_eq!(c.parse("trial"), None);
        assert_eq!(c.parse("Pro"), None);
        assert_eq!(c.parse(""), None);
        assert_eq!(c.paid_tiers().count(), 3);
    }

    #[test]
    fn the_public_view_lists_limits_with_null_for_unlimited() {
        let json = Catalog::builtin().public_view();
        assert_eq!(json[0]["id"], "free");
        assert_eq!(json[0]["rank"], 0);
        assert_eq!(json[1]["trialDays"], 3);
        let free_ats = json[0]["limits"].as_array().unwrap().iter().find(|l| l["feature"] == "ats_score");
        assert_eq!(free_ats.unwrap()["monthly"], 3);
        let premium_ats = json[3]["limits"].as_array().unwrap().iter().find(|l| l["feature"] == "ats_score");
        assert!(premium_ats.unwrap()["monthly"].is_null());
        assert_eq!(json[2]["creditsPerPeriod"], 20);
        assert_eq!(json[0]["creditsPerPeriod"], 0);
        let limited: Vec<&str> =
            json[0]["limits"].as_array().unwrap().iter().map(|l| l["feature"].as_str().unwrap()).collect();
        assert!(!limited.contains(&"job_analysis"), "a feature paid in credits has no limit entry");
    }

    #[test]
    fn packs_and_credit_costs_come_from_the_catalog() {
        let c = Catalog::builtin();
        assert_eq!(c.pack("small").map(|p| p.credits), Some(100));
        assert_eq!(c.pack("large").map(|p| p.credits), Some(500));
        assert!(c.pack("huge").is_none());
        assert_eq!(c.credit_cost("job_analysis"), Some(10));
        assert_eq!(c.credit_cost("ats_score"), None);
        let ids = c.feature_ids();
        assert_eq!(ids.iter().filter(|f| **f == "ats_score").count(), 1);
        assert!(ids.contains(&"linkedin_optimizer"));
        let free = c.parse("free").unwrap();
        assert!(c.feature(free, "cover_letter").is_none());
        assert_eq!(c.feature(free, "ats_score").and_then(|f| f.monthly_limit), Some(3));
    }
}

//! Fixtures shared by the domain's unit tests.

use super::plans::Catalog;
use super::subscription::{PriceMap, SubStatus, Subscription};

/// Prices as the `STRIPE_PRICE_<TIER>` vars would give them.
pub fn prices() -> PriceMap {
    PriceMap::from_lookup(&Catalog::builtin(), |k| match k {
        "STRIPE_PRICE_ESSENTIAL" => Some("price_ess".into()),
        "STRIPE_PRICE_PRO" => Some("price_pro".into()),
        "STRIPE_PRICE_PREMIUM" => Some(" price_prem ".into()),
        _ => None,
    })
}

/// A one-item subscription of customer `cus_1`, renewing at 2,000,000.
pub fn sub(id: &str, status: &str, price: &str) -> Subscription {
    Subscription {
        id: id.into(),
        customer: "cus_1".into(),
        status: SubStatus::parse(status),
        price_ids: vec![price.into()],
        item_ids: vec![format!("si_{id}")],
        schedule_id: None,
        current_period_start: Some(1_000),
        current_period_end: Some(2_000_000),
        cancel_at_period_end: false,
        cancel_at: None,
        trial_end: None,
        created: 1_000,
        user_id: None,
        next_phase: None,
        open_invoice_url: None,
    }
}

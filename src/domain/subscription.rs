//! Stripe subscription state → plangate billing state, pure.
//!
//! Rules: `trialing` keeps the tier and reports plan `trial`; `active` and `past_due`
//! keep the tier (past_due is visible in the status); `canceled`, `incomplete_expired`,
//! `unpaid`, `incomplete`, `paused` and unknown statuses grant nothing (the default
//! tier). A pending cancellation shows as `cancelAt` and as a scheduled move to the
//! default tier; a subscription schedule's next phase shows as `scheduledPlan`/`At`.

use super::plans::{Catalog, Tier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubStatus {
    Trialing,
    Active,
    PastDue,
    Canceled,
    Incomplete,
    IncompleteExpired,
    Unpaid,
    Paused,
    /// A status this version of plangate does not know; grants nothing.
    Other(String),
}

impl SubStatus {
    pub fn parse(s: &str) -> SubStatus {
        match s {
            "trialing" => SubStatus::Trialing,
            "active" => SubStatus::Active,
            "past_due" => SubStatus::PastDue,
            "canceled" => SubStatus::Canceled,
            "incomplete" => SubStatus::Incomplete,
            "incomplete_expired" => SubStatus::IncompleteExpired,
            "unpaid" => SubStatus::Unpaid,
            "paused" => SubStatus::Paused,
            other => SubStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            SubStatus::Trialing => "trialing",
            SubStatus::Active => "active",
            SubStatus::PastDue => "past_due",
            SubStatus::Canceled => "canceled",
            SubStatus::Incomplete => "incomplete",
            SubStatus::IncompleteExpired => "incomplete_expired",
            SubStatus::Unpaid => "unpaid",
            SubStatus::Paused => "paused",
            SubStatus::Other(s) => s,
        }
    }

    /// Grants its tier.
    pub fn is_live(&self) -> bool {
        matches!(self, SubStatus::Trialing | SubStatus::Active | SubStatus::PastDue)
    }

    /// Grants nothing now but can still become live when an invoice is paid or the
    /// subscription resumed: `incomplete` (first invoice payable for ~23 h), `paused`
    /// (trial ended without a payment method) and `unpaid` (open invoices). A second
    /// subscription must never be started beside one of these.
    pub fn may_become_live(&self) -> bool {
        matches!(self, SubStatus::Incomplete | SubStatus::Paused | SubStatus::Unpaid)
    }

    /// Preference among live subscriptions: active > trialing > past_due.
    fn preference(&self) -> u8 {
        match self {
            SubStatus::Active => 3,
            SubStatus::Trialing => 2,
            SubStatus::PastDue => 1,
            _ => 0,
        }
    }
}

/// The phase a subscription schedule moves to next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPhase {
    pub price_id: String,
    pub starts_at: i64,
}

/// What plangate needs of a Stripe subscription (parsed tolerantly in `stripe::events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub customer: String,
    pub status: SubStatus,
    pub price_ids: Vec<String>,
    /// The subscription item id of each entry of `price_ids` (same order).
    pub item_ids: Vec<String>,
    /// The id of the subscription schedule attached, if any.
    pub schedule_id: Option<String>,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<i64>,
    pub trial_end: Option<i64>,
    pub created: i64,
    /// `metadata.user_id`, set by plangate's own checkouts.
    pub user_id: Option<String>,
    pub next_phase: Option<NextPhase>,
    /// `latest_invoice.hosted_invoice_url` when the latest invoice is expanded and
    /// still open (where the customer pays an `incomplete` subscription).
    pub open_invoice_url: Option<String>,
}

impl Subscription {
    /// A cancellation is pending (at the period end or at a set date).
    pub fn cancel_pending(&self) -> bool {
        self.cancel_at_period_end || self.cancel_at.is_some()
    }
}

/// Stripe price id ↔ tier, from the `STRIPE_PRICE_<TIER>` vars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceMap {
    entries: Vec<(String, Tier)>,
}

impl PriceMap {
    /// `lookup("STRIPE_PRICE_PRO")` style: one var per paid tier of the catalog.
    pub fn from_lookup(catalog: &Catalog, get: impl Fn(&str) -> Option<String>) -> PriceMap {
        let entries = catalog
            .paid_tiers()
            .filter_map(|(tier, def)| {
                let price = get(&format!("STRIPE_PRICE_{}", def.id.to_ascii_uppercase()))?;
                let price = price.trim().to_string();
                (!price.is_empty()).then_some((price, tier))
            })
            .collect();
        PriceMap { entries }
    }

    pub fn tier_of(&self, price_id: &str) -> Option<Tier> {
        self.entries.iter().find(|(p, _)| p == price_id).map(|(_, t)| *t)
    }

    pub fn price_of(&self, tier: Tier) -> Option<&str> {
        self.entries.iter().find(|(_, t)| *t == tier).map(|(p, _)| p.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// A live subscription whose prices are none of the configured `STRIPE_PRICE_*`.
    UnknownPrice { subscription: String, prices: Vec<String> },
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::UnknownPrice { subscription, prices } => {
                write!(f, "subscription {subscription} has price(s) ")?;
                for (i, p) in prices.iter().enumerate() {
                    write!(f, "{}{p}", if i == 0 { "" } else { ", " })?;
                }
                write!(f, " that match no STRIPE_PRICE_<TIER> var")
            }
        }
    }
}

/// A user's billing columns, as they should be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingState {
    pub plan: String,
    pub subscription_id: Option<String>,
    pub status: Option<String>,
    pub trial_ends_at: Option<i64>,
    /// The current billing period (usage quotas count per period).
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub cancel_at: Option<i64>,
    pub scheduled_plan: Option<String>,
    pub scheduled_at: Option<i64>,
    /// The user has (had) a trial: trials are granted once per user.
    pub trial_used: bool,
}

/// The tier a subscription pays for: the highest tier among its items' prices.
pub fn tier_of(sub: &Subscription, prices: &PriceMap) -> Option<Tier> {
    sub.price_ids.iter().filter_map(|p| prices.tier_of(p)).max()
}

/// The billing state one subscription grants.
pub fn state_from(sub: &Subscription, catalog: &Catalog, prices: &PriceMap) -> Result<BillingState, MapError> {
    let trial_used = sub.trial_end.is_some() || sub.status == SubStatus::Trialing;
    if !sub.status.is_live() {
        return Ok(BillingState {
            plan: catalog.id(catalog.default_tier()).to_string(),
            subscription_id: Some(sub.id.clone()),
            status: Some(sub.status.as_str().to_string()),
            trial_ends_at: None,
            current_period_start: None,
            current_period_end: None,
            cancel_at: None,
            scheduled_plan: None,
            scheduled_at: None,
            trial_used,
        });
    }
    let tier = tier_of(sub, prices)
        .ok_or_else(|| MapError::UnknownPrice { subscription: sub.id.clone(), prices: sub.price_ids.clone() })?;
    let cancel_at = sub.cancel_at.or(if sub.cancel_at_period_end { sub.current_period_end } else { None });
    let (scheduled_plan, scheduled_at) = match (cancel_at, &sub.next_phase) {
        (Some(at), _) => (Some(catalog.id(catalog.default_tier()).to_string()), Some(at)),
        (None, Some(next)) => match prices.tier_of(&next.price_id) {
            Some(t) if t != tier => (Some(catalog.id(t).to_string()), Some(next.starts_at)),
            _ => (None, None),
        },
        (None, None) => (None, None),
    };
    Ok(BillingState {
        plan: catalog.id(tier).to_string(),
        subscription_id: Some(sub.id.clone()),
        status: Some(sub.status.as_str().to_string()),
        trial_ends_at: if sub.status == SubStatus::Trialing { sub.trial_end } else { None },
        current_period_start: sub.current_period_start.filter(|_| sub.current_period_end.is_some()),
        current_period_end: sub.current_period_end,
        cancel_at,
        scheduled_plan,
        scheduled_at,
        trial_used,
    })
}

/// The subscription that decides a customer's plan when there are several (legacy
/// duplicates): the best live one (active > trialing > past_due, then the higher
/// tier, then the newest); with none live, the newest one.
pub fn best<'a>(subs: &'a [Subscription], prices: &PriceMap) -> Option<&'a Subscription> {
    let live = subs
        .iter()
        .filter(|s| s.status.is_live())
        .max_by_key(|s| (s.status.preference(), tier_of(s, prices), s.created));
    live.or_else(|| subs.iter().max_by_key(|s| s.created))
}

/// The state of a user with no subscription at all.
pub fn no_subscription(catalog: &Catalog) -> BillingState {
    BillingState {
        plan: catalog.id(catalog.default_tier()).to_string(),
        subscription_id: None,
        status: None,
        trial_ends_at: None,
        current_period_start: None,
        current_period_end: None,
        cancel_at: None,
        scheduled_plan: None,
        scheduled_at: None,
        trial_used: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::{prices, sub};

    fn state(s: &Subscription) -> BillingState {
        state_from(s, &Catalog::builtin(), &prices()).unwrap()
    }

    #[test]
    fn an_unknown_price_names_the_subscription_and_every_price() {
        let e = |prices: &[&str]| {
            MapError::UnknownPrice {
                subscription: "sub_1".into(),
                prices: prices.iter().map(|p| p.to_string()).collect(),
            }
            .to_string()
        };
        assert_eq!(e(&["price_x"]), "subscription sub_1 has price(s) price_x that match no STRIPE_PRICE_<TIER> var");
        assert_eq!(e(&["a", "b"]), "subscription sub_1 has price(s) a, b that match no STRIPE_PRICE_<TIER> var");
    }

    #[test]
    fn the_price_map_comes_from_one_var_per_paid_tier() {
        let p = prices();
        let c = Catalog::builtin();
        assert_eq!(p.tier_of("price_prem"), c.parse("premium"));
        assert_eq!(p.price_of(c.parse("pro").unwrap()), Some("price_pro"));
        assert_eq!(p.tier_of("price_unknown"), None);
        assert_eq!(p.price_of(c.default_tier()), None);
    }

    #[test]
    fn active_and_past_due_keep_the_tier() {
        let s = state(&sub("sub_1", "active", "price_pro"));
        assert_eq!((s.plan.as_str(), s.status.as_deref()), ("pro", Some("active")));
        assert_eq!(s.current_period_end, Some(2_000_000));
        let s = state(&sub("sub_1", "past_due", "price_pro"));
        assert_eq!((s.plan.as_str(), s.status.as_deref()), ("pro", Some("past_due")));
    }

    #[test]
    fn trialing_keeps_the_tier_with_the_trial_end_and_marks_the_trial_used() {
        let mut t = sub("sub_1", "trialing", "price_ess");
        t.trial_end = Some(1_500_000);
        let s = state(&t);
        assert_eq!(
            (s.plan.as_str(), s.status.as_deref(), s.trial_ends_at),
            ("essential", Some("trialing"), Some(1_500_000))
        );
        assert!(s.trial_used);
        t.status = SubStatus::Active;
        let s = state(&t);
        assert_eq!(s.trial_ends_at, None);
        assert!(s.trial_used, "a trial once had stays used");
    }

    #[test]
    fn ended_or_unpaid_subscriptions_grant_the_free_tier() {
        for status in ["canceled", "incomplete_expired", "unpaid", "incomplete", "paused", "some_future_status"] {
            let s = state(&sub("sub_1", status, "price_pro"));
            assert_eq!(s.plan, "free", "{status}");
            assert_eq!(s.status.as_deref(), Some(status));
            assert_eq!((s.cancel_at, s.current_period_end, s.scheduled_plan.as_deref()), (None, None, None));
        }
    }

    #[test]
    fn an_unknown_price_on_a_live_subscription_is_an_error_not_a_downgrade() {
        let e = state_from(&sub("sub_9", "active", "price_other"), &Catalog::builtin(), &prices()).unwrap_err();
        assert!(e.to_string().contains("price_other"));
        // …but a canceled one with an old price simply grants nothing.
        assert_eq!(state(&sub("sub_9", "canceled", "price_other")).plan, "free");
    }

    #[test]
    fn cancel_at_period_end_shows_as_cancel_at_and_a_scheduled_free_plan() {
        let mut s = sub("sub_1", "active", "price_pro");
        s.cancel_at_period_end = true;
        let st = state(&s);
        assert_eq!(st.cancel_at, Some(2_000_000));
        assert_eq!((st.scheduled_plan.as_deref(), st.scheduled_at), (Some("free"), Some(2_000_000)));
        s.cancel_at_period_end = false;
        s.cancel_at = Some(1_800_000);
        assert_eq!(state(&s).cancel_at, Some(1_800_000));
    }

    #[test]
    fn a_schedule_phase_to_another_tier_is_the_scheduled_plan() {
        let mut s = sub("sub_1", "active", "price_pro");
        s.next_phase = Some(NextPhase { price_id: "price_ess".into(), starts_at: 2_000_000 });
        let st = state(&s);
        assert_eq!((st.scheduled_plan.as_deref(), st.scheduled_at), (Some("essential"), Some(2_000_000)));
        s.next_phase = Some(NextPhase { price_id: "price_pro".into(), starts_at: 2_000_000 });
        assert_eq!(state(&s).scheduled_plan, None, "a renewal on the same tier is not a change");
    }

    #[test]
    fn the_highest_tier_among_items_counts() {
        let mut s = sub("sub_1", "active", "price_ess");
        s.price_ids.push("price_prem".into());
        s.price_ids.push("price_addon_unknown".into());
        assert_eq!(state(&s).plan, "premium");
    }

    #[test]
    fn the_best_subscription_prefers_active_then_tier_then_newest() {
        let p = prices();
        let mut trial_prem = sub("sub_trial", "trialing", "price_prem");
        trial_prem.created = 5;
        let active_ess = sub("sub_active", "active", "price_ess");
        let canceled = sub("sub_old", "canceled", "price_prem");
        let subs = vec![trial_prem.clone(), active_ess.clone(), canceled.clone()];
        assert_eq!(best(&subs, &p).unwrap().id, "sub_active");
        let active_pro = sub("sub_pro", "active", "price_pro");
        let subs = vec![active_ess.clone(), active_pro, canceled.clone()];
        assert_eq!(best(&subs, &p).unwrap().id, "sub_pro");
        let past_due = sub("sub_pd", "past_due", "price_prem");
        assert_eq!(best(&[past_due, trial_prem.clone()], &p).unwrap().id, "sub_trial");
        let mut newer_canceled = canceled.clone();
        newer_canceled.id = "sub_newer".into();
        newer_canceled.created = 9_999;
        assert_eq!(best(&[canceled, newer_canceled], &p).unwrap().id, "sub_newer");
        assert!(best(&[], &p).is_none());
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_kept_verbatim() {
        for s in [
            "trialing",
            "active",
            "past_due",
            "canceled",
            "incomplete",
            "incomplete_expired",
            "unpaid",
            "paused",
            "x_new",
        ] {
            assert_eq!(SubStatus::parse(s).as_str(), s);
        }
        assert!(!SubStatus::parse("x_new").is_live());
    }
}

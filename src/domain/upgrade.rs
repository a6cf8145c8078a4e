//! The billing decisions, pure: what `/api/upgrade-plan`, `/api/downgrade-plan` and
//! `/api/stripe-checkout` should ask Stripe to do, given the customer's subscriptions.
//!
//! Upgrade decision tree (backend-driven-upgrade-flow):
//! - no live subscription → Checkout;
//! - trialing → end the trial now, changing the price in the same update if the
//!   target is higher (same tier: only end the trial; lower: not allowed);
//! - active / past_due → higher tier: in-place price change; same: `ALREADY_ON_PLAN`;
//!   lower: `DOWNGRADE_NOT_ALLOWED` (downgrades go through the downgrade endpoint).
//!
//! With several live subscriptions (legacy duplicates) the best one is acted on
//! (active > trialing > past_due, then higher tier) and the others are reported.
//!
//! A subscription that grants nothing yet but can still become live (`incomplete`,
//! `paused`, `unpaid`: see [`SubStatus::may_become_live`]) blocks every new Checkout:
//! paying its invoice would otherwise leave the customer with two subscriptions. The
//! user is sent to pay (or cancel) that one instead: [`Pending`].
//!
//! Cancelling acts on every subscription that bills the customer: the best live one
//! at the end of its period (the user paid for it), every other live or pending one
//! immediately (legacy duplicates grant nothing the best one does not, and each
//! further day is charged twice): [`decide_cancel`].

use super::plans::{Catalog, Tier};
use super::subscription::{best, tier_of, PriceMap, SubStatus, Subscription};

/// A subscription that may still become live: pay (or cancel) it before anything new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub subscription_id: String,
    pub status: String,
    /// Where its open invoice is paid, when Stripe gave one.
    pub invoice_url: Option<String>,
}

/// The newest subscription that may still become live.
pub fn pending(subs: &[Subscription]) -> Option<Pending> {
    subs.iter().filter(|s| s.status.may_become_live()).max_by_key(|s| s.created).map(|s| Pending {
        subscription_id: s.id.clone(),
        status: s.status.as_str().to_string(),
        invoice_url: s.open_invoice_url.clone(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// No live subscription: send the user to Stripe Checkout for `price`.
    Checkout {
        price: String,
    },
    /// No live subscription, but one that may become live: no Checkout beside it.
    PaymentPending(Pending),
    /// One update call on the existing subscription item.
    Update {
        subscription_id: String,
        item_id: String,
        price: String,
        /// The subscription is trialing: end the trial now (`trial_end=now`).
        end_trial: bool,
        /// A pending schedule (e.g. a scheduled downgrade) to release first.
        release_schedule: Option<String>,
    },
    AlreadyOnPlan,
    DowngradeNotAllowed {
        current: Tier,
    },
    SubscriptionItemMissing {
        subscription_id: String,
    },
    /// The target tier has no `STRIPE_PRICE_<TIER>`, or the live subscription's price
    /// is unknown: configuration, not the user's fault.
    NotConfigured(String),
}

/// The live subscriptions, the one to act on, and the ignored others (for the log).
fn live<'a>(subs: &'a [Subscription], prices: &PriceMap) -> (Option<&'a Subscription>, Vec<String>) {
    let live: Vec<Subscription> = subs.iter().filter(|s| s.status.is_live()).cloned().collect();
    let chosen_id = best(&live, prices).map(|s| s.id.clone());
    let chosen = chosen_id.as_ref().and_then(|id| subs.iter().find(|s| &s.id == id));
    let others = live.iter().filter(|s| Some(&s.id) != chosen_id.as_ref()).map(|s| s.id.clone()).collect();
    (chosen, others)
}

/// The item carrying the subscription's tier price.
fn tier_item(sub: &Subscription, prices: &PriceMap) -> Option<String> {
    sub.price_ids
        .iter()
        .zip(sub.item_ids.iter())
        .find(|(p, id)| prices.tier_of(p).is_some() && !id.is_empty())
        .map(|(_, id)| id.clone())
}

/// `target` must be a paid tier (the caller validates the name).
pub fn decide_upgrade(
    subs: &[Subscription],
    catalog: &Catalog,
    prices: &PriceMap,
    target: Tier,
) -> (Upgrade, Vec<String>) {
    let (chosen, others) = live(subs, prices);
    let Some(target_price) = prices.price_of(target).map(str::to_string) else {
        return (
            Upgrade::NotConfigured(format!("no STRIPE_PRICE_{}", catalog.id(target).to_ascii_uppercase())),
            others,
        );
    };
    let Some(sub) = chosen else {
        return match pending(subs) {
            Some(p) => (Upgrade::PaymentPending(p), others),
            None => (Upgrade::Checkout { price: target_price }, others),
        };
    };
    let Some(current) = tier_of(sub, prices) else {
        return (Upgrade::NotConfigured(format!("subscription {} has no known price", sub.id)), others);
    };
    let trialing = sub.status == SubStatus::Trialing;
    let decision = if target < current {
        Upgrade::DowngradeNotAllowed { current }
    } else if target == current && !trialing {
        Upgrade::AlreadyOnPlan
    } else {
        match tier_item(sub, prices) {
            None => Upgrade::SubscriptionItemMissing { subscription_id: sub.id.clone() },
            Some(item_id) => Upgrade::Update {
                subscription_id: sub.id.clone(),
                item_id,
                price: target_price,
                end_trial: trialing,
                release_schedule: sub.schedule_id.clone(),
            },
        }
    };
    (decision, others)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downgrade {
    /// To the free tier: cancel at the end of the period.
    CancelAtPeriodEnd {
        subscription_id: String,
    },
    /// To a lower paid tier at `at` (the end of the current period), via a schedule.
    Schedule {
        subscription_id: String,
        existing_schedule: Option<String>,
        current_price: String,
        target_price: String,
        at: i64,
    },
    NoSubscription,
    /// The target is not below the current tier.
    NotLower,
    NotConfigured(String),
}

pub fn decide_downgrade(subs: &[Subscription], catalog: &Catalog, prices: &PriceMap, target: Tier) -> Downgrade {
    let (chosen, _) = live(subs, prices);
    let Some(sub) = chosen else {
        return Downgrade::NoSubscription;
    };
    let Some(current) = tier_of(sub, prices) else {
        return Downgrade::NotConfigured(format!("subscription {} has no known price", sub.id));
    };
    if target >= current {
        return Downgrade::NotLower;
    }
    if target == catalog.default_tier() {
        return Downgrade::CancelAtPeriodEnd { subscription_id: sub.id.clone() };
    }
    let (Some(current_price), Some(target_price)) = (prices.price_of(current), prices.price_of(target)) else {
        return Downgrade::NotConfigured(format!("no STRIPE_PRICE_{}", catalog.id(target).to_ascii_uppercase()));
    };
    let Some(at) = sub.current_period_end else {
        return Downgrade::NotConfigured(format!("subscription {} has no current period end", sub.id));
    };
    Downgrade::Schedule {
        subscription_id: sub.id.clone(),
        existing_schedule: sub.schedule_id.clone(),
        current_price: current_price.to_string(),
        target_price: target_price.to_string(),
        at,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutGuard {
    /// Go ahead: checkout for `price`, with a trial of `trial_days` (0: none).
    Proceed {
        price: String,
        trial_days: u32,
    },
    /// A live subscription exists; `plan` is what it grants (`trial` while trialing).
    AlreadySubscribed {
        plan: String,
    },
    /// A subscription that may still become live exists: pay or cancel it first.
    PaymentPending(Pending),
    TrialAlreadyUsed,
    NotConfigured(String),
}

/// `/api/stripe-checkout`'s guard. `want_trial` is the `plan: "trial"` request: the
/// entry tier (the first tier with trial days) with its trial, once per user.
pub fn guard_checkout(
    subs: &[Subscription],
    catalog: &Catalog,
    prices: &PriceMap,
    target: Option<Tier>,
    want_trial: bool,
    trial_used: bool,
) -> CheckoutGuard {
    let (chosen, _) = live(subs, prices);
    if let Some(sub) = chosen {
        let plan = if sub.status == SubStatus::Trialing {
            super::plans::TRIAL_PLAN.to_string()
        } else {
            tier_of(sub, prices).map(|t| catalog.id(t).to_string()).unwrap_or_else(|| "unknown".into())
        };
        return CheckoutGuard::AlreadySubscribed { plan };
    }
    if let Some(p) = pending(subs) {
        return CheckoutGuard::PaymentPending(p);
    }
    let (tier, trial_days) = if want_trial {
        match catalog.paid_tiers().find(|(_, d)| d.trial_days > 0) {
            Some(_) if trial_used => return CheckoutGuard::TrialAlreadyUsed,
            Some((t, d)) => (t, d.trial_days),
            None => return CheckoutGuard::NotConfigured("no tier in plans.toml has trial days".into()),
        }
    } else {
        match target {
            Some(t) => (t, 0),
            None => return CheckoutGuard::NotConfigured("no target tier".into()),
        }
    };
    match prices.price_of(tier) {
        Some(p) => CheckoutGuard::Proceed { price: p.to_string(), trial_days },
        None => CheckoutGuard::NotConfigured(format!("no STRIPE_PRICE_{}", catalog.id(tier).to_ascii_uppercase())),
    }
}

/// What cancelling does: `at_period_end` is the best live subscription (kept until
/// the end of what was paid), `immediately` every other one that bills or may bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelPlan {
    pub at_period_end: Option<Subscription>,
    pub immediately: Vec<Subscription>,
}

/// `None` when nothing bills the customer or may bill them.
pub fn decide_cancel(subs: &[Subscription], prices: &PriceMap) -> Option<CancelPlan> {
    let (chosen, _) = live(subs, prices);
    let chosen = chosen.cloned();
    let immediately: Vec<Subscription> = subs
        .iter()
        .filter(|s| Some(&s.id) != chosen.as_ref().map(|c| &c.id))
        .filter(|s| s.status.is_live() || s.status.may_become_live())
        .cloned()
        .collect();
    (chosen.is_some() || !immediately.is_empty()).then_some(CancelPlan { at_period_end: chosen, immediately })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::{prices, sub};

    fn t(id: &str) -> Tier {
        Catalog::builtin().parse(id).unwrap()
    }

    fn up(subs: &[Subscription], target: &str) -> Upgrade {
        decide_upgrade(subs, &Catalog::builtin(), &prices(), t(target)).0
    }

    #[test]
    fn no_live_subscription_goes_to_checkout() {
        assert_eq!(up(&[], "essential"), Upgrade::Checkout { price: "price_ess".into() });
        let ended = [sub("sub_old", "canceled", "price_pro"), sub("sub_x", "incomplete_expired", "price_ess")];
        assert_eq!(up(&ended, "pro"), Upgrade::Checkout { price: "price_pro".into() });
    }

    #[test]
    fn an_active_subscription_is_upgraded_in_place() {
        let s = [sub("sub_1", "active", "price_ess")];
        assert_eq!(
            up(&s, "pro"),
            Upgrade::Update {
                subscription_id: "sub_1".into(),
                item_id: "si_sub_1".into(),
                price: "price_pro".into(),
                end_trial: false,
                release_schedule: None
            }
        );
        let past_due = [sub("sub_1", "past_due", "price_pro")];
        assert!(matches!(up(&past_due, "premium"), Upgrade::Update { end_trial: false, .. }));
    }

    #[test]
    fn same_tier_is_already_on_plan_and_lower_is_not_allowed() {
        let s = [sub("sub_1", "active", "price_pro")];
        assert_eq!(up(&s, "pro"), Upgrade::AlreadyOnPlan);
        assert_eq!(
            up(&[sub("sub_1", "active", "price_prem")], "essential"),
            Upgrade::DowngradeNotAllowed { current: t("premium") }
        );
    }

    #[test]
    fn a_trial_ends_now_with_or_without_a_price_change() {
        let s = [sub("sub_1", "trialing", "price_ess")];
        assert!(
            matches!(up(&s, "essential"), Upgrade::Update { ref price, end_trial: true, .. } if price == "price_ess")
        );
        assert!(
            matches!(up(&s, "premium"), Upgrade::Update { ref price, end_trial: true, .. } if price == "price_prem")
        );
        let s = [sub("sub_1", "trialing", "price_pro")];
        assert_eq!(up(&s, "essential"), Upgrade::DowngradeNotAllowed { current: t("pro") });
    }

    #[test]
    fn a_pending_schedule_is_released_by_an_upgrade() {
        let mut s = sub("sub_1", "active", "price_ess");
        s.schedule_id = Some("sub_sched_1".into());
        assert!(
            matches!(up(&[s], "pro"), Upgrade::Update { release_schedule: Some(ref id), .. } if id == "sub_sched_1")
        );
    }

    #[test]
    fn several_live_subscriptions_act_on_the_best_and_report_the_others() {
        let mut trial = sub("sub_trial", "trialing", "price_prem");
        trial.created = 9_999;
        let subs = [
            sub("sub_pd", "past_due", "price_prem"),
            sub("sub_ess", "active", "price_ess"),
            trial,
            sub("sub_old", "canceled", "price_prem"),
        ];
        let (decision, others) = decide_upgrade(&subs, &Catalog::builtin(), &prices(), t("pro"));
        assert!(
            matches!(decision, Upgrade::Update { ref subscription_id, .. } if subscription_id == "sub_ess"),
            "{decision:?}"
        );
        let mut others = others;
        others.sort();
        assert_eq!(others, ["sub_pd", "sub_trial"]);
        // Two active: the higher tier wins.
        let subs = [sub("sub_a", "active", "price_ess"), sub("sub_b", "active", "price_pro")];
        assert_eq!(up(&subs, "pro"), Upgrade::AlreadyOnPlan);
    }

    #[test]
    fn a_subscription_without_items_or_an_unpriced_target_is_reported() {
        let mut s = sub("sub_1", "active", "price_ess");
        s.item_ids = vec![String::new()];
        assert_eq!(up(&[s], "pro"), Upgrade::SubscriptionItemMissing { subscription_id: "sub_1".into() });
        let unpriced =
            PriceMap::from_lookup(&Catalog::builtin(), |k| (k == "STRIPE_PRICE_ESSENTIAL").then(|| "price_ess".into()));
        let (d, _) = decide_upgrade(&[], &Catalog::builtin(), &unpriced, t("premium"));
        assert!(matches!(d, Upgrade::NotConfigured(ref m) if m.contains("STRIPE_PRICE_PREMIUM")));
        assert!(matches!(up(&[sub("sub_1", "active", "price_legacy")], "pro"), Upgrade::NotConfigured(_)));
    }

    #[test]
    fn downgrades_are_scheduled_at_the_period_end_and_free_means_cancel() {
        let c = Catalog::builtin();
        let s = [sub("sub_1", "active", "price_pro")];
        assert_eq!(
            decide_downgrade(&s, &c, &prices(), t("essential")),
            Downgrade::Schedule {
                subscription_id: "sub_1".into(),
                existing_schedule: None,
                current_price: "price_pro".into(),
                target_price: "price_ess".into(),
                at: 2_000_000
            }
        );
        assert_eq!(
            decide_downgrade(&s, &c, &prices(), t("free")),
            Downgrade::CancelAtPeriodEnd { subscription_id: "sub_1".into() }
        );
        assert_eq!(decide_downgrade(&s, &c, &prices(), t("pro")), Downgrade::NotLower);
        assert_eq!(decide_downgrade(&s, &c, &prices(), t("premium")), Downgrade::NotLower);
        assert_eq!(decide_downgrade(&[], &c, &prices(), t("free")), Downgrade::NoSubscription);
    }

    #[test]
    fn the_checkout_guard_refuses_a_second_subscription_and_a_second_trial() {
        let c = Catalog::builtin();
        let p = prices();
        let active = [sub("sub_1", "active", "price_pro")];
        assert_eq!(
            guard_checkout(&active, &c, &p, Some(t("premium")), false, false),
            CheckoutGuard::AlreadySubscribed { plan: "pro".into() }
        );
        let trialing = [sub("sub_1", "trialing", "price_ess")];
        assert_eq!(
            guard_checkout(&trialing, &c, &p, None, true, false),
            CheckoutGuard::AlreadySubscribed { plan: "trial".into() }
        );
        assert_eq!(
            guard_checkout(&[], &c, &p, None, true, false),
            CheckoutGuard::Proceed { price: "price_ess".into(), trial_days: 3 }
        );
        assert_eq!(guard_checkout(&[], &c, &p, None, true, true), CheckoutGuard::TrialAlreadyUsed);
        assert_eq!(
            guard_checkout(&[], &c, &p, Some(t("pro")), false, true),
            CheckoutGuard::Proceed { price: "price_pro".into(), trial_days: 0 }
        );
        let ended = [sub("sub_1", "canceled", "price_pro")];
        assert!(matches!(guard_checkout(&ended, &c, &p, Some(t("pro")), false, false), CheckoutGuard::Proceed { .. }));
    }

    #[test]
    fn a_subscription_that_may_still_become_live_blocks_every_new_checkout() {
        let c = Catalog::builtin();
        let p = prices();
        for status in ["incomplete", "paused", "unpaid"] {
            let mut pending_sub = sub("sub_wait", status, "price_pro");
            pending_sub.open_invoice_url = Some("https://invoice.stripe.test/i/1".into());
            let subs = [sub("sub_old", "canceled", "price_ess"), pending_sub];
            let expected = Pending {
                subscription_id: "sub_wait".into(),
                status: status.into(),
                invoice_url: Some("https://invoice.stripe.test/i/1".into()),
            };
            assert_eq!(up(&subs, "premium"), Upgrade::PaymentPending(expected.clone()), "{status}");
            assert_eq!(
                guard_checkout(&subs, &c, &p, Some(t("pro")), false, false),
                CheckoutGuard::PaymentPending(expected),
                "{status}"
            );
        }
        // Expired or canceled ones block nothing; a live one wins over a pending one.
        let gone = [sub("sub_x", "incomplete_expired", "price_pro"), sub("sub_y", "canceled", "price_pro")];
        assert!(matches!(up(&gone, "pro"), Upgrade::Checkout { .. }));
        let both = [sub("sub_live", "active", "price_ess"), sub("sub_wait", "incomplete", "price_pro")];
        assert!(matches!(up(&both, "pro"), Upgrade::Update { .. }));
    }

    #[test]
    fn cancelling_keeps_the_best_until_the_period_end_and_ends_every_other_biller_now() {
        let p = prices();
        let best_one = sub("sub_best", "active", "price_prem");
        let dup = sub("sub_dup", "active", "price_ess");
        let trial = sub("sub_trial", "trialing", "price_pro");
        let pending_one = sub("sub_pending", "incomplete", "price_pro");
        let ended = sub("sub_ended", "canceled", "price_pro");
        let subs = [dup.clone(), ended, best_one.clone(), pending_one.clone(), trial.clone()];
        let plan = decide_cancel(&subs, &p).unwrap();
        assert_eq!(plan.at_period_end.map(|s| s.id).as_deref(), Some("sub_best"));
        let now: Vec<&str> = plan.immediately.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(now, ["sub_dup", "sub_pending", "sub_trial"]);
        assert_eq!(decide_cancel(&[sub("sub_e", "canceled", "price_pro")], &p), None);
        let only_pending = decide_cancel(&[pending_one], &p).unwrap();
        assert_eq!((only_pending.at_period_end, only_pending.immediately.len()), (None, 1));
    }
}

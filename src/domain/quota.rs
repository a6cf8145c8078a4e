//! Usage quotas and entitlements: the period usage counts in, what using a feature
//! takes from a user (a use of a limit, credits, or nothing because the plan lacks
//! it), and the entitlements a user is shown. Pure: the caller passes the user's row,
//! this period's usage and the credit balance.

use serde_json::{Map, Value};

use super::account::UserRecord;
use super::plans::{Catalog, Tier};
use super::time::{iso8601, month_of};

/// The span usage counts in: the user's Stripe billing period while subscribed, else
/// the UTC calendar month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `s<start>` for a billing period, `m<YYYY-MM>` for a month: the `usage.period` column.
    pub key: String,
    pub subscription: bool,
    pub start: i64,
    /// First second after the period: when its usage resets.
    pub end: i64,
}

impl Period {
    pub fn json(&self) -> Value {
        crate::obj! {
            "kind": if self.subscription { "subscription" } else { "month" },
            "start": iso8601(self.start),
            "end": iso8601(self.end),
        }
    }
}

/// The period `user`'s usage counts in at `now`. A stored billing period that has
/// ended (Stripe renewed it, the webhook is not here yet) is rolled forward by its own
/// length until the webhook brings Stripe's dates.
pub fn current_period(user: &UserRecord, now: i64) -> Period {
    if let (Some(start), Some(end), Some(_)) =
        (user.current_period_start, user.current_period_end, user.stripe_subscription_id.as_ref())
    {
        if end > start {
            let (start, end) = if now < end {
                (start, end)
            } else {
                let len = end - start;
                let k = (now - end) / len + 1;
                (start + k * len, end + k * len)
            };
            return Period { key: format!("s{start}"), subscription: true, start, end };
        }
    }
    let (y, m, start, end) = month_of(now);
    Period { key: format!("m{y:04}-{m:02}"), subscription: false, start, end }
}

/// The tier a user's row grants (the default tier for a plan the catalog no longer has).
pub fn tier_of(catalog: &Catalog, user: &UserRecord) -> Tier {
    catalog.parse(&user.plan).unwrap_or_else(|| catalog.default_tier())
}

/// What one use of a feature takes on a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Counted against a per-period limit (`None`: unlimited, still counted).
    Limit(Option<u64>),
    /// Paid in credits, this many per use.
    Credits(u64),
    /// The tier does not include the feature.
    NotInPlan,
}

/// `None` for a feature the catalog does not know.
pub fn gate(catalog: &Catalog, tier: Tier, feature: &str) -> Option<Gate> {
    if !catalog.feature_ids().contains(&feature) {
        return None;
    }
    Some(match catalog.feature(tier, feature) {
        None => Gate::NotInPlan,
        Some(f) => match f.credit_cost {
            Some(cost) => Gate::Credits(cost),
            None => Gate::Limit(f.monthly_limit),
        },
    })
}

/// The answer of a check: allowed, why not, and what is left (quota left for a limit
/// feature, `None` when unlimited; the credit balance for a credit feature).
pub fn check(gate: Gate, used: u64, balance: i64, amount: u64) -> (bool, &'static str, Option<i64>) {
    match gate {
        Gate::NotInPlan => (false, "feature_not_in_plan", Some(0)),
        Gate::Limit(None) => (true, "ok", None),
        Gate::Limit(Some(limit)) => {
            let left = limit.saturating_sub(used);
            if amount <= left {
                (true, "ok", Some(left as i64))
            } else {
                (false, "quota_exceeded", Some(left as i64))
            }
        }
        Gate::Credits(cost) => {
            let need = cost.saturating_mul(amount);
            if balance >= 0 && need <= balance as u64 {
                (true, "ok", Some(balance))
            } else {
                (false, "insufficient_credits", Some(balance))
            }
        }
    }
}

/// One feature's usage as the API shows it.
pub fn usage_entry(limit: Option<u64>, used: u64, period: &Period) -> Value {
    crate::obj! {
        "limit": limit,
        "used": used,
        "remaining": limit.map(|l| l.saturating_sub(used)),
        "resetsAt": iso8601(period.end),
    }
}

/// This period's usage of every counted feature of the tier (not those paid in credits).
pub fn usage_view(catalog: &Catalog, tier: Tier, period: &Period, used: &[(String, u64)]) -> Value {
    let mut usage = Map::new();
    for f in catalog.def(tier).features.iter().filter(|f| f.credit_cost.is_none()) {
        let n = used.iter().find(|(id, _)| id == f.id).map_or(0, |(_, n)| *n);
        usage.insert(f.id.to_string(), usage_entry(f.monthly_limit, n, period));
    }
    Value::Object(usage)
}

/// The body of `GET /api/entitlements`.
pub fn entitlements(
    catalog: &Catalog,
    user: &UserRecord,
    period: &Period,
    used: &[(String, u64)],
    balance: i64,
) -> Value {
    let tier = tier_of(catalog, user);
    let mut features = Map::new();
    for id in catalog.feature_ids() {
        features.insert(id.to_string(), Value::Bool(catalog.feature(tier, id).is_some()));
    }
    let trialing = user.subscription_status.as_deref() == Some("trialing");
    crate::obj! {
        "ok": true,
        "plan": user.reported_plan(),
        "tier": catalog.id(tier),
        "subscriptionStatus": user.subscription_status.clone(),
        "trial": crate::obj! {
            "active": trialing,
            "endsAt": user.trial_ends_at.filter(|_| trialing).map(iso8601),
            "used": user.trial_used != 0,
        },
        "features": features,
        "usage": usage_view(catalog, tier, period, used),
        "credits": crate::obj! {"balance": balance},
        "period": period.json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(plan: &str) -> UserRecord {
        UserRecord::from_row(json!({
            "id": "usr_1", "auth_id": "uid-1", "email": null, "plan": plan,
            "stripe_customer_id": null, "stripe_subscription_id": null, "subscription_status": null,
            "trial_ends_at": null, "current_period_end": null, "cancel_at": null,
            "scheduled_plan": null, "scheduled_at": null,
            "plan_updated_at": 1, "created_at": 1, "updated_at": 1
        }))
        .unwrap()
    }

    fn subscribed(plan: &str, start: i64, end: i64) -> UserRecord {
        let mut u = user(plan);
        u.stripe_subscription_id = Some("sub_1".into());
        u.subscription_status = Some("active".into());
        u.current_period_start = Some(start);
        u.current_period_end = Some(end);
        u
    }

    const NOV_14_2023: i64 = 1_700_000_000;

    #[test]
    fn without_a_subscription_usage_counts_per_utc_calendar_month() {
        let p = current_period(&user("free"), NOV_14_2023);
        assert_eq!(p.key, "m2023-11");
        assert!(!p.subscription);
        assert_eq!(
            (iso8601(p.start).as_str(), iso8601(p.end).as_str()),
            ("2023-11-01T00:00:00Z", "2023-12-01T00:00:00Z")
        );
        // Rollover: the first second of December is a new period.
        assert_eq!(current_period(&user("free"), p.end - 1).key, "m2023-11");
        assert_eq!(current_period(&user("free"), p.end).key, "m2023-12");
    }

    #[test]
    fn a_subscribed_user_counts_in_the_stripe_billing_period() {
        let u = subscribed("pro", NOV_14_2023 - 86_400, NOV_14_2023 + 29 * 86_400);
        let p = current_period(&u, NOV_14_2023);
        assert_eq!((p.key.as_str(), p.subscription), ("s1699913600", true));
        assert_eq!((p.start, p.end), (NOV_14_2023 - 86_400, NOV_14_2023 + 29 * 86_400));
        // Stripe renewed but its webhook has not arrived: the next period of the same length.
        let later = current_period(&u, p.end + 5);
        assert_eq!((later.start, later.end), (p.end, p.end + 30 * 86_400));
        let much_later = current_period(&u, p.end + 65 * 86_400);
        assert_eq!(much_later.start, p.end + 60 * 86_400);
        // A broken period (end not after start) or no subscription: the calendar month.
        let broken = subscribed("pro", NOV_14_2023, NOV_14_2023);
        assert_eq!(current_period(&broken, NOV_14_2023).key, "m2023-11");
        let mut ended = u.clone();
        ended.stripe_subscription_id = None;
        assert_eq!(current_period(&ended, NOV_14_2023).key, "m2023-11");
    }

    #[test]
    fn a_feature_is_limited_paid_in_credits_missing_or_unknown() {
        let c = Catalog::builtin();
        let t = |s| c.parse(s).unwrap();
        assert_eq!(gate(&c, t("free"), "ats_score"), Some(Gate::Limit(Some(3))));
        assert_eq!(gate(&c, t("premium"), "ats_score"), Some(Gate::Limit(None)));
        assert_eq!(gate(&c, t("free"), "cover_letter"), Some(Gate::NotInPlan));
        assert_eq!(gate(&c, t("free"), "job_analysis"), Some(Gate::Credits(10)));
        assert_eq!(gate(&c, t("pro"), "teleport"), None);
    }

    #[test]
    fn a_check_allows_up_to_the_limit_and_the_balance() {
        assert_eq!(check(Gate::Limit(Some(10)), 9, 0, 1), (true, "ok", Some(1)));
        assert_eq!(check(Gate::Limit(Some(10)), 10, 0, 1), (false, "quota_exceeded", Some(0)));
        assert_eq!(check(Gate::Limit(Some(10)), 8, 0, 3), (false, "quota_exceeded", Some(2)));
        assert_eq!(check(Gate::Limit(Some(3)), 7, 0, 1), (false, "quota_exceeded", Some(0)), "over after a downgrade");
        assert_eq!(check(Gate::Limit(None), 1_000, 0, 1), (true, "ok", None));
        assert_eq!(check(Gate::Credits(10), 0, 20, 2), (true, "ok", Some(20)));
        assert_eq!(check(Gate::Credits(10), 0, 19, 2), (false, "insufficient_credits", Some(19)));
        assert_eq!(check(Gate::NotInPlan, 0, 100, 1), (false, "feature_not_in_plan", Some(0)));
    }

    #[test]
    fn entitlements_show_features_usage_trial_and_credits() {
        let c = Catalog::builtin();
        let mut u = subscribed("essential", NOV_14_2023 - 86_400, NOV_14_2023 + 2 * 86_400);
        u.subscription_status = Some("trialing".into());
        u.trial_ends_at = Some(NOV_14_2023 + 2 * 86_400);
        u.trial_used = 1;
        let p = current_period(&u, NOV_14_2023);
        let e = entitlements(&c, &u, &p, &[("cover_letter".into(), 4)], 30);
        assert_eq!((e["plan"].as_str(), e["tier"].as_str()), (Some("trial"), Some("essential")));
        assert_eq!(e["trial"], json!({"active": true, "endsAt": "2023-11-16T22:13:20Z", "used": true}));
        assert_eq!(e["features"]["cover_letter"], true);
        assert_eq!(e["features"]["mock_interview"], false);
        assert_eq!(e["features"].as_object().unwrap().len(), c.feature_ids().len());
        assert_eq!(
            e["usage"]["cover_letter"],
            json!({"limit": 10, "used": 4, "remaining": 6, "resetsAt": "2023-11-16T22:13:20Z"})
        );
        assert_eq!(e["usage"]["ats_score"]["limit"], Value::Null, "unlimited on essential");
        assert_eq!(e["usage"]["ats_score"]["remaining"], Value::Null);
        assert!(e["usage"].get("job_analysis").is_none(), "paid in credits, not counted");
        assert!(e["usage"].get("mock_interview").is_none(), "not in the plan");
        assert_eq!(e["credits"]["balance"], 30);
        assert_eq!(e["period"]["kind"], "subscription");
    }
}

//! A user's billing record as stored in D1, and the `/api/plan/me` view of it.

use serde::{Deserialize, Serialize};

use super::plans::TRIAL_PLAN;
use super::time::iso8601;

/// One `users` row. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub auth_id: String,
    pub email: Option<String>,
    pub plan: String,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub subscription_status: Option<String>,
    pub trial_ends_at: Option<i64>,
    pub current_period_end: Option<i64>,
    pub cancel_at: Option<i64>,
    pub scheduled_plan: Option<String>,
    pub scheduled_at: Option<i64>,
    pub plan_updated_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub stripe_synced_at: Option<i64>,
    #[serde(default)]
    pub trial_used: i64,
    /// The user's last Stripe customer that was deleted (see `billing::actions`).
    #[serde(default)]
    pub previous_customer_id: Option<String>,
    /// The legacy KV values last written for this user (JSON; see `billing::sync`).
    #[serde(default)]
    pub kv_written: Option<String>,
    /// The start of the current Stripe billing period (usage counts per period).
    #[serde(default)]
    pub current_period_start: Option<i64>,
}

/// The body of `GET /api/plan/me`, field for field the old endpoint's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub ok: bool,
    pub plan: String,
    pub subscription_status: Option<String>,
    pub trial_ends_at: Option<String>,
    pub current_period_end: Option<String>,
    pub cancel_at: Option<String>,
    pub scheduled_plan: Option<String>,
    pub scheduled_at: Option<String>,
    pub plan_updated_at: String,
}

impl UserRecord {
    /// `trial` while Stripe says the subscription is trialing, else the stored tier.
    pub fn reported_plan(&self) -> &str {
        if self.subscription_status.as_deref() == Some("trialing") {
            TRIAL_PLAN
        } else {
            &self.plan
        }
    }

    pub fn plan_view(&self) -> PlanView {
        PlanView {
            ok: true,
            plan: self.reported_plan().to_string(),
            subscription_status: self.subscription_status.clone(),
            trial_ends_at: self.trial_ends_at.map(iso8601),
            current_period_end: self.current_period_end.map(iso8601),
            cancel_at: self.cancel_at.map(iso8601),
            scheduled_plan: self.scheduled_plan.clone(),
            scheduled_at: self.scheduled_at.map(iso8601),
            plan_updated_at: iso8601(self.plan_updated_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> UserRecord {
        serde_json::from_value(json!({
            "id": "usr_1", "auth_id": "firebase-uid", "email": "a@example.com", "plan": "free",
            "stripe_customer_id": null, "stripe_subscription_id": null, "subscription_status": null,
            "trial_ends_at": null, "current_period_end": null, "cancel_at": null,
            "scheduled_plan": null, "scheduled_at": null,
            "plan_updated_at": 1700000000, "created_at": 1700000000, "updated_at": 1700000000
        }))
        .unwrap()
    }

    #[test]
    fn a_new_user_is_reported_in_the_old_endpoints_exact_format() {
        let v = serde_json::to_value(record().plan_view()).unwrap();
        assert_eq!(
            v,
            json!({"ok":true,"plan":"free","subscriptionStatus":null,"trialEndsAt":null,
                   "currentPeriodEnd":null,"cancelAt":null,"scheduledPlan":null,"scheduledAt":null,
                   "planUpdatedAt":"2023-11-14T22:13:20Z"})
        );
    }

    #[test]
    fn a_trialing_user_reports_plan_trial_with_iso_dates() {
        let mut r = record();
        r.plan = "essential".into();
        r.subscription_status = Some("trialing".into());
        r.trial_ends_at = Some(1_700_259_200);
        let v = r.plan_view();
        assert_eq!(v.plan, "trial");
        assert_eq!(v.trial_ends_at.as_deref(), Some("2023-11-17T22:13:20Z"));
        r.subscription_status = Some("active".into());
        assert_eq!(r.plan_view().plan, "essential");
    }
}

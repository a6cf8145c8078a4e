//! A user's billing record as stored in D1, and the `/api/plan/me` view of it.

use serde_json::Value;

use super::plans::TRIAL_PLAN;
use super::time::iso8601;
use crate::util::Columns;

/// One `users` row. Times are unix seconds. Optional columns may be absent from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub stripe_synced_at: Option<i64>,
    /// 0 when the column is absent.
    pub trial_used: i64,
    /// The user's last Stripe customer that was deleted (see `billing::actions`).
    pub previous_customer_id: Option<String>,
    /// The legacy KV values last written for this user (JSON; see `billing::sync`).
    pub kv_written: Option<String>,
    /// The start of the current Stripe billing period (usage counts per period).
    pub current_period_start: Option<i64>,
}

impl UserRecord {
    /// A `users` row, read by hand from its columns (see `store::db::FromRow`): absent
    /// optional columns are `None` (0 for `trial_used`), unknown columns are ignored, a
    /// required column absent or any column of the wrong type refuses the row.
    pub fn from_row(row: Value) -> Result<UserRecord, String> {
        let mut c = Columns::of(row, "a users row")?;
        let r = UserRecord {
            id: c.text("id"),
            auth_id: c.text("auth_id"),
            email: c.opt_text("email"),
            plan: c.text("plan"),
            stripe_customer_id: c.opt_text("stripe_customer_id"),
            stripe_subscription_id: c.opt_text("stripe_subscription_id"),
            subscription_status: c.opt_text("subscription_status"),
            trial_ends_at: c.opt_int("trial_ends_at"),
            current_period_end: c.opt_int("current_period_end"),
            cancel_at: c.opt_int("cancel_at"),
            scheduled_plan: c.opt_text("scheduled_plan"),
            scheduled_at: c.opt_int("scheduled_at"),
            plan_updated_at: c.int("plan_updated_at"),
            created_at: c.int("created_at"),
            updated_at: c.int("updated_at"),
            stripe_synced_at: c.opt_int("stripe_synced_at"),
            trial_used: c.opt_int("trial_used").unwrap_or(0),
            previous_customer_id: c.opt_text("previous_customer_id"),
            kv_written: c.opt_text("kv_written"),
            current_period_start: c.opt_int("current_period_start"),
        };
        c.done(r)
    }
}

/// The body of `GET /api/plan/me`, field for field the old endpoint's format.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl PlanView {
    /// The JSON body (camelCase keys).
    pub fn to_json(self) -> Value {
        crate::obj! {
            "ok": self.ok,
            "plan": self.plan,
            "subscriptionStatus": self.subscription_status,
            "trialEndsAt": self.trial_ends_at,
            "currentPeriodEnd": self.current_period_end,
            "cancelAt": self.cancel_at,
            "scheduledPlan": self.scheduled_plan,
            "scheduledAt": self.scheduled_at,
            "planUpdatedAt": self.plan_updated_at,
        }
    }
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
        UserRecord::from_row(json!({
            "id": "usr_1", "auth_id": "firebase-uid", "email": "a@example.com", "plan": "free",
            "stripe_customer_id": null, "stripe_subscription_id": null, "subscription_status": null,
            "trial_ends_at": null, "current_period_end": null, "cancel_at": null,
            "scheduled_plan": null, "scheduled_at": null,
            "plan_updated_at": 1700000000, "created_at": 1700000000, "updated_at": 1700000000
        }))
        .unwrap()
    }

    #[test]
    fn a_row_is_read_by_column_name_with_absent_optional_columns_and_unknown_ones_ignored() {
        let r = record();
        assert_eq!((r.id.as_str(), r.auth_id.as_str(), r.plan.as_str()), ("usr_1", "firebase-uid", "free"));
        assert_eq!((r.email.as_deref(), r.stripe_customer_id.as_deref()), (Some("a@example.com"), None));
        assert_eq!(
            (r.plan_updated_at, r.stripe_synced_at, r.trial_used, r.previous_customer_id),
            (1700000000, None, 0, None)
        );
        let full = UserRecord::from_row(json!({
            "id": "usr_2", "auth_id": "a2", "email": null, "plan": "pro", "stripe_customer_id": "cus_1",
            "stripe_subscription_id": "sub_1", "subscription_status": "active", "trial_ends_at": 5,
            "current_period_end": 6, "cancel_at": 7, "scheduled_plan": "essential", "scheduled_at": 8,
            "plan_updated_at": 1, "created_at": 2, "updated_at": 3, "stripe_synced_at": 4, "trial_used": 1,
            "previous_customer_id": "cus_0", "some_new_column": [1, {"x": 2}]
        }))
        .unwrap();
        assert_eq!(
            (full.trial_ends_at, full.current_period_end, full.cancel_at, full.scheduled_at),
            (Some(5), Some(6), Some(7), Some(8))
        );
        assert_eq!((full.created_at, full.updated_at, full.stripe_synced_at, full.trial_used), (2, 3, Some(4), 1));
        assert_eq!(
            (full.scheduled_plan.as_deref(), full.previous_customer_id.as_deref(), full.subscription_status.as_deref()),
            (Some("essential"), Some("cus_0"), Some("active"))
        );
        assert_eq!(full.stripe_subscription_id.as_deref(), Some("sub_1"));
    }

    #[test]
    fn a_row_missing_a_required_column_or_with_a_wrong_type_is_refused() {
        let base =
            json!({"id": "u", "auth_id": "a", "plan": "free", "plan_updated_at": 1, "created_at": 1, "updated_at": 1});
        assert!(UserRecord::from_row(base.clone()).is_ok());
        for column in ["id", "auth_id", "plan", "plan_updated_at", "created_at", "updated_at"] {
            let mut row = base.clone();
            row.as_object_mut().unwrap().remove(column);
            let e = UserRecord::from_row(row).unwrap_err();
            assert!(e.contains(column), "{column}: {e}");
        }
        for (column, bad) in
            [("id", json!(3)), ("created_at", json!("x")), ("trial_ends_at", json!(1.5)), ("email", json!(true))]
        {
            let mut row = base.clone();
            row[column] = bad;
            assert!(UserRecord::from_row(row).is_err(), "{column}");
        }
        assert!(UserRecord::from_row(json!([1, 2])).is_err());
    }

    #[test]
    fn a_new_user_is_reported_in_the_old_endpoints_exact_format() {
        let v = record().plan_view().to_json();
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

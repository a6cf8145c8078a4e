//! Gating: what a user's plan allows, how much of it this period used, and the
//! atomic consume that counts a use (or spends credits for a feature paid in them).
//! Decisions that spend always read D1; only the read-only entitlements view may come
//! from the cache (see `routes::entitlements`).

use serde_json::Value;

use super::Billing;
use crate::domain::account::UserRecord;
use crate::domain::quota::{self, current_period, Gate};
use crate::error::ApiError;
use crate::store::credits;
use crate::store::db::Stmt;
use crate::store::usage::{self, Consume, Outcome};
use crate::store::users;

/// Idempotency keys are at most this long.
pub const MAX_KEY_LEN: usize = 200;
/// Uses one consume may count at most.
pub const MAX_USES: u64 = 1_000;

fn unknown_feature(feature: &str) -> ApiError {
    ApiError::coded(
        400,
        "UNKNOWN_FEATURE",
        format!("Unknown feature `{}`", feature.chars().take(64).collect::<String>()),
    )
}

fn not_in_plan(feature: &str, user: &UserRecord) -> ApiError {
    ApiError::Detailed {
        status: 403,
        code: "FEATURE_NOT_IN_PLAN",
        message: format!("Your plan does not include `{feature}`; upgrade to use it"),
        fields: crate::obj! {"feature": feature, "plan": user.reported_plan()},
    }
}

impl Billing<'_> {
    /// The user another backend names (`userId` or `authId`); created here only from
    /// the legacy plan keys of an `authId` plangate has not seen yet.
    pub async fn named_user(&self, user_id: Option<&str>, auth_id: Option<&str>) -> Result<UserRecord, ApiError> {
        let found = match (user_id, auth_id) {
            (Some(id), None) => users::find_by_id(self.db, id).await?,
            (None, Some(auth)) => match users::find_by_auth_id(self.db, auth).await? {
                None => self.first_sight(auth, None, false).await?,
                found => found,
            },
            _ => return Err(ApiError::InvalidRequest("give exactly one of userId and authId".into())),
        };
        found.ok_or_else(|| ApiError::coded(404, "USER_NOT_FOUND", "No such user"))
    }

    /// This period's usage and the credit balance, in one round trip.
    async fn usage_and_balance(&self, user_id: &str, period: &str) -> Result<(Vec<(String, u64)>, i64), ApiError> {
        let stmts = [
            Stmt {
                sql: "SELECT feature, used FROM usage WHERE user_id = ?1 AND period = ?2",
                params: vec![user_id.into(), period.into()],
            },
            credits::balance_stmt(user_id),
        ];
        let mut results = self.db.batch_rows(&stmts).await?.into_iter();
        let used = results
            .next()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.text("feature")?, r.int("used")?.max(0) as u64)))
            .collect();
        let balance = results.next().and_then(|r| r.into_iter().next()).and_then(|r| r.int("balance")).unwrap_or(0);
        Ok((used, balance))
    }

    /// The body of `GET /api/entitlements`, from D1.
    pub async fn entitlements(&self, user: &UserRecord) -> Result<Value, ApiError> {
        let period = current_period(user, self.now);
        let (used, balance) = self.usage_and_balance(&user.id, &period.key).await?;
        Ok(quota::entitlements(&self.catalog, user, &period, &used, balance))
    }

    /// The body of `GET /api/usage`.
    pub async fn usage(&self, user: &UserRecord) -> Result<Value, ApiError> {
        let period = current_period(user, self.now);
        let used = usage::used_in(self.db, &user.id, &period.key).await?;
        let tier = quota::tier_of(&self.catalog, user);
        Ok(crate::obj! {
            "ok": true,
            "period": period.json(),
            "usage": quota::usage_view(&self.catalog, tier, &period, &used),
        })
    }

    /// `POST /api/entitlements/check`: would `amount` uses be allowed now? Reads only.
    pub async fn check(&self, user: &UserRecord, feature: &str, amount: u64) -> Result<Value, ApiError> {
        let tier = quota::tier_of(&self.catalog, user);
        let gate = quota::gate(&self.catalog, tier, feature).ok_or_else(|| unknown_feature(feature))?;
        let period = current_period(user, self.now);
        let (used, balance) = match gate {
            Gate::NotInPlan => (Vec::new(), 0),
            _ => self.usage_and_balance(&user.id, &period.key).await?,
        };
        let n = used.iter().find(|(f, _)| f == feature).map_or(0, |(_, n)| *n);
        let (allowed, reason, remaining) = quota::check(gate, n, balance, amount);
        Ok(crate::obj! {
            "ok": true,
            "allowed": allowed,
            "reason": reason,
            "remaining": remaining,
            "feature": feature,
            "plan": user.reported_plan(),
        })
    }

    /// `POST /api/usage/consume`: counts `amount` uses of `feature` in one conditional
    /// statement (never past the limit), or spends its credits. Every kind of use shares
    /// the user's key space: the same `key` again answers the first result (refusals
    /// included) and counts nothing, even after a plan change; the same key for another
    /// feature or amount is `409 IDEMPOTENCY_KEY_REUSED`.
    pub async fn consume(&self, user: &UserRecord, feature: &str, amount: u64, key: &str) -> Result<Value, ApiError> {
        let tier = quota::tier_of(&self.catalog, user);
        let gate = quota::gate(&self.catalog, tier, feature).ok_or_else(|| unknown_feature(feature))?;
        let period = current_period(user, self.now);
        let c = Consume {
            user_id: &user.id,
            period: &period.key,
            period_end: period.end,
            feature,
            amount,
            limit: match gate {
                Gate::Limit(l) => l,
                _ => None,
            },
            key,
            token: self.request_id,
        };
        let done = match gate {
            // Not (or no longer) in the plan: only a replay of an earlier answer.
            Gate::NotInPlan => match usage::earlier(self.db, &user.id, key).await? {
                Some(earlier) => earlier,
                None => return Err(not_in_plan(feature, user)),
            },
            Gate::Credits(cost) => {
                let spend = cost.saturating_mul(amount).min(super::credits::MAX_AMOUNT as u64) as i64;
                usage::consume_credits(self.db, &c, spend, &credits::new_id()?, self.now).await?
            }
            Gate::Limit(_) => usage::consume(self.db, &c, self.now).await?,
        };
        if done.feature != feature || done.amount != amount {
            return Err(ApiError::coded(
                409,
                "IDEMPOTENCY_KEY_REUSED",
                "This idempotencyKey was already used for a different request; use a new key",
            ));
        }
        let replayed = !done.first;
        let required = self.catalog.credit_cost(feature).unwrap_or(0).saturating_mul(amount) as i64;
        match done.outcome {
            Outcome::Counted(used) => {
                let entry = quota::usage_entry(c.limit, used, &period);
                Ok(crate::obj! {
                    "ok": true,
                    "feature": feature,
                    "used": used,
                    "limit": c.limit,
                    "remaining": entry["remaining"].clone(),
                    "resetsAt": entry["resetsAt"].clone(),
                    "replayed": replayed,
                })
            }
            Outcome::Quota(used) => Err(ApiError::Detailed {
                status: 402,
                code: "QUOTA_EXCEEDED",
                message: format!("The limit of `{feature}` for this period is reached"),
                fields: crate::obj! {
                    "feature": feature,
                    "limit": c.limit,
                    "used": used,
                    "resetsAt": quota::usage_entry(c.limit, used, &period)["resetsAt"].clone(),
                    "replayed": replayed,
                },
            }),
            Outcome::Spent(balance) => Ok(crate::obj! {
                "ok": true,
                "feature": feature,
                "credits": crate::obj! {"spent": required, "balance": balance},
                "replayed": replayed,
            }),
            Outcome::Insufficient(balance) => Err(super::credits::insufficient(balance, required)),
        }
    }
}

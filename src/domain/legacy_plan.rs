//! The plan keys of the system plangate replaces (`APP_KV`, one set per auth id) →
//! plangate's user columns. Pure: reads the four values, maps them onto a catalog tier,
//! and decides what importing them does to a user's D1 row.
//!
//! Accepted shapes (pinned by the tests below); a value that is absent, empty, `null` or
//! `undefined` (JavaScript's `String(null)`) counts as a missing key, and any value may be
//! one JSON string literal (`"pro"`, as `JSON.stringify` writes it):
//! - `planByUid:<uid>`: a tier id of `plans.toml` or `trial` (any case). `trial` is the
//!   entry tier (the first paid tier with trial days) with status `trialing`.
//! - `billingStatus:<uid>`: a Stripe status (`none` = no subscription), or a JSON object
//!   with the status (`status` | `subscriptionStatus` | `subscription_status`), the
//!   customer (`customerId` | `customer_id` | `stripeCustomerId` | `stripe_customer_id` |
//!   `customer`, a `cus_…` id or an object with one), the subscription (the same names
//!   with `subscription`, `sub_…`), the period end (`currentPeriodEnd` |
//!   `current_period_end` | `periodEnd` | `period_end`), the trial end (`trialEnd` |
//!   `trial_end` | `trialEndsAt` | `trial_ends_at`) and when it was written (`updatedAt` |
//!   `updated_at` | `lastUpdated` | `last_updated`); unknown fields are ignored.
//! - `trialEndByUid:<uid>`: unix milliseconds, unix seconds (older records; a number
//!   below 10^11 is seconds) or ISO-8601 text with a zone (or a bare date). Every time
//!   must fall in 2000–2100.
//! - `trialUsedByUid:<uid>`: `true`/`false`, `1`/`0`, `yes`/`no`, or a time (when it was used).
//!
//! A value that fits none of these makes the whole user unreadable: reported with its
//! key and the reason, never guessed.

use serde_json::{Map, Value};

use super::plans::{Catalog, TRIAL_PLAN};
use super::subscription::SubStatus;
use super::time::parse_iso8601;

/// The key prefixes, in the order a backfill walks them: a user is handled under the
/// first prefix it has a key for.
pub const PREFIXES: [&str; 4] = ["planByUid:", "billingStatus:", "trialEndByUid:", "trialUsedByUid:"];

/// The four keys of `uid`, in [`PREFIXES`] order.
pub fn keys(uid: &str) -> [String; 4] {
    PREFIXES.map(|p| format!("{p}{uid}"))
}

/// What the legacy keys say, in plangate's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LegacyPlan {
    /// A catalog tier id.
    pub plan: &'static str,
    /// A Stripe status; `None` for no subscription.
    pub status: Option<String>,
    pub customer: Option<String>,
    pub subscription: Option<String>,
    /// Kept only while trialing (as plangate keeps it).
    pub trial_ends_at: Option<i64>,
    pub current_period_end: Option<i64>,
    pub trial_used: bool,
    /// When the record says it was written (unix seconds), if it says.
    pub as_of: Option<i64>,
}

/// A legacy record that cannot be read: the key holding the value and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    pub reason: String,
}

/// A present value: trimmed, with empty / `null` / `undefined` as absent.
pub fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty() && *s != "null" && *s != "undefined")
}

/// The text of a value, unwrapping one JSON string literal.
fn text(s: &str) -> Result<String, String> {
    if !s.starts_with('"') {
        return Ok(s.to_string());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::String(t)) => Ok(t.trim().to_string()),
        _ => Err("broken JSON string".into()),
    }
}

/// A number of seconds or (from 10^11) milliseconds → unix seconds within 2000–2100.
fn from_number(n: f64) -> Result<i64, String> {
    let secs = if n >= 1e11 { n / 1000.0 } else { n };
    if (946_684_800.0..=4_102_444_800.0).contains(&secs) {
        Ok(secs as i64)
    } else {
        Err(format!("time {n} out of range"))
    }
}

fn time_text(s: &str) -> Result<i64, String> {
    let t = text(s)?;
    if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return from_number(t.parse::<f64>().map_err(|_| format!("`{t}` is not a time"))?);
    }
    parse_iso8601(&t).ok_or_else(|| format!("`{t}` is not a time"))
}

fn time_value(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => from_number(n.as_f64().unwrap_or(-1.0)),
        Value::String(s) => time_text(s),
        _ => Err("a time must be a number or text".into()),
    }
}

/// A Stripe status; `none` is no subscription.
fn status(s: &str) -> Result<Option<String>, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "none" {
        return Ok(None);
    }
    match SubStatus::parse(&s) {
        SubStatus::Other(_) => Err(format!("unknown status `{s}`")),
        known => Ok(Some(known.as_str().to_string())),
    }
}

/// The first of `names` present (and not null) in `o`, with its name.
fn pick<'v>(o: &'v Map<String, Value>, names: &[&'static str]) -> Option<(&'static str, &'v Value)> {
    names.iter().find_map(|n| o.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
}

/// A Stripe id field: the id, or an expanded object's `id`, starting with `prefix`.
fn stripe_id(field: Option<(&str, &Value)>, prefix: &str) -> Result<Option<String>, String> {
    let Some((name, v)) = field else { return Ok(None) };
    match v.get("id").unwrap_or(v).as_str() {
        Some(id) if id.starts_with(prefix) => Ok(Some(id.to_string())),
        _ => Err(format!("`{name}` is not a {prefix}… id")),
    }
}

fn opt_time(field: Option<(&str, &Value)>) -> Result<Option<i64>, String> {
    field.map(|(name, v)| time_value(v).map_err(|e| format!("`{name}`: {e}"))).transpose()
}

/// `billingStatus`: a status, or an object with status, ids and times.
fn billing(s: &str, into: &mut LegacyPlan) -> Result<Option<i64>, String> {
    if !s.starts_with('{') {
        into.status = status(&text(s)?)?;
        return Ok(None);
    }
    let v: Value = serde_json::from_str(s).map_err(|_| "not valid JSON".to_string())?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let st = pick(o, &["status", "subscriptionStatus", "subscription_status"]).ok_or("no status field")?;
    into.status = status(st.1.as_str().ok_or("the status is not text")?)?;
    into.customer = stripe_id(
        pick(o, &["customerId", "customer_id", "stripeCustomerId", "stripe_customer_id", "customer"]),
        "cus_",
    )?;
    into.subscription = stripe_id(
        pick(
            o,
            &["subscriptionId", "subscription_id", "stripeSubscriptionId", "stripe_subscription_id", "subscription"],
        ),
        "sub_",
    )?;
    into.current_period_end =
        opt_time(pick(o, &["currentPeriodEnd", "current_period_end", "periodEnd", "period_end"]))?;
    into.as_of = opt_time(pick(o, &["updatedAt", "updated_at", "lastUpdated", "last_updated"]))?;
    opt_time(pick(o, &["trialEnd", "trial_end", "trialEndsAt", "trial_ends_at"]))
}

fn flag(s: &str) -> Result<bool, String> {
    match text(s)?.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => time_text(s).map(|_| true).map_err(|_| "not true/false or a time".into()),
    }
}

/// The legacy record of `uid` from the values of its [`keys`] (`raw[i]` is the value of
/// `keys(uid)[i]`, `None` when missing); `Ok(None)` when it has none.
pub fn parse(uid: &str, raw: &[Option<String>], catalog: &Catalog) -> Result<Option<LegacyPlan>, Unreadable> {
    let v = |i: usize| present(raw.get(i).and_then(Option::as_deref));
    if (0..4).all(|i| v(i).is_none()) {
        return Ok(None);
    }
    let fail = |i: usize, reason: String| Unreadable { key: format!("{}{uid}", PREFIXES[i]), reason };
    let name = v(0).map(text).transpose().map_err(|e| fail(0, e))?.map(|n| n.to_ascii_lowercase());
    let trial = name.as_deref() == Some(TRIAL_PLAN);
    let tier = match name.as_deref() {
        None => None,
        Some(TRIAL_PLAN) => {
            let entry = catalog.paid_tiers().find(|(_, d)| d.trial_days > 0);
            Some(entry.map(|(_, d)| d.id).ok_or_else(|| fail(0, "no tier of plans.toml has trial days".into()))?)
        }
        Some(p) => Some(catalog.parse(p).map(|t| catalog.id(t)).ok_or_else(|| fail(0, format!("unknown plan `{p}`")))?),
    };
    let mut rec = LegacyPlan::default();
    let json_trial_end = match v(1) {
        Some(s) => billing(s, &mut rec).map_err(|e| fail(1, e))?,
        None => None,
    };
    let trial_end = match v(2) {
        Some(s) => Some(time_text(s).map_err(|e| fail(2, e))?),
        None => json_trial_end,
    };
    rec.trial_used = match v(3) {
        Some(s) => flag(s).map_err(|e| fail(3, e))?,
        None => false,
    };
    if trial {
        if let Some(s) = rec.status.as_deref().filter(|s| *s != "trialing") {
            return Err(fail(1, format!("status `{s}` contradicts plan `trial`")));
        }
        rec.status = Some("trialing".into());
    }
    rec.plan = match tier {
        Some(t) => t,
        None if rec.status.as_deref().is_some_and(|s| SubStatus::parse(s).is_live()) => {
            return Err(fail(1, "a live status without a plan".into()))
        }
        None => catalog.id(catalog.default_tier()),
    };
    let trialing = rec.status.as_deref() == Some("trialing");
    rec.trial_ends_at = trial_end.filter(|_| trialing);
    rec.trial_used |= trialing || trial_end.is_some();
    Ok(Some(rec))
}

/// The columns of an existing `users` row that an import looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Existing {
    pub plan: String,
    pub status: Option<String>,
    pub subscription: Option<String>,
    pub trial_ends_at: Option<i64>,
    pub current_period_end: Option<i64>,
    pub trial_used: bool,
    /// A Stripe state was stored (webhook, re-sync, plangate's own calls).
    pub stripe_synced: bool,
    pub plan_updated_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No row: create it holding the record.
    Insert,
    /// Overwrite the row's plan columns with the record.
    Update,
    /// Leave the row; the reason.
    Skip(&'static str),
}

/// What a backfill does with `rec` for a user whose row is `row`. A row Stripe has
/// written (`stripe_synced_at`) is never touched; one that holds the record already is
/// up to date. Otherwise the record is imported when the row is still as plangate
/// creates it (default plan, no subscription, plan never changed) or when the record
/// says it was written after the row's plan last changed; else D1 is newer.
pub fn decide(row: Option<&Existing>, rec: &LegacyPlan, default_plan: &str) -> Action {
    let Some(row) = row else { return Action::Insert };
    if row.stripe_synced {
        return Action::Skip("changed_by_stripe");
    }
    if row.plan == rec.plan
        && row.status == rec.status
        && row.subscription == rec.subscription
        && row.trial_ends_at == rec.trial_ends_at
        && row.current_period_end == rec.current_period_end
        && (row.trial_used || !rec.trial_used)
    {
        return Action::Skip("up_to_date");
    }
    let untouched = row.plan == default_plan
        && row.status.is_none()
        && row.subscription.is_none()
        && row.plan_updated_at == row.created_at;
    if untouched || rec.as_of.is_some_and(|t| t > row.plan_updated_at) {
        Action::Update
    } else {
        Action::Skip("d1_newer")
    }
}

/// How D1 compares with a legacy record (the verify pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Same plan and status.
    Match,
    /// No user row.
    Missing,
    /// `plan` or `status` differs and a backfill would import the record.
    Differs(&'static str),
    /// Differs because D1 changed since (Stripe, or a newer change): not a mismatch.
    ChangedSince,
}

pub fn check(row: Option<&Existing>, rec: &LegacyPlan, default_plan: &str) -> Check {
    let Some(r) = row else { return Check::Missing };
    let field = if r.plan != rec.plan {
        "plan"
    } else if r.status != rec.status {
        "status"
    } else {
        return Check::Match;
    };
    match decide(row, rec, default_plan) {
        Action::Skip(_) => Check::ChangedSince,
        _ => Check::Differs(field),
    }
}

/// Where a walk over the legacy keys is: the prefix (index into [`PREFIXES`]; 4 = done)
/// and the KV list cursor within it (`""` = its start). Written `<prefix>:<cursor>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    pub prefix: usize,
    pub cursor: String,
}

impl Position {
    pub fn done(&self) -> bool {
        self.prefix >= PREFIXES.len()
    }

    pub fn parse(s: &str) -> Option<Position> {
        let (p, cursor) = s.split_once(':')?;
        let prefix = p.parse::<usize>().ok().filter(|p| *p <= PREFIXES.len())?;
        Some(Position { prefix, cursor: cursor.to_string() })
    }

    pub fn text(&self) -> String {
        format!("{}:{}", self.prefix, self.cursor)
    }

    /// After a list page: its cursor, or the next prefix's start when it was the last.
    pub fn advance(&mut self, next: Option<String>) {
        match next {
            Some(c) => self.cursor = c,
            None => *self = Position { prefix: self.prefix + 1, cursor: String::new() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(values: [Option<&str>; 4]) -> Result<Option<LegacyPlan>, Unreadable> {
        let raw: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        parse("u1", &raw, &Catalog::builtin())
    }

    fn ok(values: [Option<&str>; 4]) -> LegacyPlan {
        p(values).unwrap().unwrap()
    }

    fn err(values: [Option<&str>; 4]) -> (String, String) {
        let e = p(values).unwrap_err();
        (e.key, e.reason)
    }

    const T: i64 = 1_700_000_000;

    #[test]
    fn the_key_names_are_the_ones_plangate_dual_writes() {
        use crate::store::kv;
        assert_eq!(
            keys("u1"),
            [kv::plan_key("u1"), kv::billing_status_key("u1"), kv::trial_end_key("u1"), kv::trial_used_key("u1")]
        );
    }

    #[test]
    fn no_keys_or_only_empty_values_is_no_record() {
        assert_eq!(p([None, None, None, None]), Ok(None));
        assert_eq!(p([Some(""), Some("null"), Some(" undefined "), None]), Ok(None));
    }

    #[test]
    fn a_plan_alone_is_that_tier_without_subscription() {
        let r = ok([Some("pro"), None, None, None]);
        assert_eq!(r, LegacyPlan { plan: "pro", ..Default::default() });
        assert_eq!(ok([Some(" Premium\n"), None, None, None]).plan, "premium");
        assert_eq!(ok([Some("\"essential\""), None, None, None]).plan, "essential");
        assert_eq!(ok([Some("free"), Some("none"), None, None]), LegacyPlan { plan: "free", ..Default::default() });
    }

    #[test]
    fn trial_is_the_entry_tier_trialing_with_its_end_and_the_trial_used() {
        let r = ok([Some("trial"), None, Some("1700000000000"), None]);
        assert_eq!(
            r,
            LegacyPlan {
                plan: "essential",
                status: Some("trialing".into()),
                trial_ends_at: Some(T),
                trial_used: true,
                ..Default::default()
            }
        );
        assert_eq!(ok([Some("TRIAL"), Some("trialing"), None, None]).status.as_deref(), Some("trialing"));
        assert_eq!(
            err([Some("trial"), Some("active"), None, None]),
            ("billingStatus:u1".into(), "status `active` contradicts plan `trial`".into())
        );
    }

    #[test]
    fn a_status_string_is_any_stripe_status_in_any_case_or_none() {
        for s in ["trialing", "active", "past_due", "canceled", "incomplete", "incomplete_expired", "unpaid", "paused"]
        {
            assert_eq!(ok([Some("pro"), Some(s), None, None]).status.as_deref(), Some(s));
        }
        assert_eq!(ok([Some("pro"), Some("ACTIVE "), None, None]).status.as_deref(), Some("active"));
        assert_eq!(ok([Some("pro"), Some("\"past_due\""), None, None]).status.as_deref(), Some("past_due"));
        assert_eq!(ok([Some("pro"), Some("None"), None, None]).status, None);
        assert_eq!(
            err([Some("pro"), Some("gold"), None, None]),
            ("billingStatus:u1".into(), "unknown status `gold`".into())
        );
    }

    #[test]
    fn an_old_json_billing_record_gives_ids_and_times_in_camel_or_snake_case() {
        let camel = r#"{"status":"active","customerId":"cus_A","subscriptionId":"sub_A","currentPeriodEnd":1700000000000,"updatedAt":"2023-11-14T22:13:20Z","extra":[1]}"#;
        let r = ok([Some("pro"), Some(camel), None, None]);
        assert_eq!(
            r,
            LegacyPlan {
                plan: "pro",
                status: Some("active".into()),
                customer: Some("cus_A".into()),
                subscription: Some("sub_A".into()),
                current_period_end: Some(T),
                as_of: Some(T),
                ..Default::default()
            }
        );
        let snake = r#"{"subscription_status":"active","stripe_customer_id":"cus_A","stripe_subscription_id":"sub_A","current_period_end":1700000000,"updated_at":1700000000}"#;
        assert_eq!(ok([Some("pro"), Some(snake), None, None]), r);
        let other = r#"{"subscriptionStatus":"active","customer_id":"cus_A","subscription":{"id":"sub_A"},"period_end":"2023-11-14T22:13:20Z","lastUpdated":1700000000000}"#;
        assert_eq!(ok([Some("pro"), Some(other), None, None]), r);
        let expanded = r#"{"status":"active","customer":{"id":"cus_A"},"stripeSubscriptionId":"sub_A","periodEnd":1700000000,"last_updated":1700000000}"#;
        assert_eq!(ok([Some("pro"), Some(expanded), None, None]), r);
        // The trial end may sit in the object; the key wins over it.
        let trial = r#"{"status":"trialing","trialEnd":1700000000}"#;
        assert_eq!(ok([Some("trial"), Some(trial), None, None]).trial_ends_at, Some(T));
        assert_eq!(ok([Some("trial"), Some(trial), Some("1700000600"), None]).trial_ends_at, Some(T + 600));
        assert_eq!(ok([Some("pro"), Some(r#"{"status":"none","customerId":null}"#), None, None]).status, None);
    }

    #[test]
    fn a_broken_json_billing_record_is_reported_with_its_key_and_reason() {
        let cases = [
            (r#"{"status":"active""#, "not valid JSON"),
            (r#"{"customerId":"cus_A"}"#, "no status field"),
            (r#"{"status":3}"#, "the status is not text"),
            (r#"{"status":"active","customerId":"acct_1"}"#, "`customerId` is not a cus_… id"),
            (r#"{"status":"active","subscription":7}"#, "`subscription` is not a sub_… id"),
            (r#"{"status":"active","currentPeriodEnd":"soon"}"#, "`currentPeriodEnd`: `soon` is not a time"),
            (r#"{"status":"active","updatedAt":true}"#, "`updatedAt`: a time must be a number or text"),
        ];
        for (value, reason) in cases {
            assert_eq!(
                err([Some("pro"), Some(value), None, None]),
                ("billingStatus:u1".into(), reason.into()),
                "{value}"
            );
        }
    }

    #[test]
    fn a_trial_end_is_milliseconds_seconds_or_iso_text() {
        for v in [
            "1700000000000",
            "1700000000",
            "1700000000000.0",
            "\"1700000000000\"",
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20.000Z",
            "2023-11-15T00:13:20+02:00",
        ] {
            assert_eq!(ok([Some("trial"), None, Some(v), None]).trial_ends_at, Some(T), "{v}");
        }
        for v in ["tomorrow", "12", "99999999999999999", "2023-11-14T22:13:20", "-1700000000", "1.2.3"] {
            let (key, _) = err([Some("trial"), None, Some(v), None]);
            assert_eq!(key, "trialEndByUid:u1", "{v}");
        }
    }

    #[test]
    fn a_trial_end_outside_a_trial_marks_the_trial_used_but_is_not_kept() {
        let r = ok([Some("pro"), Some("active"), Some("1700000000000"), None]);
        assert_eq!((r.trial_ends_at, r.trial_used), (None, true));
    }

    #[test]
    fn trial_used_is_a_boolean_word_or_a_time() {
        for v in ["true", "TRUE", "1", "yes", "\"true\"", "1700000000000", "2023-11-14T22:13:20Z"] {
            assert!(ok([Some("free"), None, None, Some(v)]).trial_used, "{v}");
        }
        for v in ["false", "0", "no"] {
            assert!(!ok([Some("free"), None, None, Some(v)]).trial_used, "{v}");
        }
        assert_eq!(
            err([Some("free"), None, None, Some("maybe")]),
            ("trialUsedByUid:u1".into(), "not true/false or a time".into())
        );
    }

    #[test]
    fn unknown_plans_are_errors_for_the_plan_key() {
        assert_eq!(err([Some("gold"), None, None, None]), ("planByUid:u1".into(), "unknown plan `gold`".into()));
        assert_eq!(err([Some("\"pro"), None, None, None]), ("planByUid:u1".into(), "broken JSON string".into()));
        assert_eq!(err([Some("{\"plan\":\"pro\"}"), None, None, None]).0, "planByUid:u1");
    }

    #[test]
    fn without_a_plan_key_only_a_status_that_grants_nothing_is_read() {
        assert_eq!(
            ok([None, Some("canceled"), None, None]),
            LegacyPlan { plan: "free", status: Some("canceled".into()), ..Default::default() }
        );
        assert_eq!(
            ok([None, None, None, Some("true")]),
            LegacyPlan { plan: "free", trial_used: true, ..Default::default() }
        );
        assert_eq!(
            ok([None, None, Some("1700000000"), None]),
            LegacyPlan { plan: "free", trial_used: true, ..Default::default() }
        );
        for live in ["active", "trialing", "past_due"] {
            assert_eq!(
                err([None, Some(live), None, None]),
                ("billingStatus:u1".into(), "a live status without a plan".into())
            );
        }
    }

    #[test]
    fn the_first_broken_value_is_the_one_reported() {
        assert_eq!(err([Some("gold"), Some("nope"), None, None]).0, "planByUid:u1");
        assert_eq!(err([Some("pro"), Some("nope"), Some("x"), None]).0, "billingStatus:u1");
        assert_eq!(err([Some("pro"), None, Some("x"), Some("maybe")]).0, "trialEndByUid:u1");
    }

    fn row(plan: &str) -> Existing {
        Existing { plan: plan.into(), plan_updated_at: 100, created_at: 100, ..Default::default() }
    }

    fn rec(plan: &'static str, status: Option<&str>) -> LegacyPlan {
        LegacyPlan { plan, status: status.map(str::to_string), ..Default::default() }
    }

    #[test]
    fn a_missing_row_is_created_and_an_untouched_one_is_filled() {
        let pro = rec("pro", Some("active"));
        assert_eq!(decide(None, &pro, "free"), Action::Insert);
        assert_eq!(decide(Some(&row("free")), &pro, "free"), Action::Update);
    }

    #[test]
    fn a_row_stripe_wrote_or_changed_since_the_record_is_never_overwritten() {
        let pro = rec("pro", Some("active"));
        let synced = Existing { stripe_synced: true, ..row("free") };
        assert_eq!(decide(Some(&synced), &pro, "free"), Action::Skip("changed_by_stripe"));
        let changed = Existing { plan: "premium".into(), status: None, plan_updated_at: 200, ..row("free") };
        assert_eq!(decide(Some(&changed), &pro, "free"), Action::Skip("d1_newer"));
        let older = LegacyPlan { as_of: Some(150), ..pro.clone() };
        assert_eq!(decide(Some(&changed), &older, "free"), Action::Skip("d1_newer"));
        let newer = LegacyPlan { as_of: Some(250), ..pro.clone() };
        assert_eq!(decide(Some(&changed), &newer, "free"), Action::Update);
        let renamed = Existing { plan_updated_at: 150, ..row("free") };
        assert_eq!(decide(Some(&renamed), &pro, "free"), Action::Skip("d1_newer"), "its plan changed once");
    }

    #[test]
    fn a_row_holding_the_record_is_up_to_date() {
        let pro = LegacyPlan { trial_used: true, current_period_end: Some(9), ..rec("pro", Some("active")) };
        let same = Existing {
            plan: "pro".into(),
            status: Some("active".into()),
            current_period_end: Some(9),
            trial_used: true,
            plan_updated_at: 5,
            ..row("pro")
        };
        assert_eq!(decide(Some(&same), &pro, "free"), Action::Skip("up_to_date"));
        let no_trial_yet = Existing { trial_used: false, ..same.clone() };
        assert_eq!(decide(Some(&no_trial_yet), &pro, "free"), Action::Skip("d1_newer"));
        assert_eq!(decide(Some(&row("free")), &rec("free", None), "free"), Action::Skip("up_to_date"));
    }

    #[test]
    fn verify_counts_only_what_a_backfill_would_still_import_as_a_mismatch() {
        let pro = rec("pro", Some("active"));
        assert_eq!(check(None, &pro, "free"), Check::Missing);
        assert_eq!(check(Some(&row("free")), &pro, "free"), Check::Differs("plan"));
        let status = Existing { plan: "pro".into(), ..row("free") };
        assert_eq!(
            check(Some(&status), &pro, "free"),
            Check::ChangedSince,
            "pro without status was changed by someone"
        );
        let same = Existing { plan: "pro".into(), status: Some("active".into()), stripe_synced: true, ..row("free") };
        assert_eq!(check(Some(&same), &pro, "free"), Check::Match);
        let moved = Existing { plan: "premium".into(), ..same };
        assert_eq!(check(Some(&moved), &pro, "free"), Check::ChangedSince);
        let untouched_status = Existing { plan: "free".into(), ..row("free") };
        assert_eq!(check(Some(&untouched_status), &rec("free", Some("canceled")), "free"), Check::Differs("status"));
    }

    #[test]
    fn positions_round_trip_and_advance_through_the_prefixes() {
        let mut pos = Position::default();
        assert_eq!(pos.text(), "0:");
        pos.advance(Some("abc:def".into()));
        assert_eq!(Position::parse(&pos.text()), Some(pos.clone()));
        assert_eq!(pos.cursor, "abc:def");
        pos.advance(None);
        assert_eq!(pos, Position { prefix: 1, cursor: String::new() });
        for _ in 0..3 {
            pos.advance(None);
        }
        assert!(pos.done());
        assert_eq!(Position::parse("4:"), Some(pos));
        for bad in ["", "5:", "x:1", "1"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}

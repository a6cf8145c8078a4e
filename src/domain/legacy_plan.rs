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
//! Read as plangate's Stripe sync would: a paid plan with a status that grants nothing
//! (`canceled`, `unpaid`, `incomplete`, `incomplete_expired`, `paused`) is the default
//! plan with that status; a trial (plan `trial` or status `trialing`) whose end has
//! passed, without a subscription, is the default plan, no status, the trial used.
//!
//! A value that fits none of these makes the whole user unreadable: reported with its
//! key and the reason, never guessed.

use serde_json::{Map, Value};

use super::account::UserRecord;
use super::plans::{Catalog, TRIAL_PLAN};
use super::subscription::SubStatus;
use super::time::parse_iso8601;

/// The key prefixes, in the order a backfill walks them: a user is handled under the
/// first prefix it has a key for.
pub const PREFIXES: [&str; 4] = ["planByUid:", "billingStatus:", "trialEndByUid:", "trialUsedByUid:"];

/// The four keys of `uid`, in [`PREFIXES`] order.
pub fn keys(uid: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(4);
    for p in PREFIXES {
        keys.push(format!("{p}{uid}"));
    }
    keys
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
    pub reason: &'static str,
}

/// Why a value cannot be read (fixed texts: the value itself is in KV under the key).
type Why = &'static str;

/// A present value: trimmed, with empty / `null` / `undefined` as absent.
pub fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty() && *s != "null" && *s != "undefined")
}

/// The text of a value, unwrapping one JSON string literal.
fn text(s: &str) -> Result<String, Why> {
    if !s.starts_with('"') {
        return Ok(s.to_string());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::String(t)) => Ok(t.trim().to_string()),
        _ => Err("a broken JSON string"),
    }
}

/// Seconds or (from 10^11) milliseconds → unix seconds within 2000–2100. (Integers
/// only: float parsing and formatting would add tens of KB to the Wasm.)
fn from_number(n: i64) -> Result<i64, Why> {
    let secs = if n >= 100_000_000_000 { n / 1000 } else { n };
    if (946_684_800..=4_102_444_800).contains(&secs) {
        Ok(secs)
    } else {
        Err("a time outside 2000–2100")
    }
}

fn time_text(s: &str) -> Result<i64, Why> {
    let t = text(s)?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    let (whole, fraction) = t.split_once('.').unwrap_or((&t, "0"));
    if digits(whole) && whole.len() <= 15 && digits(fraction) {
        return from_number(whole.bytes().fold(0, |n, c| n * 10 + i64::from(c - b'0')));
    }
    parse_iso8601(&t).ok_or("not a time")
}

/// A time field of the JSON billing record; `why` when it is not one.
fn opt_time(field: Option<&Value>, why: Why) -> Result<Option<i64>, Why> {
    let Some(v) = field else { return Ok(None) };
    let t = match v {
        Value::Number(n) => from_number(n.as_i64().unwrap_or_else(|| n.as_f64().unwrap_or(-1.0) as i64)),
        Value::String(s) => time_text(s),
        _ => Err(why),
    };
    t.map(Some).map_err(|_| why)
}

/// A Stripe status; `none` is no subscription.
fn status(s: &str) -> Result<Option<String>, Why> {
    let s = s.trim().to_ascii_lowercase();
    if s == "none" {
        return Ok(None);
    }
    match SubStatus::parse(&s) {
        SubStatus::Other(_) => Err("an unknown status"),
        known => Ok(Some(known.as_str().to_string())),
    }
}

/// The first of `names` present (and not null) in `o`.
fn pick<'v>(o: &'v Map<String, Value>, names: &[&str]) -> Option<&'v Value> {
    names.iter().find_map(|n| o.get(*n).filter(|v| !v.is_null()))
}

/// A Stripe id field: the id, or an expanded object's `id`, starting with `prefix`.
fn stripe_id(field: Option<&Value>, prefix: &str, why: Why) -> Result<Option<String>, Why> {
    let Some(v) = field else { return Ok(None) };
    match v.get("id").unwrap_or(v).as_str() {
        Some(id) if id.starts_with(prefix) => Ok(Some(id.to_string())),
        _ => Err(why),
    }
}

/// `billingStatus`: a status, or an object with status, ids and times.
fn billing(s: &str, into: &mut LegacyPlan) -> Result<Option<i64>, Why> {
    if !s.starts_with('{') {
        into.status = status(&text(s)?)?;
        return Ok(None);
    }
    let v: Value = serde_json::from_str(s).map_err(|_| "not valid JSON")?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let st = pick(o, &["status", "subscriptionStatus", "subscription_status"]).ok_or("no status field")?;
    into.status = status(st.as_str().ok_or("the status is not text")?)?;
    let customer = pick(o, &["customerId", "customer_id", "stripeCustomerId", "stripe_customer_id", "customer"]);
    into.customer = stripe_id(customer, "cus_", "the customer is not a cus_… id")?;
    let subscription = pick(
        o,
        &["subscriptionId", "subscription_id", "stripeSubscriptionId", "stripe_subscription_id", "subscription"],
    );
    into.subscription = stripe_id(subscription, "sub_", "the subscription is not a sub_… id")?;
    let period_end = pick(o, &["currentPeriodEnd", "current_period_end", "periodEnd", "period_end"]);
    into.current_period_end = opt_time(period_end, "the period end is not a time")?;
    let updated = pick(o, &["updatedAt", "updated_at", "lastUpdated", "last_updated"]);
    into.as_of = opt_time(updated, "the update time is not a time")?;
    opt_time(pick(o, &["trialEnd", "trial_end", "trialEndsAt", "trial_ends_at"]), "the trial end is not a time")
}

fn flag(s: &str) -> Result<bool, Why> {
    match text(s)?.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => time_text(s).map(|_| true).map_err(|_| "not true/false or a time"),
    }
}

/// The legacy record of `uid` from the values of its [`keys`] (`raw[i]` is the value of
/// `keys(uid)[i]`, `None` when missing), as of `now` (unix seconds); `Ok(None)` when it
/// has none.
pub fn parse(uid: &str, raw: &[Option<String>], catalog: &Catalog, now: i64) -> Result<Option<LegacyPlan>, Unreadable> {
    read(raw, catalog, now).map_err(|(i, reason)| Unreadable { key: format!("{}{uid}", PREFIXES[i]), reason })
}

/// [`parse`], failing with the index of the key at fault.
fn read(raw: &[Option<String>], catalog: &Catalog, now: i64) -> Result<Option<LegacyPlan>, (usize, Why)> {
    let v = |i: usize| present(raw.get(i).and_then(Option::as_deref));
    if (0..4).all(|i| v(i).is_none()) {
        return Ok(None);
    }
    let at = |i: usize| move |e: Why| (i, e);
    let name = v(0).map(text).transpose().map_err(at(0))?.map(|n| n.to_ascii_lowercase());
    let trial = name.as_deref() == Some(TRIAL_PLAN);
    let mut tier = match name.as_deref() {
        None => None,
        Some(TRIAL_PLAN) => {
            Some(catalog.paid_tiers().find(|(_, d)| d.trial_days > 0).ok_or((0, "no tier has trial days"))?.1.id)
        }
        Some(p) => Some(catalog.id(catalog.parse(p).ok_or((0, "an unknown plan"))?)),
    };
    let mut rec = LegacyPlan::default();
    let json_trial_end = match v(1) {
        Some(s) => billing(s, &mut rec).map_err(at(1))?,
        None => None,
    };
    let trial_end = match v(2) {
        Some(s) => Some(time_text(s).map_err(at(2))?),
        None => json_trial_end,
    };
    rec.trial_used = match v(3) {
        Some(s) => flag(s).map_err(at(3))?,
        None => false,
    };
    if trial {
        if rec.status.as_deref().is_some_and(|s| s != "trialing") {
            return Err((1, "a status other than trialing for plan trial"));
        }
        rec.status = Some("trialing".into());
    }
    // As plangate's Stripe sync: a status that grants nothing is the default plan (the
    // status kept); a trial that ended without a subscription (nothing would end it)
    // is over.
    let mut trialing = rec.status.as_deref() == Some("trialing");
    if trialing && rec.subscription.is_none() && trial_end.is_some_and(|t| t <= now) {
        (rec.status, tier, trialing) = (None, None, false);
    }
    rec.plan = match (tier, rec.status.as_deref().map(|s| SubStatus::parse(s).is_live())) {
        (Some(t), None | Some(true)) => t,
        (None, Some(true)) => return Err((1, "a live status without a plan")),
        _ => catalog.id(catalog.default_tier()),
    };
    rec.trial_ends_at = trial_end.filter(|_| trialing);
    rec.trial_used |= trialing || trial_end.is_some();
    Ok(Some(rec))
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
pub fn decide(row: Option<&UserRecord>, rec: &LegacyPlan, default_plan: &str) -> Action {
    let Some(row) = row else { return Action::Insert };
    if row.stripe_synced_at.is_some() {
        return Action::Skip("changed_by_stripe");
    }
    if row.plan == rec.plan
        && row.subscription_status == rec.status
        && row.stripe_subscription_id == rec.subscription
        && row.trial_ends_at == rec.trial_ends_at
        && row.current_period_end == rec.current_period_end
        && (row.trial_used != 0 || !rec.trial_used)
    {
        return Action::Skip("up_to_date");
    }
    let untouched = row.plan == default_plan
        && row.subscription_status.is_none()
        && row.stripe_subscription_id.is_none()
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

pub fn check(row: Option<&UserRecord>, rec: &LegacyPlan, default_plan: &str) -> Check {
    let Some(r) = row else { return Check::Missing };
    let field = if r.plan != rec.plan {
        "plan"
    } else if r.subscription_status != rec.status {
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
        parse("u1", &raw, &Catalog::builtin(), NOW)
    }

    fn ok(values: [Option<&str>; 4]) -> LegacyPlan {
        p(values).unwrap().unwrap()
    }

    fn err(values: [Option<&str>; 4]) -> (String, &'static str) {
        let e = p(values).unwrap_err();
        (e.key, e.reason)
    }

    const T: i64 = 1_700_000_000;
    /// When the records are read: before `T`, so a trial ending at `T` still runs.
    const NOW: i64 = 1_600_000_000;

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
            ("billingStatus:u1".into(), "a status other than trialing for plan trial")
        );
    }

    #[test]
    fn a_status_string_is_any_stripe_status_in_any_case_or_none() {
        let end = (T + 1).to_string();
        for s in ["trialing", "active", "past_due", "canceled", "incomplete", "incomplete_expired", "unpaid", "paused"]
        {
            assert_eq!(ok([Some("pro"), Some(s), Some(&end), None]).status.as_deref(), Some(s));
        }
        assert_eq!(ok([Some("pro"), Some("ACTIVE "), None, None]).status.as_deref(), Some("active"));
        assert_eq!(ok([Some("pro"), Some("\"past_due\""), None, None]).status.as_deref(), Some("past_due"));
        assert_eq!(ok([Some("pro"), Some("None"), None, None]).status, None);
        assert_eq!(err([Some("pro"), Some("gold"), None, None]), ("billingStatus:u1".into(), "an unknown status"));
    }

    #[test]
    fn a_paid_plan_with_a_status_that_grants_nothing_is_the_default_plan_keeping_the_status() {
        // As plangate's own Stripe sync does (`subscription::state_from`).
        for s in ["canceled", "unpaid", "incomplete", "incomplete_expired", "paused"] {
            assert_eq!(
                ok([Some("pro"), Some(s), None, None]),
                LegacyPlan { plan: "free", status: Some(s.into()), ..Default::default() },
                "{s}"
            );
        }
        let json = r#"{"status":"canceled","customerId":"cus_A","subscriptionId":"sub_A","updatedAt":1700000000}"#;
        let r = ok([Some("premium"), Some(json), None, Some("true")]);
        assert_eq!(
            r,
            LegacyPlan {
                plan: "free",
                status: Some("canceled".into()),
                customer: Some("cus_A".into()),
                subscription: Some("sub_A".into()),
                trial_used: true,
                as_of: Some(T),
                ..Default::default()
            }
        );
        // A live status keeps the paid plan; an unknown one is still unreadable.
        for s in ["active", "past_due"] {
            assert_eq!(ok([Some("pro"), Some(s), None, None]).plan, "pro", "{s}");
        }
        assert_eq!(err([Some("pro"), Some("lapsed"), None, None]), ("billingStatus:u1".into(), "an unknown status"));
    }

    #[test]
    fn a_trial_that_ended_without_a_subscription_is_the_default_plan_with_the_trial_used() {
        let ended = LegacyPlan { plan: "free", trial_used: true, ..Default::default() };
        let past = (NOW - 1).to_string();
        assert_eq!(ok([Some("trial"), None, Some(&past), None]), ended);
        assert_eq!(ok([Some("trial"), Some("trialing"), Some(&NOW.to_string()), None]), ended, "ends now");
        let json = format!(r#"{{"status":"trialing","trialEnd":{}}}"#, NOW - 86_400);
        assert_eq!(ok([Some("pro"), Some(&json), None, None]), ended, "status trialing on a paid plan");
        assert_eq!(
            ok([None, Some("trialing"), Some(&past), None]),
            ended,
            "an ended trial grants nothing: no plan needed"
        );
        // Still running: trialing until its end.
        let future = (NOW + 1).to_string();
        assert_eq!(
            ok([Some("trial"), Some("trialing"), Some(&future), None]),
            LegacyPlan {
                plan: "essential",
                status: Some("trialing".into()),
                trial_ends_at: Some(NOW + 1),
                trial_used: true,
                ..Default::default()
            }
        );
        // With a subscription Stripe decides (the next event or a re-sync): kept as written.
        let json = format!(r#"{{"status":"trialing","subscriptionId":"sub_A","trialEnd":{}}}"#, NOW - 1);
        let r = ok([Some("trial"), Some(&json), None, None]);
        assert_eq!((r.plan, r.status.as_deref(), r.trial_ends_at), ("essential", Some("trialing"), Some(NOW - 1)));
    }

    #[test]
    fn a_row_imported_from_any_record_is_up_to_date_and_verifies_as_matching() {
        let past = (NOW - 1).to_string();
        let records = [
            ok([Some("pro"), Some("canceled"), None, None]),
            ok([Some("premium"), Some(r#"{"status":"unpaid","subscriptionId":"sub_A"}"#), None, None]),
            ok([Some("trial"), None, Some(&past), None]),
            ok([Some("trial"), None, Some("1700000000"), None]),
            ok([Some("essential"), Some("past_due"), None, None]),
        ];
        for rec in records {
            let imported = UserRecord {
                plan: rec.plan.into(),
                subscription_status: rec.status.clone(),
                stripe_subscription_id: rec.subscription.clone(),
                trial_ends_at: rec.trial_ends_at,
                current_period_end: rec.current_period_end,
                trial_used: rec.trial_used.into(),
                ..row("free")
            };
            assert_eq!(decide(Some(&imported), &rec, "free"), Action::Skip("up_to_date"), "{rec:?}");
            assert_eq!(check(Some(&imported), &rec, "free"), Check::Match, "{rec:?}");
        }
        // Imported while the trial ran, verified after its end: D1 moved on, not a mismatch.
        let running = ok([Some("trial"), None, Some("1700000000"), None]);
        let imported = UserRecord {
            plan: running.plan.into(),
            subscription_status: running.status.clone(),
            trial_ends_at: running.trial_ends_at,
            trial_used: 1,
            ..row("free")
        };
        let raw = [Some("trial".to_string()), None, Some("1700000000".to_string()), None];
        let later = parse("u1", &raw, &Catalog::builtin(), T + 1).unwrap().unwrap();
        assert_eq!(later.plan, "free");
        assert_eq!(check(Some(&imported), &later, "free"), Check::ChangedSince);
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
            (r#"{"status":"active","customerId":"acct_1"}"#, "the customer is not a cus_… id"),
            (r#"{"status":"active","subscription":7}"#, "the subscription is not a sub_… id"),
            (r#"{"status":"active","currentPeriodEnd":"soon"}"#, "the period end is not a time"),
            (r#"{"status":"active","updatedAt":true}"#, "the update time is not a time"),
        ];
        for (value, reason) in cases {
            assert_eq!(err([Some("pro"), Some(value), None, None]), ("billingStatus:u1".into(), reason), "{value}");
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
            ("trialUsedByUid:u1".into(), "not true/false or a time")
        );
    }

    #[test]
    fn unknown_plans_are_errors_for_the_plan_key() {
        assert_eq!(err([Some("gold"), None, None, None]), ("planByUid:u1".into(), "an unknown plan"));
        assert_eq!(err([Some("\"pro"), None, None, None]), ("planByUid:u1".into(), "a broken JSON string"));
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
                ("billingStatus:u1".into(), "a live status without a plan")
            );
        }
    }

    #[test]
    fn the_first_broken_value_is_the_one_reported() {
        assert_eq!(err([Some("gold"), Some("nope"), None, None]).0, "planByUid:u1");
        assert_eq!(err([Some("pro"), Some("nope"), Some("x"), None]).0, "billingStatus:u1");
        assert_eq!(err([Some("pro"), None, Some("x"), Some("maybe")]).0, "trialEndByUid:u1");
    }

    fn row(plan: &str) -> UserRecord {
        UserRecord::from_row(serde_json::json!({
            "id": "usr_1", "auth_id": "u1", "plan": plan, "plan_updated_at": 100, "created_at": 100, "updated_at": 100
        }))
        .unwrap()
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
        let synced = UserRecord { stripe_synced_at: Some(1), ..row("free") };
        assert_eq!(decide(Some(&synced), &pro, "free"), Action::Skip("changed_by_stripe"));
        let changed = UserRecord { plan: "premium".into(), plan_updated_at: 200, ..row("free") };
        assert_eq!(decide(Some(&changed), &pro, "free"), Action::Skip("d1_newer"));
        let older = LegacyPlan { as_of: Some(150), ..pro.clone() };
        assert_eq!(decide(Some(&changed), &older, "free"), Action::Skip("d1_newer"));
        let newer = LegacyPlan { as_of: Some(250), ..pro.clone() };
        assert_eq!(decide(Some(&changed), &newer, "free"), Action::Update);
        let renamed = UserRecord { plan_updated_at: 150, ..row("free") };
        assert_eq!(decide(Some(&renamed), &pro, "free"), Action::Skip("d1_newer"), "its plan changed once");
    }

    #[test]
    fn a_row_holding_the_record_is_up_to_date() {
        let pro = LegacyPlan { trial_used: true, current_period_end: Some(9), ..rec("pro", Some("active")) };
        let same = UserRecord {
            plan: "pro".into(),
            subscription_status: Some("active".into()),
            current_period_end: Some(9),
            trial_used: 1,
            plan_updated_at: 5,
            ..row("pro")
        };
        assert_eq!(decide(Some(&same), &pro, "free"), Action::Skip("up_to_date"));
        let no_trial_yet = UserRecord { trial_used: 0, ..same.clone() };
        assert_eq!(decide(Some(&no_trial_yet), &pro, "free"), Action::Skip("d1_newer"));
        assert_eq!(decide(Some(&row("free")), &rec("free", None), "free"), Action::Skip("up_to_date"));
    }

    #[test]
    fn verify_counts_only_what_a_backfill_would_still_import_as_a_mismatch() {
        let pro = rec("pro", Some("active"));
        assert_eq!(check(None, &pro, "free"), Check::Missing);
        assert_eq!(check(Some(&row("free")), &pro, "free"), Check::Differs("plan"));
        let status = UserRecord { plan: "pro".into(), ..row("free") };
        assert_eq!(
            check(Some(&status), &pro, "free"),
            Check::ChangedSince,
            "pro without status was changed by someone"
        );
        let same = UserRecord {
            plan: "pro".into(),
            subscription_status: Some("active".into()),
            stripe_synced_at: Some(1),
            ..row("free")
        };
        assert_eq!(check(Some(&same), &pro, "free"), Check::Match);
        let moved = UserRecord { plan: "premium".into(), ..same };
        assert_eq!(check(Some(&moved), &pro, "free"), Check::ChangedSince);
        let untouched_status = row("free");
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

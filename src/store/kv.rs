//! Typed KV keys. Every key plangate reads or writes is built here, so the formats
//! that other readers depend on are in one place and pinned by tests.

/// `APP_KV`: cached JWKS for one URL (the URL is hashed to keep keys short).
pub fn jwks_cache_key(jwks_url: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(jwks_url.as_bytes());
    format!("jwks:v1:{}", hex::encode(&digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_cache_key_format_is_stable() {
        let k = jwks_cache_key("https://example.com/jwks");
        assert!(k.starts_with("jwks:v1:"));
        assert_eq!(k.len(), "jwks:v1:".len() + 24);
        assert_eq!(k, jwks_cache_key("https://example.com/jwks"));
        assert_ne!(k, jwks_cache_key("https://example.com/jwks2"));
    }
}

/// The keys older readers use for a user's plan, written while `DUAL_WRITE_KV` is on.
/// `uid` is the identity provider's user id (the `auth_id`).
pub fn plan_key(uid: &str) -> String {
    format!("planByUid:{uid}")
}
pub fn billing_status_key(uid: &str) -> String {
    format!("billingStatus:{uid}")
}
pub fn trial_end_key(uid: &str) -> String {
    format!("trialEndByUid:{uid}")
}
pub fn trial_used_key(uid: &str) -> String {
    format!("trialUsedByUid:{uid}")
}
/// The entitlements cache of a user, by auth id (the JWT `sub`, so a cache hit needs
/// no D1 read to find the user); deleted on every change of what it shows.
pub fn entitlements_key(auth_id: &str) -> String {
    format!("entitlements:{auth_id}")
}

/// How long a cached entitlements answer is served (KV's shortest expiry).
pub const ENTITLEMENTS_TTL_SECONDS: i64 = 60;

/// The cached value: when it was computed and the body.
pub fn entitlements_value(body: &serde_json::Value, computed_at: i64) -> String {
    crate::util::json_text(&crate::obj! {"v": 1, "at": computed_at, "body": body.clone()})
}

/// What an invalidation leaves in place of the cached value: when it happened. A read
/// that computed its answer before then must not put it back (see [`superseded`]).
pub fn entitlements_tombstone(now: i64) -> String {
    crate::util::json_text(&crate::obj! {"v": 1, "gone": now})
}

/// Whether the stored `current` value says the cache was invalidated at or after
/// `computed_at` (the second is the unit: a change in the same second wins).
pub fn superseded(current: &str, computed_at: i64) -> bool {
    serde_json::from_str::<serde_json::Value>(current)
        .ok()
        .and_then(|v| v.get("gone").and_then(serde_json::Value::as_i64))
        .is_some_and(|gone| gone >= computed_at)
}

/// When a cached value was computed.
pub fn computed_at(value: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(value).ok()?.get("at")?.as_i64()
}

/// The body of a cached value still fresh at `now`; `None` for a stale or unreadable one.
pub fn fresh_entitlements(value: &str, now: i64) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(value).ok()?;
    let at = v.get("at")?.as_i64()?;
    if v.get("v")?.as_i64()? != 1 || now < at || now - at >= ENTITLEMENTS_TTL_SECONDS {
        return None;
    }
    Some(v.get_mut("body")?.take()).filter(serde_json::Value::is_object)
}

/// What the legacy keys should hold for `user`: `Some(value)` to put, `None` to delete.
/// Values are the old system's plain strings: the reported plan (`trial` while
/// trialing), the Stripe status (`none` without a subscription), the trial end in
/// unix **milliseconds**, and `"true"` once a trial was used.
pub fn legacy_plan_values(user: &crate::domain::account::UserRecord) -> Vec<(String, Option<String>)> {
    let uid = user.auth_id.as_str();
    vec![
        (plan_key(uid), Some(user.reported_plan().to_string())),
        (billing_status_key(uid), Some(user.subscription_status.clone().unwrap_or_else(|| "none".into()))),
        (trial_end_key(uid), user.trial_ends_at.map(|t| (t * 1000).to_string())),
        (trial_used_key(uid), (user.trial_used != 0).then(|| "true".to_string())),
    ]
}

/// The record of values written (`users.kv_written`): JSON, key → value or null.
pub fn written_record(values: &[(String, Option<String>)]) -> String {
    // Inserted one by one: collecting into a map links a sort and a bulk B-tree build.
    let mut map = serde_json::Map::new();
    for (k, v) in values {
        map.insert(k.clone(), v.as_ref().map_or(serde_json::Value::Null, |v| v.as_str().into()));
    }
    crate::util::json_text(&serde_json::Value::Object(map))
}

/// Which of `values` a flush must write, given the record of the last completed one:
/// every key whose value differs from it, and every key when there is no readable
/// record (never written, or forgotten by a re-sync).
pub fn changed_values<'v>(
    values: &'v [(String, Option<String>)],
    record: Option<&str>,
) -> Vec<&'v (String, Option<String>)> {
    let record = record.and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok());
    values
        .iter()
        .filter(|(key, value)| match record.as_ref().and_then(|r| r.get(key.as_str())) {
            Some(serde_json::Value::Null) => value.is_some(),
            Some(serde_json::Value::String(old)) => value.as_deref() != Some(old.as_str()),
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod legacy_tests {
    use super::*;
    use crate::domain::account::UserRecord;

    fn user() -> UserRecord {
        UserRecord::from_row(serde_json::json!({
            "id": "usr_1", "auth_id": "fb-uid-1", "email": null, "plan": "essential",
            "stripe_customer_id": "cus_1", "stripe_subscription_id": "sub_1", "subscription_status": "trialing",
            "trial_ends_at": 1700000000, "current_period_end": null, "cancel_at": null,
            "scheduled_plan": null, "scheduled_at": null,
            "plan_updated_at": 1, "created_at": 1, "updated_at": 1, "stripe_synced_at": 1, "trial_used": 1
        }))
        .unwrap()
    }

    #[test]
    fn the_legacy_key_names_and_value_formats_are_pinned() {
        let v = legacy_plan_values(&user());
        assert_eq!(
            v,
            vec![
                ("planByUid:fb-uid-1".to_string(), Some("trial".to_string())),
                ("billingStatus:fb-uid-1".to_string(), Some("trialing".to_string())),
                ("trialEndByUid:fb-uid-1".to_string(), Some("1700000000000".to_string())),
                ("trialUsedByUid:fb-uid-1".to_string(), Some("true".to_string())),
            ]
        );
        assert_eq!(entitlements_key("usr_1"), "entitlements:usr_1");
    }

    #[test]
    fn a_user_without_subscription_or_trial_gets_deletions_for_the_optional_keys() {
        let mut u = user();
        u.plan = "free".into();
        u.subscription_status = None;
        u.trial_ends_at = None;
        u.trial_used = 0;
        let v = legacy_plan_values(&u);
        assert_eq!(v[0].1.as_deref(), Some("free"));
        assert_eq!(v[1].1.as_deref(), Some("none"));
        assert_eq!(v[2].1, None);
        assert_eq!(v[3].1, None);
    }

    #[test]
    fn a_flush_writes_only_the_keys_whose_value_changed_since_the_last_one() {
        let before = legacy_plan_values(&user());
        let record = written_record(&before);
        assert!(changed_values(&before, Some(&record)).is_empty(), "nothing changed: nothing written");
        let mut u = user();
        u.subscription_status = Some("past_due".into());
        u.trial_ends_at = None;
        let after = legacy_plan_values(&u);
        let keys: Vec<&str> = changed_values(&after, Some(&record)).iter().map(|(k, _)| k.as_str()).collect();
        // `trial` → `essential` (no longer trialing), the status, the trial end deleted.
        assert_eq!(keys, ["planByUid:fb-uid-1", "billingStatus:fb-uid-1", "trialEndByUid:fb-uid-1"]);
        assert_eq!(changed_values(&after, Some(&written_record(&after))).len(), 0);
        // No record, an unreadable one, or one without the key: everything is written.
        assert_eq!(changed_values(&after, None).len(), 4);
        assert_eq!(changed_values(&after, Some("not json")).len(), 4);
        assert_eq!(changed_values(&after, Some("{}")).len(), 4);
        // A key recorded as deleted is written again once it has a value.
        let deleted = written_record(&[("trialUsedByUid:fb-uid-1".to_string(), None)]);
        let with_trial = legacy_plan_values(&user());
        assert!(changed_values(&with_trial, Some(&deleted)).iter().any(|(k, _)| k == "trialUsedByUid:fb-uid-1"));
    }

    #[test]
    fn the_entitlements_cache_key_and_value_formats_are_pinned() {
        assert_eq!(entitlements_key("fb-uid-1"), "entitlements:fb-uid-1");
        let body = serde_json::json!({"ok": true, "plan": "pro"});
        let v = entitlements_value(&body, 1_000);
        assert_eq!(v, r#"{"at":1000,"body":{"ok":true,"plan":"pro"},"v":1}"#);
        assert_eq!(fresh_entitlements(&v, 1_000), Some(body.clone()));
        assert_eq!(fresh_entitlements(&v, 1_059), Some(body));
        assert_eq!(fresh_entitlements(&v, 1_060), None, "60 s at most");
        assert_eq!(fresh_entitlements(&v, 999), None, "computed in the future: not trusted");
        assert_eq!(fresh_entitlements("not json", 1_000), None);
        assert_eq!(fresh_entitlements(r#"{"v":2,"at":1000,"body":{}}"#, 1_000), None);
        assert_eq!(fresh_entitlements(r#"{"v":1,"at":1000,"body":3}"#, 1_000), None);
        assert_eq!(computed_at(&v), Some(1_000));
    }

    #[test]
    fn an_invalidation_leaves_a_tombstone_that_an_older_read_cannot_overwrite() {
        let t = entitlements_tombstone(2_000);
        assert_eq!(t, r#"{"gone":2000,"v":1}"#);
        assert_eq!(fresh_entitlements(&t, 2_000), None, "a tombstone is a miss");
        assert!(superseded(&t, 1_999), "computed before the change: not cached");
        assert!(superseded(&t, 2_000), "the same second: the change wins");
        assert!(!superseded(&t, 2_001), "computed after it: cached");
        let value = entitlements_value(&serde_json::json!({"ok": true}), 1_500);
        assert!(!superseded(&value, 1_000), "a cached value is no invalidation");
        assert!(!superseded("garbage", 1_000));
    }
}

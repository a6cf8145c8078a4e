//! `POST /api/admin/purge-test-accounts {match, dryRun}` (README, "Purging test
//! accounts"). Never calls Stripe.

use serde_json::{json, Value};

use super::credit_import::object;
use super::{admin, Ctx, Reply};
use crate::domain::credit_import::email_hash;
use crate::domain::purge::{email_pattern_suffix, glob_match};
use crate::error::ApiError;
use crate::store::db::Row;
use crate::store::{kv, purge};

/// Accounts per call: five KV deletes each stay inside an invocation's limits.
pub const MAX_ACCOUNTS: usize = 100;

fn invalid(message: &str) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

/// What `match` asks for: `(by email, the suffix or the auth ids as JSON, the pattern)`.
fn matcher(m: Option<&Value>) -> Result<(bool, String, &str), ApiError> {
    match m {
        Some(Value::String(pattern)) => {
            let pattern = pattern.trim();
            Ok((true, email_pattern_suffix(pattern).map_err(invalid)?, pattern))
        }
        Some(list @ Value::Array(ids))
            if (1..=MAX_ACCOUNTS).contains(&ids.len())
                && ids.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 128)) =>
        {
            Ok((false, list.to_string(), ""))
        }
        Some(Value::Array(_)) => Err(invalid("match: give from 1 to 100 auth ids (non-empty strings)")),
        _ => Err(invalid("match must be an email pattern such as *@test.example.com, or a list of auth ids")),
    }
}

pub async fn purge_test_accounts(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let body = ctx.json_object()?;
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "match" | "dryRun")) {
        return Err(ApiError::InvalidRequest(format!("unknown field `{k}`, expected match, dryRun")));
    }
    let dry_run = match body.get("dryRun") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("dryRun must be true or false")),
    };
    let (by_email, param, pattern) = matcher(body.get("match"))?;
    let (mut users, mut ids, mut hashes, mut keys, mut remaining) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for Row(a) in purge::accounts(ctx.db, by_email, &param).await? {
        // At most MAX_ACCOUNTS in a call; a pattern's suffix found them, the glob decides.
        if by_email && !a["email"].as_str().is_some_and(|e| glob_match(pattern, e)) {
            continue;
        }
        if users.len() == MAX_ACCOUNTS {
            remaining += 1;
            continue;
        }
        if let Some(id) = a["userId"].as_str() {
            ids.push(Value::from(id));
        }
        if let Some(e) = a["email"].as_str() {
            hashes.push(Value::String(email_hash(e)));
        }
        let uid = a["authId"].as_str().unwrap_or_default();
        for key in [
            kv::plan_key(uid),
            kv::billing_status_key(uid),
            kv::trial_end_key(uid),
            kv::trial_used_key(uid),
            kv::entitlements_key(uid),
        ] {
            keys.push(Value::String(key));
        }
        users.push(a);
    }
    let count = users.len();
    let rows = purge::purge(ctx.db, &Value::Array(ids).to_string(), &Value::Array(hashes).to_string(), dry_run).await?;
    let mut kv_failed = Vec::new();
    if !dry_run {
        let store = ctx.app_kv();
        for key in &keys {
            let key = key.as_str().unwrap_or_default();
            let deleted = match &store {
                Some(s) => s.delete(key).await.is_ok(),
                None => false,
            };
            if !deleted {
                kv_failed.push(Value::from(key));
            }
        }
    }
    crate::log::info(ctx.request_id, "accounts.purge", json!({"dryRun": dry_run, "accounts": count}));
    Ok(Reply::ok(object(vec![
        ("ok", Value::Bool(true)),
        ("dryRun", Value::Bool(dry_run)),
        ("users", Value::Array(users)),
        ("rows", rows),
        ("kvKeys", Value::Array(keys)),
        ("remaining", Value::from(remaining)),
        ("kvFailed", Value::Array(kv_failed)),
    ])))
}

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

/// A purge request: dry run or not, how to find the accounts (by email suffix, or the
/// auth ids as JSON) and the email pattern.
struct Request {
    dry_run: bool,
    by_email: bool,
    param: String,
    pattern: String,
}

#[inline(never)]
fn request(ctx: &Ctx<'_>) -> Result<Request, ApiError> {
    admin::authorize(ctx)?;
    let body = ctx.json_body()?;
    body.only(&["match", "dryRun"])?;
    // A real run only when asked for.
    let dry_run = body.field("dryRun").is_none() || body.flag("dryRun")?;
    match body.field("match") {
        Some(Value::String(pattern)) => {
            let pattern = pattern.trim();
            let suffix = email_pattern_suffix(pattern).map_err(invalid)?;
            Ok(Request { dry_run, by_email: true, param: suffix, pattern: pattern.to_string() })
        }
        Some(list @ Value::Array(ids))
            if (1..=MAX_ACCOUNTS).contains(&ids.len())
                && ids.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 128)) =>
        {
            Ok(Request { dry_run, by_email: false, param: list.to_string(), pattern: String::new() })
        }
        Some(Value::Array(_)) => Err(invalid("match: give from 1 to 100 auth ids (non-empty strings)")),
        _ => Err(invalid("match must be an email pattern such as *@test.example.com, or a list of auth ids")),
    }
}

/// The accounts to purge (the glob decides among those the suffix found; at most
/// MAX_ACCOUNTS), their user ids and email hashes (JSON arrays), their KV keys, and how
/// many more match.
struct Plan {
    users: Vec<Value>,
    ids: String,
    hashes: String,
    keys: Vec<String>,
    remaining: usize,
}

#[inline(never)]
fn plan(req: &Request, rows: Vec<Row>) -> Plan {
    let (mut users, mut ids, mut hashes, mut keys, mut remaining) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for row in rows {
        let email = row.text("email");
        if req.by_email && !email.as_deref().is_some_and(|e| glob_match(&req.pattern, e)) {
            continue;
        }
        if users.len() == MAX_ACCOUNTS {
            remaining += 1;
            continue;
        }
        if let Some(id) = row.text("userId") {
            ids.push(Value::String(id));
        }
        if let Some(e) = email {
            hashes.push(Value::String(email_hash(&e)));
        }
        let uid = row.text("authId").unwrap_or_default();
        keys.extend([
            kv::plan_key(&uid),
            kv::billing_status_key(&uid),
            kv::trial_end_key(&uid),
            kv::trial_used_key(&uid),
            kv::entitlements_key(&uid),
        ]);
        users.push(row.0);
    }
    Plan { users, ids: Value::Array(ids).to_string(), hashes: Value::Array(hashes).to_string(), keys, remaining }
}

pub async fn purge_test_accounts(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let req = request(ctx)?;
    let plan = plan(&req, purge::accounts(ctx.db, req.by_email, &req.param).await?);
    let rows = purge::purge(ctx.db, &plan.ids, &plan.hashes, req.dry_run).await?;
    let mut kv_failed = Vec::new();
    if !req.dry_run {
        let store = ctx.app_kv();
        for key in &plan.keys {
            let deleted = match &store {
                Some(s) => s.delete(key).await.is_ok(),
                None => false,
            };
            if !deleted {
                kv_failed.push(Value::from(key.as_str()));
            }
        }
    }
    Ok(reply(ctx, req.dry_run, plan, rows, kv_failed))
}

#[inline(never)]
fn reply(ctx: &Ctx<'_>, dry_run: bool, plan: Plan, rows: Value, kv_failed: Vec<Value>) -> Reply {
    crate::log::info(ctx.request_id, "accounts.purge", json!({"dryRun": dry_run, "accounts": plan.users.len()}));
    let keys = plan.keys.into_iter().map(Value::String).collect();
    Reply::ok(object(vec![
        ("ok", Value::Bool(true)),
        ("dryRun", Value::Bool(dry_run)),
        ("users", Value::Array(plan.users)),
        ("rows", rows),
        ("kvKeys", Value::Array(keys)),
        ("remaining", Value::from(plan.remaining)),
        ("kvFailed", Value::Array(kv_failed)),
    ]))
}

//! `POST /api/admin/purge-test-accounts {match, dryRun}` (README, "Purging test
//! accounts"). Never calls Stripe.

use serde_json::Value;

use super::{admin, Ctx, Reply};
use crate::domain::customer::{email_hash, email_key, mapped_id, record_key};
use crate::domain::legacy_plan;
use crate::domain::purge::{email_pattern_suffix, glob_match, may_bill};
use crate::error::ApiError;
use crate::store::db::Row;
use crate::store::kv_store::KvStore;
use crate::store::{kv, purge};

/// Accounts per call: their KV deletes (five keys, then the four plan keys again),
/// customer keys and [`MAX_RETRIES`] stay inside an invocation's 1,000 KV operations.
pub const MAX_ACCOUNTS: usize = 50;

/// Failed KV deletes a call tries again (each after 100 or 400 ms): at most 20 more KV
/// operations and a few seconds of waiting.
const MAX_RETRIES: u32 = 20;

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
            Ok(Request { dry_run, by_email: false, param: crate::util::json_text(list), pattern: String::new() })
        }
        Some(Value::Array(_)) => Err(invalid("match: give from 1 to 50 auth ids (non-empty strings)")),
        _ => Err(invalid("match must be an email pattern such as *@test.example.com, or a list of auth ids")),
    }
}

/// The accounts to purge (the glob decides among those the suffix found; at most
/// MAX_ACCOUNTS), their user ids and, for an email pattern, their email hashes (JSON
/// arrays: unlinked customer records with those emails go too; an auth-id list takes
/// only the records linked to the accounts, since an account's email may be one its
/// token never verified), their KV keys, and how many more match.
struct Plan {
    users: Vec<Value>,
    ids: String,
    hashes: String,
    keys: Vec<String>,
    remaining: usize,
    /// Accounts with a subscription that is live or may still become so: left alone.
    skipped: Vec<Value>,
}

#[inline(never)]
fn plan(req: &Request, rows: Vec<Row>) -> Plan {
    let (mut users, mut ids, mut hashes, mut remaining) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut skipped = Vec::new();
    for row in rows {
        let email = row.text("email");
        if req.by_email && !email.as_deref().is_some_and(|e| glob_match(&req.pattern, e)) {
            continue;
        }
        // Not a test account to throw away while Stripe may still bill it (as the
        // batch checks again: `store::purge`).
        let status = row.text("subscriptionStatus");
        let user = crate::obj! {
            "userId": row.text("userId"),
            "authId": row.text("authId"),
            "email": email.clone(),
            "subscriptionStatus": status.clone(),
        };
        if may_bill(status.as_deref(), row.int("hasSubscription") == Some(1)) {
            skipped.push(user);
            continue;
        }
        if users.len() == MAX_ACCOUNTS {
            remaining += 1;
            continue;
        }
        if let Some(id) = row.text("userId") {
            ids.push(Value::String(id));
        }
        if let Some(h) = email.as_deref().filter(|_| req.by_email).and_then(email_hash) {
            hashes.push(Value::String(h));
        }
        users.push(user);
    }
    let (ids, hashes) = (crate::util::json_text(&Value::Array(ids)), crate::util::json_text(&Value::Array(hashes)));
    Plan { users, ids, hashes, keys: Vec::new(), remaining, skipped }
}

/// A real run deletes the KV keys first and D1 only when every key is gone (else
/// `503 PURGE_INCOMPLETE` with the keys, D1 untouched: call again), so a key left
/// behind can never bring a purged account back through a read-through; then the plan
/// keys once more, in case a copy of a request in flight wrote them meanwhile.
pub async fn purge_test_accounts(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let req = request(ctx)?;
    let mut plan = plan(&req, purge::accounts(ctx.db, req.by_email, &req.param).await?);
    skip_legacy_billed(ctx, &mut plan).await?;
    let mut counted = purge::purge(ctx.db, &plan.ids, &plan.hashes, None).await?;
    settle(&mut plan, &counted);
    let legacy = KvStore::from_env(ctx.env, "LEGACY_AUTH_KV");
    let legacy_keys = legacy_customer_keys(legacy.as_ref(), &counted).await;
    let mut kv_failed = Vec::new();
    if !req.dry_run {
        let app_kv = ctx.app_kv();
        let mut retries = MAX_RETRIES;
        delete_all(ctx, app_kv.as_ref(), &plan.keys, &mut kv_failed, &mut retries).await;
        delete_all(ctx, legacy.as_ref(), &legacy_keys, &mut kv_failed, &mut retries).await;
        if !kv_failed.is_empty() {
            return Err(ApiError::Detailed {
                status: 503,
                code: "PURGE_INCOMPLETE",
                message: "some KV keys could not be deleted, so nothing was deleted from D1: call again".into(),
                fields: crate::obj! {"kvFailed": kv_failed},
            });
        }
        let records = crate::util::json_text(&Value::from(counted.customer_ids.clone()));
        counted = purge::purge(ctx.db, &plan.ids, &plan.hashes, Some(&records)).await?;
        settle(&mut plan, &counted);
        // The four plan keys of each account D1 held (the entitlements cache expires by
        // itself); an account only KV knew has no row a copy could come from, and one
        // that signed up meanwhile is not in this purge.
        let again: Vec<String> = (plan.users.iter().zip(plan.keys.chunks(5)))
            .filter(|(u, _)| !u["userId"].is_null())
            .flat_map(|(_, k)| k[..4].to_vec())
            .collect();
        delete_all(ctx, app_kv.as_ref(), &again, &mut kv_failed, &mut retries).await;
    }
    Ok(reply(ctx, req.dry_run, plan, counted.rows, legacy_keys, kv_failed))
}

/// Moves to `skipped` each account only the legacy KV keys know (an auth id of the list
/// with no D1 user) whose legacy plan record says Stripe may still bill it (`may_bill`,
/// the rule of `purgeable_users`), or cannot be read (`unreadable`: it may say so): a paying customer
/// not migrated yet is not a test account. Their four keys read in bulk, 25 accounts a
/// time.
async fn skip_legacy_billed(ctx: &Ctx<'_>, plan: &mut Plan) -> Result<(), ApiError> {
    let Some(kv) = ctx.app_kv() else { return Ok(()) };
    let catalog = crate::domain::plans::Catalog::builtin();
    let kv_only: Vec<usize> = (0..plan.users.len()).filter(|&i| plan.users[i]["userId"].is_null()).collect();
    let mut billed = Vec::new();
    for chunk in kv_only.chunks(25) {
        let uids: Vec<&str> = chunk.iter().map(|&i| plan.users[i]["authId"].as_str().unwrap_or_default()).collect();
        let values = crate::billing::legacy::plan_values(&kv, &uids).await?;
        for ((&i, uid), raw) in chunk.iter().zip(&uids).zip(values.chunks(4)) {
            match legacy_plan::parse(uid, raw, &catalog, ctx.now) {
                Ok(Some(rec)) if may_bill(rec.status.as_deref(), rec.subscription.is_some()) => {
                    billed.push((i, rec.status))
                }
                Err(_) => billed.push((i, Some("unreadable".to_string()))),
                _ => {}
            }
        }
    }
    // In the order they were listed.
    for (n, (i, status)) in billed.into_iter().enumerate() {
        let mut u = plan.users.remove(i - n);
        u["subscriptionStatus"] = status.into();
        plan.skipped.push(u);
    }
    Ok(())
}

/// Moves a user the count left out (billed or busy since it was listed) to `skipped`,
/// and lists the KV keys of those that stay: five per account.
fn settle(plan: &mut Plan, counted: &purge::Counted) {
    plan.keys.clear();
    for u in std::mem::take(&mut plan.users) {
        let stays = match u["userId"].as_str() {
            Some(id) => counted.user_ids.iter().any(|c| c == id),
            None => true,
        };
        if !stays {
            plan.skipped.push(u);
            continue;
        }
        let uid = u["authId"].as_str().unwrap_or_default();
        plan.keys.extend([
            kv::plan_key(uid),
            kv::billing_status_key(uid),
            kv::trial_end_key(uid),
            kv::trial_used_key(uid),
            kv::entitlements_key(uid),
        ]);
        plan.users.push(u);
    }
}

/// The legacy customer API's keys of the purged records (`LEGACY_AUTH_KV`, when bound): each
/// record, and each email mapping that names one of them (a mapping another record
/// answers for stays).
async fn legacy_customer_keys(legacy: Option<&KvStore>, counted: &purge::Counted) -> Vec<String> {
    // Without the namespace (retired) there is nothing to delete.
    let Some(kv) = legacy else { return Vec::new() };
    let mut keys: Vec<String> = counted.customer_ids.iter().map(|id| record_key(id)).collect();
    for hash in &counted.customer_hashes {
        let key = email_key(hash);
        if keys.contains(&key) {
            continue;
        }
        // An unreadable mapping is listed: a test account's mapping is better gone.
        let names_purged = match kv.get_text(&key).await {
            Ok(Some(text)) => counted.customer_ids.iter().any(|id| *id == mapped_id(&text)),
            Ok(None) => false,
            Err(_) => true,
        };
        if names_purged {
            keys.push(key);
        }
    }
    keys
}

/// Deletes `keys`, listing in `failed` those that could not be. A failed delete is tried
/// again after 100 then 400 ms (a busy moment of KV) while the call's `retries` last
/// (a bound on its KV operations and its wait); once a key failed every try, KV is
/// taken for down and the rest are tried once each.
async fn delete_all(
    ctx: &Ctx<'_>,
    store: Option<&KvStore>,
    keys: &[String],
    failed: &mut Vec<Value>,
    retries: &mut u32,
) {
    for key in keys {
        let Some(s) = store else {
            failed.push(Value::from(key.as_str()));
            continue;
        };
        let mut attempt = 0;
        while let Err(e) = s.delete(key).await {
            attempt += 1;
            if attempt == 3 || *retries == 0 {
                let fields = crate::obj! {"key": key.as_str(), "error": e.0};
                crate::log::warn(ctx.request_id, "purge.kv_delete_failed", fields);
                failed.push(Value::from(key.as_str()));
                *retries = 0;
                break;
            }
            *retries -= 1;
            worker::Delay::from(std::time::Duration::from_millis(100 << (2 * (attempt - 1)))).await;
        }
    }
}

#[inline(never)]
fn reply(ctx: &Ctx<'_>, dry_run: bool, plan: Plan, rows: Value, legacy: Vec<String>, kv_failed: Vec<Value>) -> Reply {
    crate::log::info(ctx.request_id, "accounts.purge", crate::obj! {"dryRun": dry_run, "accounts": plan.users.len()});
    Reply::ok(crate::obj! {
        "ok": true,
        "dryRun": dry_run,
        "users": plan.users,
        "rows": rows,
        "kvKeys": plan.keys,
        "legacyCustomerKeys": legacy,
        "remaining": plan.remaining,
        "skipped": plan.skipped,
        "kvFailed": kv_failed,
    })
}

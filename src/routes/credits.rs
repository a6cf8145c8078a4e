//! Credits: buying a pack (`POST /api/credits/checkout`), spending
//! (`POST /api/credits/spend`), the balance and history (`GET /api/credits`), and the
//! admin's adjustments and views (`/api/admin/credits*`).

use serde_json::Value;

use super::{admin, int_field, required_text, Ctx, Reply};
use crate::billing::credits::MAX_AMOUNT;
use crate::billing::entitlements::MAX_KEY_LEN;
use crate::domain::plans::Catalog;
use crate::domain::time::iso8601;
use crate::error::ApiError;
use crate::store::credits::{self, Entry};
use crate::store::users;

const PAGE_DEFAULT: i64 = 20;
const PAGE_MAX: i64 = 100;

/// `POST /api/credits/checkout {pack, returnUrl?}` → `{ok, action:"redirect", url, sessionId}`.
pub async fn checkout(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.json_object()?;
    let id = required_text(&body, "pack", 64)?;
    let pack = Catalog::builtin().pack(&id).ok_or_else(|| {
        ApiError::coded(
            400,
            "UNKNOWN_PACK",
            format!("Unknown credit pack `{}`", id.chars().take(40).collect::<String>()),
        )
    })?;
    let price = ctx.cfg.pack_price(pack.id).ok_or_else(|| {
        ApiError::coded(400, "PACK_NOT_AVAILABLE", format!("The pack `{}` is not for sale here", pack.id))
    })?;
    let given = match body.get("returnUrl") {
        Some(Value::String(s)) => Some(s.as_str()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::InvalidRequest("returnUrl must be a string".into())),
    };
    let url = super::billing::required_return_url(ctx, given)?;
    let who = ctx.identity().await?;
    let (url, session) = ctx.billing().buy_pack(&who, pack, price, url).await?;
    Ok(Reply::ok(crate::obj! {"ok": true, "action": "redirect", "url": url, "sessionId": session}))
}

/// `POST /api/credits/spend {amount, reason, idempotencyKey}` → `{ok, spent, balance,
/// transactionId, replayed}`; never below zero (`402 INSUFFICIENT_CREDITS`).
pub async fn spend(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.json_object()?;
    let amount = int_field(&body, "amount", 1..=MAX_AMOUNT, None)?;
    let reason = required_text(&body, "reason", 200)?;
    let key = required_text(&body, "idempotencyKey", MAX_KEY_LEN)?;
    let who = ctx.identity().await?;
    let billing = ctx.billing();
    let user = billing.user_for(&who).await?;
    let spent = billing.spend(&user, amount, &reason, &key).await?;
    ctx.forget_entitlements(&user.auth_id).await;
    Ok(Reply::ok(crate::obj! {
        "ok": true,
        "spent": spent.spent,
        "balance": spent.balance,
        "transactionId": spent.transaction_id,
        "replayed": spent.replayed,
    })
    .header("Cache-Control", "no-store"))
}

fn entry_json(e: &Entry) -> Value {
    let metadata = e.metadata.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(Value::Null);
    crate::obj! {
        "id": e.id.as_str(),
        "delta": e.delta,
        "reason": e.reason.as_str(),
        "createdAt": iso8601(e.created_at),
        "metadata": metadata,
    }
}

/// `cursor` = `<created_at>.<seq>` of the last row of the previous page.
fn parse_cursor(cursor: Option<String>) -> Result<Option<(i64, i64)>, ApiError> {
    let Some(c) = cursor else { return Ok(None) };
    let bad = || ApiError::InvalidRequest("cursor is not one this API gave".into());
    let (at, seq) = c.split_once('.').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, seq.parse().map_err(|_| bad())?)))
}

/// One page of a user's ledger (newest first), the balance, and the next cursor.
async fn page(ctx: &Ctx<'_>, user_id: &str) -> Result<Value, ApiError> {
    let limit = ctx.query_limit(PAGE_DEFAULT, PAGE_MAX)?;
    let after = parse_cursor(ctx.query("cursor"))?;
    let mut rows = credits::history(ctx.db, user_id, after, (limit + 1) as u32).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = rows.last().filter(|_| more).map(|e| format!("{}.{}", e.created_at, e.seq));
    let balance = credits::balance(ctx.db, user_id).await?;
    Ok(crate::obj! {
        "ok": true,
        "balance": balance,
        "transactions": rows.iter().map(entry_json).collect::<Vec<_>>(),
        "nextCursor": next,
    })
}

/// `GET /api/credits?limit=&cursor=`: the caller's balance and ledger history.
pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let user = ctx.billing().user_for(&who).await?;
    Ok(Reply::ok(page(ctx, &user.id).await?).header("Cache-Control", "private, no-store"))
}

/// `GET /api/admin/credits?userId=&limit=&cursor=`: any user's balance and history,
/// metadata included (refund shortfalls, adjustment notes).
pub async fn admin_list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let user_id = ctx.query("userId").ok_or_else(|| ApiError::InvalidRequest("userId is required".into()))?;
    let user = users::find_by_id(ctx.db, &user_id).await?.ok_or_else(user_not_found)?;
    let mut body = page(ctx, &user.id).await?;
    body["userId"] = user.id.as_str().into();
    Ok(Reply::ok(body))
}

fn user_not_found() -> ApiError {
    ApiError::coded(404, "USER_NOT_FOUND", "No such user")
}

/// `POST /api/admin/credits/adjust {userId, delta, reason}`: an audited correction
/// (ledger reason `adjustment`, the note in its metadata).
pub async fn admin_adjust(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let body = ctx.json_object()?;
    let note = match body.get("reason") {
        Some(Value::String(s)) if !s.trim().is_empty() => required_text(&body, "reason", 500)?,
        _ => return Err(ApiError::coded(400, "REASON_REQUIRED", "An adjustment needs a reason (it is audited)")),
    };
    let delta = int_field(&body, "delta", -MAX_AMOUNT..=MAX_AMOUNT, None)?;
    if delta == 0 {
        return Err(ApiError::InvalidRequest("delta must not be 0".into()));
    }
    let user_id = required_text(&body, "userId", 64)?;
    let user = users::find_by_id(ctx.db, &user_id).await?.ok_or_else(user_not_found)?;
    let done = ctx.billing().adjust(&user, delta, &note).await?;
    ctx.forget_entitlements(&user.auth_id).await;
    crate::log::info(
        ctx.request_id,
        "credits.adjusted",
        crate::obj! {"userId": user.id.as_str(), "delta": delta, "transactionId": done.transaction_id.as_str()},
    );
    Ok(Reply::ok(crate::obj! {"ok": true, "balance": done.balance, "transactionId": done.transaction_id}))
}

/// `GET /api/admin/credits/shortfalls`: refunds that could not take back every credit
/// (already spent), newest first.
pub async fn admin_shortfalls(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let rows = credits::shortfalls(ctx.db, 200).await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            crate::obj! {
                "transactionId": r.text("id"),
                "userId": r.text("user_id"),
                "shortfall": r.int("shortfall"),
                "paymentIntent": r.text("payment_intent"),
                "createdAt": r.int("created_at").map(iso8601),
            }
        })
        .collect();
    Ok(Reply::ok(crate::obj! {"ok": true, "shortfalls": list}))
}

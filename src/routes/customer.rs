//! The customer API on the legacy customer API's paths (`/customer/me`,
//! `/customer/{id}`, `/customer/by-email/{email}`, `POST /customer`,
//! `PATCH /customer/me`) and the admin's backfill and verification of the records
//! still in `LEGACY_AUTH_KV` (`/api/admin/migrations/customers[/verify]`).
//!
//! Who sees a record: the customer themself (the user it is linked to, or whose
//! verified email it has), a service token, the admin. Any other user gets 403 whether
//! or not the record exists.

use serde_json::Value;

use super::{admin, Ctx, Reply};
use crate::auth::jwt::Identity;
use crate::auth::Caller;
use crate::billing::customers::{conflict, Customers};
use crate::domain::customer::{email_hash, normalize_email, valid_email, valid_new_id, Customer, ProfileError};
use crate::error::ApiError;
use crate::obj;
use crate::store::customers::Stored;

/// What a read names: the caller's own record, a customerId, an email.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Me,
    Id,
    Email,
}

fn customers<'a>(ctx: &'a Ctx<'_>) -> Customers<'a> {
    Customers {
        db: ctx.db,
        legacy: crate::store::kv_store::KvStore::from_env(ctx.env, "LEGACY_AUTH_KV"),
        dual_write: ctx.cfg.dual_write_kv,
        now: ctx.now,
        request_id: ctx.request_id,
    }
}

fn reply(s: Stored) -> Reply {
    Reply::ok(obj! {"ok": true, "customer": s.customer.to_json()}).header("Cache-Control", "no-store")
}

fn not_found() -> ApiError {
    ApiError::coded(404, "CUSTOMER_RECORD_NOT_FOUND", "No customer record (an unverified email links none)")
}

/// The signed-in user's id and own record (linked by verified email if need be).
async fn own(ctx: &Ctx<'_>, who: &Identity) -> Result<(String, Option<Stored>), ApiError> {
    let user = ctx.billing().user_for(who).await?;
    Ok((user.id.clone(), customers(ctx).for_user(who, &user.id).await?))
}

/// `GET /customer/me`, `GET /customer/{id}`, `GET /customer/by-email/{email}`.
pub async fn read(ctx: &Ctx<'_>, what: Read, raw: &str) -> Result<Reply, ApiError> {
    // A path segment decoded; `+` stays a plus (common in emails).
    let key = crate::util::percent_decode(&raw.replace('+', "%2B"));
    let found = match ctx.caller().await? {
        Caller::User(who) => {
            let theirs = match what {
                Read::Email => {
                    who.email_verified && who.email.as_deref().map(normalize_email) == Some(normalize_email(&key))
                }
                _ => true,
            };
            let own = if theirs { own(ctx, &who).await?.1 } else { None };
            match own {
                Some(s) if what != Read::Id || s.customer.id == key => Some(s),
                None if what == Read::Me || (theirs && what == Read::Email) => None,
                _ => return Err(ApiError::Forbidden("only the customer themself, a service or the admin may read it")),
            }
        }
        // As every `/me` path: only a user's token signs a user in (401 for a service's or the admin's).
        _ if what == Read::Me => return Err(ApiError::AuthRequired("a user's token")),
        _ => match what {
            Read::Email => match email_hash(&key) {
                Some(hash) => customers(ctx).find(true, &hash).await?,
                None => None,
            },
            _ => customers(ctx).find(false, &key).await?,
        },
    };
    found.map(reply).ok_or_else(not_found)
}

fn profile_error(e: ProfileError) -> ApiError {
    match e {
        ProfileError::NotWritable(field) => ApiError::Detailed {
            status: 400,
            code: "FIELD_NOT_WRITABLE",
            message: format!("`{field}` is not a profile field: it cannot be changed here"),
            fields: obj! {"field": field.as_str()},
        },
        ProfileError::Invalid(m) => ApiError::InvalidRequest(m),
    }
}

/// `POST /customer`. A user creates their own record (needs a verified email, which
/// becomes the record's; profile fields only). A service or the admin creates any
/// record from the legacy JSON (`customerId` optional). `409 CUSTOMER_EXISTS` when the
/// id or the email already has a record.
pub async fn create(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    // Who asks before what they send: a caller without a valid token gets 401 whatever the body.
    let caller = ctx.caller().await?;
    let mut body = ctx.json_object()?;
    let new_id = format!("cust_{}", crate::util::random_hex(12)?);
    let (mut c, user_id) = match caller {
        Caller::User(who) => {
            let Some(email) = who.email.clone().filter(|_| who.email_verified) else {
                return Err(ApiError::Forbidden("creating a customer record needs a verified email"));
            };
            let mut c = Customer { id: new_id, ..Customer::default() };
            c.text[0] = Some(email);
            c.apply_profile(&body).map_err(profile_error)?;
            let (user_id, existing) = own(ctx, &who).await?;
            if existing.is_some() {
                return Err(conflict());
            }
            (c, Some(user_id))
        }
        _ => {
            if body.get("customerId").is_none_or(Value::is_null) {
                body.insert("customerId".into(), new_id.into());
            }
            if body.get("email").is_some_and(|e| !e.is_null() && !e.as_str().is_some_and(valid_email)) {
                return Err(ApiError::InvalidRequest("email must be an email address".into()));
            }
            let c = Customer::from_legacy(None, Value::Object(body)).map_err(ApiError::InvalidRequest)?;
            if !valid_new_id(&c.id) {
                return Err(ApiError::InvalidRequest("customerId: 1 to 128 printable ASCII characters, no `/`".into()));
            }
            (c, None)
        }
    };
    c.times = [c.times[0].or(Some(ctx.now)), c.times[1].or(Some(ctx.now))];
    let stored = customers(ctx).create(&c, user_id.as_deref()).await?;
    Ok(reply(stored).with_status(201))
}

/// `PATCH /customer/me`: profile fields only (`name`, `displayName`, `companyName`,
/// `config`); any other field is refused with 400 naming it.
pub async fn patch_me(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let who = ctx.identity().await?;
    let body = ctx.json_object()?;
    let mut c = own(ctx, &who).await?.1.ok_or_else(not_found)?.customer;
    c.apply_profile(&body).map_err(profile_error)?;
    c.times[1] = Some(ctx.now);
    customers(ctx).update_profile(&c).await.map(reply)
}

/// `POST /api/admin/migrations/customers {dryRun?, limit?, cursor?}`: one page of the
/// backfill (see `Customers::backfill`).
pub async fn backfill(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let body = ctx.json_body()?;
    // A misspelt `dryRun` must not pass unseen: it would make a real run.
    body.only(&["dryRun", "limit", "cursor"])?;
    let limit = super::page_limit(body.opt_int("limit")?, 100, 500)?;
    let cursor = body.opt_str("cursor")?.map(str::to_string);
    customers(ctx).backfill(body.flag("dryRun")?, limit as u64, cursor).await.map(Reply::ok)
}

/// `GET /api/admin/migrations/customers/verify?limit=&cursor=`: one page of the check.
pub async fn verify(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let limit = ctx.query_limit(200, 500)? as u64;
    customers(ctx).verify(limit, ctx.query("cursor").as_deref()).await.map(Reply::ok)
}

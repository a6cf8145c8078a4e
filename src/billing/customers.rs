//! Customer records: D1 first, `LEGACY_AUTH_KV` as the fallback that imports on read;
//! linking a signed-in user by verified email; the backfill and its verification.
//!
//! The gradual migration of `customer-kv-migration.md`: (1) writes through the API go
//! to D1 and, while `DUAL_WRITE_KV` is on, to the legacy record too (the old readers
//! and a rollback keep working); (2) reads look in D1 first and import what they find
//! in the legacy namespace (one batch); (3) the backfill copies the rest, a page per
//! call; (4) verify says when nothing is missing; then `DUAL_WRITE_KV` can go off;
//! (5) the legacy namespace stays readable for the fallback until it is retired.
//!
//! Every D1 access is one batch whose last statement reads the record: few await
//! points, so little async code in the Wasm.

use std::future::Future;

use futures_util::FutureExt;
use serde_json::Value;

use crate::auth::jwt::Identity;
use crate::domain::customer::{email_hash, email_key, mapped_id, record_key, Customer, EMAIL_PREFIX, RECORD_PREFIX};
use crate::error::ApiError;
use crate::log;
use crate::obj;
use crate::store::customers::{self as store, Stored, BY_EMAIL, BY_ID, BY_USER};
use crate::store::db::{Db, Stmt};
use crate::store::kv_store::{KvStore, ListPage};
use crate::store::state;

const LEGACY: &str = "LEGACY_AUTH_KV";
/// Where a stopped backfill resumes (the legacy namespace's list cursor).
pub const BACKFILL_STATE: &str = "migration:customers:cursor";
/// The backfill's cursor in its second phase, the email mappings: this, then the list's.
const MAPPINGS: &str = "mappings:";
/// Failed dual writes, of plan keys and of customer records alike (shown by
/// `GET /api/admin/webhook-events` as `kvDualWriteFailures`).
pub const WRITE_FAILED_COUNTER: &str = "counter:kv_dual_write_failed";

pub struct Customers<'a> {
    pub db: &'a Db,
    /// `LEGACY_AUTH_KV`.
    pub legacy: Option<KvStore>,
    /// `DUAL_WRITE_KV`: API writes are copied to the legacy record.
    pub dual_write: bool,
    pub now: i64,
    pub request_id: &'a str,
}

pub fn conflict() -> ApiError {
    ApiError::coded(409, "CUSTOMER_EXISTS", "A customer record with this id or email already exists")
}

/// Legacy record `key` (`customer_<id>`) from its text, or why it cannot be read.
fn parse_record(key: &str, text: &str) -> Result<Customer, String> {
    let id = key.strip_prefix(RECORD_PREFIX).unwrap_or(key);
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}")).and_then(|v| Customer::from_legacy(Some(id), v))
}

impl Customers<'_> {
    /// Runs `stmts` as one batch; the record the last one read.
    fn last<'b>(&'b self, stmts: &'b [Stmt]) -> impl Future<Output = Result<Option<Stored>, ApiError>> + 'b {
        self.db.batch_rows(stmts).map(|r| Ok(r?.last().and_then(|rows| rows.first()).map(store::from_row)))
    }

    async fn list(&self, prefix: &str, limit: u64, cursor: Option<&str>) -> Result<ListPage, ApiError> {
        let kv = self.legacy.as_ref().ok_or_else(|| ApiError::server("no LEGACY_AUTH_KV binding"))?;
        kv.list(prefix, limit, cursor).await.map_err(|e| ApiError::server(format!("{LEGACY} list: {e}")))
    }

    async fn kv_text(&self, key: &str) -> Result<Option<String>, ApiError> {
        let Some(kv) = &self.legacy else { return Ok(None) };
        kv.get_text(key).await.map_err(|e| ApiError::server(format!("{LEGACY} get: {e}")))
    }

    /// The record with id `key`, or with `email` the one of email hash `key`: D1 first,
    /// else the legacy namespace's, imported. An email D1 resolves without the legacy
    /// mapping's word (`mapped`) asks the mapping first while the namespace is bound:
    /// of several records sharing an email, the legacy API answered the mapped one.
    pub async fn find(&self, email: bool, key: &str) -> Result<Option<Stored>, ApiError> {
        match self.last(&[store::select(if email { BY_EMAIL } else { BY_ID }, key)]).await? {
            Some(s) if s.mapped || !email => Ok(Some(s)),
            // The namespace unreadable: D1's answer, if any, rather than an error.
            found => match self.read_through(email, key, None).await {
                Ok(s) => Ok(s.or(found)),
                Err(e) => found.map(Some).ok_or(e),
            },
        }
    }

    /// The legacy record of id `key` (or with `email`, the one the mapping of email hash
    /// `key` names, if it has that email), imported in one batch — and linked to the
    /// user `link` when given, the answer being then the user's record. A record already
    /// in D1 is never overwritten; one that cannot be read is logged, never guessed.
    async fn read_through(&self, email: bool, key: &str, link: Option<&str>) -> Result<Option<Stored>, ApiError> {
        let id = if email { self.kv_text(&email_key(key)).await?.map(|t| mapped_id(&t)) } else { Some(key.into()) };
        let Some(id) = id else { return Ok(None) };
        let record_key = record_key(&id);
        let c = match self.kv_text(&record_key).await?.map(|text| parse_record(&record_key, &text)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                log::warn(self.request_id, "customer.legacy_unreadable", obj! {"key": record_key, "error": e});
                return Ok(None);
            }
            None => return Ok(None),
        };
        let mut stmts = vec![store::insert_stmt(&c, None, Some(self.now))];
        if email {
            stmts.push(store::mark_stmt(&id, key));
        }
        if let Some(user_id) = link {
            stmts.push(store::link_stmt(&id, user_id, key));
        }
        stmts.push(match link {
            Some(user_id) => store::select(BY_USER, user_id),
            None => store::select(BY_ID, &id),
        });
        let found = self.last(&stmts).await?;
        Ok(found.filter(|s| link.is_some() || !email || s.customer.email_hash().as_deref() == Some(key)))
    }

    /// The record of a signed-in user: the one linked to them; else, only when the token
    /// says their email is verified, the record of that email — the one the legacy
    /// mapping names (imported if need be), else D1's — linked to them now if it is
    /// linked to nobody, in the same batch that reads it. A record is never re-linked.
    pub async fn for_user(&self, who: &Identity, user_id: &str) -> Result<Option<Stored>, ApiError> {
        let hash = who.email.as_deref().filter(|_| who.email_verified).and_then(email_hash);
        let mine = self.last(&[store::select(BY_USER, user_id)]).await?;
        let Some(h) = hash.filter(|_| mine.is_none()) else { return Ok(mine) };
        match self.read_through(true, &h, Some(user_id)).await? {
            Some(s) => Ok(Some(s)),
            None => self.last(&[store::link_by_email_stmt(user_id, &h), store::select(BY_USER, user_id)]).await,
        }
    }

    /// Creates `c` (`409 CUSTOMER_EXISTS` when its id or email has a record, here or in
    /// the legacy namespace), linked to `user_id` when given.
    pub async fn create(&self, c: &Customer, user_id: Option<&str>) -> Result<Stored, ApiError> {
        let hash = c.email_hash();
        let mut legacy_keys = vec![record_key(&c.id)];
        legacy_keys.extend(hash.as_deref().map(email_key));
        for key in &legacy_keys {
            if self.kv_text(key).await?.is_some() {
                return Err(conflict());
            }
        }
        let results = self.db.batch_rows(&[store::insert_stmt(c, user_id, None), store::select(BY_ID, &c.id)]).await?;
        let inserted = results.first().is_some_and(|rows| !rows.is_empty());
        let stored = results.last().and_then(|rows| rows.first()).filter(|_| inserted).map(store::from_row);
        let stored = stored.ok_or_else(conflict)?;
        self.write_legacy(&stored.customer, hash.as_deref()).await;
        Ok(stored)
    }

    /// Stores the profile fields of `c` (already checked).
    pub async fn update_profile(&self, c: &Customer) -> Result<Stored, ApiError> {
        let stored = self.last(&[store::update_profile_stmt(c), store::select(BY_ID, &c.id)]).await?;
        let stored = stored.ok_or_else(|| ApiError::server("customer vanished"))?;
        self.write_legacy(&stored.customer, None).await;
        Ok(stored)
    }

    /// The dual write: the legacy record (and a new record's email mapping). A failure
    /// is logged and counted, never the request's: D1 is the truth.
    async fn write_legacy(&self, c: &Customer, new_mapping: Option<&str>) {
        let Some(kv) = self.legacy.as_ref().filter(|_| self.dual_write) else { return };
        let mut puts = vec![(record_key(&c.id), crate::util::json_text(&c.to_json()))];
        if let Some(h) = new_mapping {
            puts.push((email_key(h), c.id.clone()));
        }
        for (key, value) in puts {
            let put = match kv.put_bytes(&key, value.as_bytes()) {
                Ok(p) => p.execute().await,
                Err(e) => Err(e),
            };
            if let Err(e) = put {
                log::warn(
                    self.request_id,
                    "customer.legacy_write_failed",
                    obj! {"key": key.as_str(), "error": e.to_string()},
                );
                let _ = state::increment(self.db, WRITE_FAILED_COUNTER, self.now).await;
            }
        }
    }

    /// One page of `prefix` keys after `cursor`, each with its value (`None`: gone
    /// since the listing). A failed read fails the page: it is retried whole.
    async fn scan(
        &self,
        prefix: &str,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<(ListPage, Vec<Option<String>>), ApiError> {
        let page = self.list(prefix, limit, cursor).await?;
        let mut values = Vec::with_capacity(page.keys.len());
        for key in &page.keys {
            values.push(self.kv_text(key).await?);
        }
        Ok((page, values))
    }

    /// One page of the backfill: up to `limit` legacy records after `cursor` (else after
    /// where the last real run stopped), each imported unless already in D1, and the
    /// position stored in the same batch (a stopped run resumes there; a page imported
    /// twice imports nothing twice). A dry run writes nothing, not even the position.
    /// After the records, the email mappings (cursor `mappings:<list cursor>`): each marks
    /// the record it names as its email's (`mapped`), so an email several records share
    /// resolves as the legacy API resolved it, also once the namespace is gone.
    pub async fn backfill(&self, dry_run: bool, limit: u64, cursor: Option<String>) -> Result<Value, ApiError> {
        let cursor = match cursor {
            None if !dry_run => state::get(self.db, BACKFILL_STATE).await?,
            given => given,
        };
        let mappings = cursor.as_deref().and_then(|c| c.strip_prefix(MAPPINGS));
        let list_cursor = mappings.or(cursor.as_deref()).filter(|c| !c.is_empty());
        let prefix = if mappings.is_some() { EMAIL_PREFIX } else { RECORD_PREFIX };
        let (page, values) = self.scan(prefix, limit, list_cursor).await?;
        let (mut stmts, mut failed, mut vanished, mut pairs) = (Vec::new(), Vec::new(), 0, Vec::new());
        for (key, value) in page.keys.iter().zip(values) {
            match (mappings, value) {
                (_, None) => vanished += 1,
                (Some(_), Some(id)) => pairs
                    .push(Value::from(vec![key.strip_prefix(EMAIL_PREFIX).unwrap_or(key).to_string(), mapped_id(&id)])),
                (None, Some(text)) => match parse_record(key, &text) {
                    Ok(c) if dry_run => stmts.push(store::absent_stmt(&c.id)),
                    Ok(c) => stmts.push(store::insert_stmt(&c, None, Some(self.now))),
                    Err(e) => failed.push(obj! {"key": key.as_str(), "error": e}),
                },
            }
        }
        let records = stmts.len();
        if !pairs.is_empty() {
            stmts.push(store::mark_page_stmt(crate::util::json_text(&Value::Array(pairs)), dry_run));
        }
        // The records phase ends by starting the mappings'.
        let next = match (mappings, page.cursor) {
            (_, Some(c)) if mappings.is_some() => Some(format!("{MAPPINGS}{c}")),
            (_, Some(c)) => Some(c),
            (None, None) => Some(MAPPINGS.to_string()),
            (Some(_), None) => None,
        };
        if !dry_run {
            stmts.push(state::put_stmt(BACKFILL_STATE, next.as_deref(), self.now));
        }
        let results = if stmts.is_empty() { Vec::new() } else { self.db.batch_rows(&stmts).await? };
        let imported = results.iter().take(records).filter(|r| !r.is_empty()).count();
        let applied = results
            .get(records)
            .filter(|_| mappings.is_some())
            .map_or(0, |rows| rows.iter().filter(|r| r.int("applied") == Some(1)).count());
        Ok(obj! {
            "ok": true,
            "dryRun": dry_run,
            "phase": if mappings.is_some() { "mappings" } else { "records" },
            "seen": page.keys.len(),
            "imported": imported,
            "mappingsApplied": applied,
            "skipped": obj! {"alreadyInD1": records - imported, "vanished": vanished},
            "failed": failed,
            "done": next.is_none(),
            "cursor": next,
        })
    }

    /// One page of the verification. The cursor carries the phase (`records`, then
    /// `mappings`), the legacy records and mismatches counted so far, and the list
    /// cursor: `<phase>:<records>:<mismatches>:<list cursor>`.
    pub async fn verify(&self, limit: u64, cursor: Option<&str>) -> Result<Value, ApiError> {
        let mut parts = cursor.unwrap_or("records:0:0:").splitn(4, ':');
        let (phase, records, total, list_cursor) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(phase @ ("records" | "mappings")), Some(Ok(mut records)), Some(Ok(mut total)), Some(list_cursor)) =
            (phase, records.map(str::parse::<u64>), total.map(str::parse::<u64>), list_cursor)
        else {
            return Err(ApiError::InvalidRequest("cursor is not one this API gave".into()));
        };
        let records_phase = phase == "records";
        let (page, values) = if records_phase {
            (self.list(RECORD_PREFIX, limit, Some(list_cursor)).await?, Vec::new())
        } else {
            self.scan(EMAIL_PREFIX, limit, Some(list_cursor)).await?
        };
        let stmt = if records_phase {
            records += page.keys.len() as u64;
            let ids: Vec<String> =
                page.keys.iter().map(|k| k.strip_prefix(RECORD_PREFIX).unwrap_or(k).to_string()).collect();
            store::missing_records_stmt(&ids)
        } else {
            let mut pairs = Vec::new();
            for (key, value) in page.keys.iter().zip(values) {
                if let Some(id) = value {
                    pairs.push(Value::from(vec![
                        key.strip_prefix(EMAIL_PREFIX).unwrap_or(key).to_string(),
                        mapped_id(&id),
                    ]));
                }
            }
            store::mapping_mismatches_stmt(Value::Array(pairs))
        };
        let row = self.db.batch_rows(&[stmt]).await?.into_iter().flatten().next();
        let d1 = row.as_ref().and_then(|r| r.int("n")).unwrap_or_default() as u64;
        let mismatches: Value = row
            .and_then(|r| r.text("m"))
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_else(|| Value::Array(Vec::new()));
        total += mismatches.as_array().map_or(0, Vec::len) as u64;
        let next = match (records_phase, page.cursor) {
            (true, None) => Some(format!("mappings:{records}:{total}:")),
            (_, Some(c)) => Some(format!("{phase}:{records}:{total}:{c}")),
            (false, None) => None,
        };
        let done = next.is_none();
        Ok(obj! {
            "ok": true,
            "phase": phase,
            "checked": page.keys.len(),
            "mismatches": mismatches,
            "done": done,
            "cursor": next,
            "legacyRecords": records,
            "mismatchesSoFar": total,
            "d1Records": d1,
            "countsEqual": d1 == records,
            "clean": done && d1 == records && total == 0,
        })
    }
}

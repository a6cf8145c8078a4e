//! Legacy plans (`APP_KV`) → D1: read-through when a user without a row is first seen,
//! the resumable backfill over every legacy key, and its verification. What the keys
//! may hold and how a record maps onto a row is `domain::legacy_plan`.
//!
//! The backfill walks `planByUid:`, then `billingStatus:`, `trialEndByUid:` and
//! `trialUsedByUid:` (the legacy writers dropped the four keys separately, so a user may
//! be left with any of them); a user is handled under the first prefix it has a key
//! for. Each call lists at most `limit` keys and reads them 25 users (100 keys, one
//! bulk KV read, one D1 query, one D1 batch) at a time.

use serde_json::{Map, Value};

use super::Billing;
use crate::domain::account::UserRecord;
use crate::domain::legacy_plan::{self, check, decide, Action, Check, Position, PREFIXES};
use crate::error::ApiError;
use crate::log;
use crate::store::kv_store::{KvError, KvStore};
use crate::store::legacy_plans as store;
use crate::store::{state, users};

/// `app_state` name of the backfill's position (`<prefix>:<cursor>`, see `Position`).
pub const POSITION: &str = "migration:plans:position";
/// Keys listed per call at most (default [`DEFAULT_PAGE`]): per 25 users one bulk KV
/// read, one D1 query and one D1 batch, well inside an invocation's limits (1,000 KV
/// operations and D1 queries on the paid plan, 50 D1 queries on the free one).
pub const MAX_PAGE: usize = 250;
pub const DEFAULT_PAGE: usize = 100;

/// What a walk saw.
#[derive(Default)]
struct Tally {
    seen: u32,
    /// Users with a readable record.
    read: usize,
    imported: u32,
    counts: Map<String, Value>,
    /// Unreadable records: key → reason.
    failed: Map<String, Value>,
    /// Users a backfill would still import: auth id → what differs.
    mismatches: Map<String, Value>,
}

impl Tally {
    fn count(&mut self, what: &str) {
        let n = self.counts.get(what).and_then(Value::as_u64).unwrap_or(0);
        self.counts.insert(what.into(), (n + 1).into());
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Import,
    /// [`Mode::Import`] of one user on first sight: an unreadable record fails it.
    Sight,
    DryRun,
    Verify,
}

fn app_kv(what: &'static str) -> impl Fn(KvError) -> ApiError {
    move |e| ApiError::server(format!("APP_KV {what}: {}", e.0))
}

/// The four legacy plan keys of each of `uids` (at most 25: one bulk read of 100), their
/// values in that order, four per user.
pub(crate) async fn plan_values(ns: &KvStore, uids: &[&str]) -> Result<Vec<Option<String>>, ApiError> {
    let keys: Vec<String> = uids.iter().flat_map(|uid| PREFIXES.iter().map(move |p| format!("{p}{uid}"))).collect();
    ns.get_texts(&keys).await.map_err(app_kv("get"))
}

fn new_id() -> Result<String, ApiError> {
    Ok(format!("usr_{}", crate::util::random_hex(12)?))
}

impl Billing<'_> {
    fn default_plan(&self) -> &'static str {
        self.catalog.id(self.catalog.default_tier())
    }

    /// First sight of `auth_id` (no row yet): its legacy plan keys (the four read at
    /// once) are imported as the backfill would, one user, and the row is returned;
    /// without keys the user is created with the default plan (`create`) or `None`.
    /// An unreadable record is logged with its key and fails the request (`500
    /// LEGACY_RECORD_UNREADABLE`), creating nothing, until an admin repairs or deletes
    /// it; a KV failure fails it too: no row, and no gate, is ever based on a guess.
    pub(crate) async fn first_sight(
        &self,
        auth_id: &str,
        email: Option<&str>,
        create: bool,
    ) -> Result<Option<UserRecord>, ApiError> {
        if let Some(ns) = &self.legacy_kv {
            let mut t = Tally::default();
            self.legacy_chunk(ns, 0, &[format!("{}{auth_id}", PREFIXES[0])], Mode::Sight, &mut t).await?;
            if t.read > 0 {
                // Imported, or created meanwhile by a concurrent first request.
                return users::find_for(self.db, auth_id, email, self.now).await;
            }
        }
        if !create {
            return Ok(None);
        }
        users::create(self.db, auth_id, email, self.default_plan(), self.now, new_id()?).await.map(Some)
    }

    /// `POST /api/admin/migrations/plans` (`verify` false) and `…/verify` (true): the
    /// users of up to `limit` listed keys from `from`, imported (not in a `dry_run`) or
    /// compared with D1. Without `from` an import resumes where the last one stopped
    /// (kept in `app_state`; cursor `0:` is the start), a verify starts at the
    /// start. Only an import stores where it stopped.
    pub async fn migrate_plans(
        &self,
        from: Option<Position>,
        limit: usize,
        dry_run: bool,
        verify: bool,
    ) -> Result<Value, ApiError> {
        let mode = match (verify, dry_run) {
            (true, _) => Mode::Verify,
            (_, true) => Mode::DryRun,
            _ => Mode::Import,
        };
        let start = match from {
            Some(p) => p,
            None if verify => Position::default(),
            None => state::get(self.db, POSITION).await?.and_then(|s| Position::parse(&s)).unwrap_or_default(),
        };
        let (pos, t) = self.walk_legacy(start.clone(), limit, mode).await?;
        if mode == Mode::Import && pos != start {
            state::set(self.db, POSITION, Some(&pos.text()), self.now).await?;
        }
        Ok(crate::obj! {
            "ok": true,
            "dryRun": dry_run,
            "seen": t.seen,
            "imported": t.imported,
            "skipped": t.counts,
            "failed": t.failed,
            "mismatches": t.mismatches,
            "done": pos.done(),
            "cursor": (!pos.done()).then(|| pos.text()),
        })
    }

    async fn walk_legacy(&self, mut pos: Position, limit: usize, mode: Mode) -> Result<(Position, Tally), ApiError> {
        let ns = self.legacy_kv.as_ref().ok_or_else(|| ApiError::server("APP_KV is not bound"))?;
        let mut t = Tally::default();
        let mut left = limit;
        while left > 0 && !pos.done() {
            let page = ns.list(PREFIXES[pos.prefix], left as u64, Some(&pos.cursor)).await.map_err(app_kv("list"))?;
            let (names, next) = (page.keys, page.cursor);
            left = left.saturating_sub(names.len().max(1));
            for chunk in names.chunks(store::BATCH) {
                self.legacy_chunk(ns, pos.prefix, chunk, mode, &mut t).await?;
            }
            pos.advance(next);
        }
        Ok((pos, t))
    }

    /// Up to 25 listed keys of prefix `p`: one bulk KV read, and only when some user
    /// has a readable record one D1 query for their rows and one batch of writes.
    async fn legacy_chunk(
        &self,
        ns: &KvStore,
        p: usize,
        names: &[String],
        mode: Mode,
        t: &mut Tally,
    ) -> Result<(), ApiError> {
        let uids: Vec<&str> = names.iter().filter_map(|name| name.strip_prefix(PREFIXES[p])).collect();
        let values = plan_values(ns, &uids).await?;
        let mut records = Vec::new();
        for (uid, raw) in uids.iter().zip(values.chunks(4)) {
            if raw.iter().take(p).any(Option::is_some) {
                continue; // handled under an earlier prefix
            }
            t.seen += 1;
            match legacy_plan::parse(uid, raw, &self.catalog, self.now) {
                Ok(Some(rec)) => records.push((*uid, rec)),
                Ok(None) => t.count("no_value"),
                Err(u) if mode == Mode::Sight => {
                    log::error(
                        self.request_id,
                        "legacy.unreadable",
                        crate::obj! {"key": u.key.as_str(), "reason": u.reason},
                    );
                    return Err(ApiError::CodedServer {
                        status: 500,
                        code: "LEGACY_RECORD_UNREADABLE",
                        public: "Your legacy plan record cannot be read",
                        cause: u.key,
                    });
                }
                Err(u) => {
                    t.failed.insert(u.key, u.reason.into());
                }
            }
        }
        t.read += records.len();
        if records.is_empty() {
            return Ok(());
        }
        let mut read = Vec::with_capacity(records.len());
        for (uid, _) in &records {
            read.push(*uid);
        }
        let rows = store::existing(self.db, &read).await?;
        let (mut stmts, mut writes) = (Vec::new(), Vec::new());
        for (uid, rec) in &records {
            let row = rows.iter().find(|r| r.auth_id == *uid);
            if mode == Mode::Verify {
                match check(row, rec, self.default_plan()) {
                    Check::Match => t.count("matching"),
                    Check::ChangedSince => t.count("changedSince"),
                    Check::Differs(field) => {
                        t.mismatches.insert(uid.to_string(), field.into());
                    }
                    Check::Missing => {
                        t.mismatches.insert(uid.to_string(), "missing".into());
                    }
                }
                continue;
            }
            match (decide(row, rec, self.default_plan()), row) {
                (Action::Skip(reason), _) => t.count(reason),
                (_, _) if mode == Mode::DryRun => t.imported += 1,
                (Action::Update, Some(s)) => {
                    store::update_stmts(&mut stmts, s, rec, self.now);
                    writes.push(stmts.len() - 1);
                }
                _ => {
                    users::import_stmts(&mut stmts, &new_id()?, uid, rec, self.now);
                    writes.push(stmts.len() - 2);
                }
            }
        }
        if !stmts.is_empty() {
            let results = self.db.batch_rows(&stmts).await?;
            for w in writes {
                if results.get(w).is_some_and(|rows| !rows.is_empty()) {
                    t.imported += 1;
                } else {
                    t.count("changed_concurrently");
                }
            }
        }
        Ok(())
    }
}

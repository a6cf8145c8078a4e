//! Billing's one home: everything between a user, Stripe and the D1 truth.
//!
//! - [`actions`]: what users ask for (upgrade, checkout, portal, cancel, resume,
//!   downgrade, sync): each runs under the user's billing lock and changes D1 only from
//!   Stripe's answer. "What happens when a user upgrades" is `actions::upgrade`.
//! - [`sync`]: Stripe state → D1, one code path for webhooks, retries, reconciliation,
//!   re-syncs and the answers to plangate's own calls; the legacy KV copy.
//! - [`delivery`]: the webhook pipeline: claim, process, record, retry, reconcile.
//! - [`legacy`]: the legacy plan keys in `APP_KV` → D1 (read-through, backfill, verify).
//! - [`resync`]: re-syncing every user from Stripe, a page of users per call.
//!
//! Route handlers only parse input, call one function here and shape the reply.

pub mod actions;
pub mod credits;
pub mod customers;
pub mod delivery;
pub mod entitlements;
pub mod legacy;
pub mod resync;
pub mod sync;

use std::cell::RefCell;

use crate::config::Config;
use crate::domain::account::UserRecord;
use crate::domain::plans::Catalog;
use crate::store::db::Db;
use crate::store::kv_store::KvStore;
use crate::stripe::client::StripeClient;

pub use delivery::Delivery;

/// What every billing operation needs: D1, configuration, the KV copy, the Stripe
/// client, the clock and the request id for the logs.
pub struct Billing<'a> {
    pub db: &'a Db,
    pub cfg: &'a Config,
    pub kv: Option<KvStore>,
    pub stripe: StripeClient,
    pub now: i64,
    pub request_id: &'a str,
    pub catalog: Catalog,
    /// Where users whose KV copies are due are collected to be written after the
    /// response (`ctx.wait_until`); without it they are written before returning.
    pub deferred: Option<&'a RefCell<Vec<String>>>,
    /// The user of a customer, read in the same round trip as a delivery's claim: the
    /// first lookup of that customer while processing the event takes it (see
    /// `sync::user_by_customer`).
    pub prefetched: RefCell<Option<(String, Option<UserRecord>)>>,
    /// `APP_KV` for the legacy plan keys (see `legacy`); `None`: never read.
    pub legacy_kv: Option<KvStore>,
}

impl<'a> Billing<'a> {
    pub fn new(db: &'a Db, cfg: &'a Config, kv: Option<KvStore>, now: i64, request_id: &'a str) -> Self {
        Billing {
            db,
            cfg,
            kv,
            stripe: StripeClient {
                base: cfg.stripe_api_base.clone(),
                secret_key: cfg.stripe_secret_key.clone(),
                api_version: cfg.stripe_api_version.clone(),
            },
            now,
            request_id,
            catalog: Catalog::builtin(),
            deferred: None,
            prefetched: RefCell::new(None),
            legacy_kv: None,
        }
    }

    /// The legacy plan keys are read through `APP_KV` (the store the copies go to).
    pub fn reading_legacy_plans(mut self) -> Self {
        self.legacy_kv = self.kv.clone();
        self
    }

    /// KV copies are written after the response, by whoever drains `sink`.
    pub fn deferring_copies_to(mut self, sink: &'a RefCell<Vec<String>>) -> Self {
        self.deferred = Some(sink);
        self
    }
}

//! D1 repositories, typed KV keys and the KV binding.

pub mod credit_import;
pub mod credits;
pub mod customers;
pub mod db;
pub mod kv;
pub mod kv_store;
pub mod legacy_plans;
pub mod locks;
pub mod outbox;
pub mod payments;
pub mod purge;
pub mod state;
pub mod usage;
pub mod users;
pub mod webhooks;

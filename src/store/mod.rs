//! D1 repositories and typed KV keys.

pub mod credit_import;
pub mod credits;
pub mod db;
pub mod kv;
pub mod locks;
pub mod outbox;
pub mod payments;
pub mod purge;
pub mod state;
pub mod usage;
pub mod users;
pub mod webhooks;

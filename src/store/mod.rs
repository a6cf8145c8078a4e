//! D1 repositories and typed KV keys.

pub mod credits;
pub mod customers;
pub mod db;
pub mod kv;
pub mod kv_list;
pub mod locks;
pub mod outbox;
pub mod payments;
pub mod state;
pub mod usage;
pub mod users;
pub mod webhooks;

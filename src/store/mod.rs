//! D1 repositories and typed KV keys.

pub mod db;
pub mod kv;
pub mod users;

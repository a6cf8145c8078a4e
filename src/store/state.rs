//! The `app_state` table: named values kept between cron runs, and counters.

use super::db::{Db, Param};
use crate::error::ApiError;

pub async fn get(db: &Db, name: &str) -> Result<Option<String>, ApiError> {
    Ok(db.row("SELECT value FROM app_state WHERE name = ?1", &[name.into()]).await?.and_then(|r| r.text("value")))
}

pub async fn set(db: &Db, name: &str, value: &str, now: i64) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO app_state (name, value, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        &[name.into(), value.into(), Param::Int(now)],
    )
    .await?;
    Ok(())
}

pub async fn delete(db: &Db, name: &str) -> Result<(), ApiError> {
    db.execute("DELETE FROM app_state WHERE name = ?1", &[name.into()]).await?;
    Ok(())
}

/// Adds one to a counter (e.g. `counter:kv_dual_write_failed`).
pub async fn increment(db: &Db, name: &str, now: i64) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO app_state (name, value, updated_at) VALUES (?1, '1', ?2) \
         ON CONFLICT(name) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT), updated_at = excluded.updated_at",
        &[name.into(), Param::Int(now)],
    )
    .await?;
    Ok(())
}

//! The `app_state` table: named values kept between cron runs, and counters.

use super::db::{Db, Param, Stmt};
use crate::error::ApiError;

pub async fn get(db: &Db, name: &str) -> Result<Option<String>, ApiError> {
    Ok(db.row("SELECT value FROM app_state WHERE name = ?1", &[name.into()]).await?.and_then(|r| r.text("value")))
}

/// The statement that stores `value` as `name`, or deletes `name` (`None`): for a
/// batch that moves a position together with what it covers.
pub fn put_stmt(name: &str, value: Option<&str>, now: i64) -> Stmt {
    match value {
        Some(v) => Stmt {
            sql: "INSERT INTO app_state (name, value, updated_at) VALUES (?1, ?2, ?3) \
                  ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params: vec![name.into(), v.into(), Param::Int(now)],
        },
        None => Stmt { sql: "DELETE FROM app_state WHERE name = ?1", params: vec![name.into()] },
    }
}

pub async fn set(db: &Db, name: &str, value: Option<&str>, now: i64) -> Result<(), ApiError> {
    let s = put_stmt(name, value, now);
    db.execute(s.sql, &s.params).await?;
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

-- Issue 10: users imported from the legacy plan keys in APP_KV (planByUid:<uid>, …).
-- When the row took the legacy record (read-through on first sight, or the backfill of
-- POST /api/admin/migrations/plans); NULL for users plangate created on its own. The
-- import's audit row is the plan_changes row with cause `migration`.
ALTER TABLE users ADD COLUMN legacy_imported_at INTEGER;

-- The legacy KV values a completed flush last wrote for the user (JSON: key → value,
-- null for a deleted key). A flush writes only the keys whose value differs from it;
-- NULL (every user after this migration, and after an admin re-sync) means "write all".
ALTER TABLE users ADD COLUMN kv_written TEXT;

-- No query filters webhook events by type; the index only cost a write per delivery
-- (recorded-only events are one insert: every index on the table is on its path).
DROP INDEX IF EXISTS idx_webhook_events_type;

-- Which subscription an audit row is about: a user's row follows one subscription, but
-- cancelling also ends legacy duplicates, each audited with its own id.
ALTER TABLE plan_changes ADD COLUMN subscription_id TEXT;

-- The last Stripe customer of the user that was deleted: a new one is created with an
-- idempotency key naming it, so Stripe cannot replay the deleted one's creation.
ALTER TABLE users ADD COLUMN previous_customer_id TEXT;

-- Users whose KV copies (legacy plan keys, entitlements cache) are due. Bumped in the
-- same batch as every change of the user's plan columns; removed by the flusher only
-- if `version` did not change while it wrote KV (see src/store/outbox.rs).
CREATE TABLE kv_outbox (
  user_id     TEXT PRIMARY KEY REFERENCES users(id),
  version     INTEGER NOT NULL,
  due_at      INTEGER NOT NULL,
  lease_until INTEGER,
  lease_token TEXT,            -- the flusher holding the lease (only it completes the row)
  attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_kv_outbox_due ON kv_outbox(due_at);

-- Every existing user is due once: copies that diverged before the outbox existed (failed
-- dual-writes were only counted) are rewritten from D1 by the cron.
INSERT INTO kv_outbox (user_id, version, due_at, attempts) SELECT id, 1, 0, 0 FROM users;

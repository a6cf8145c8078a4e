-- One billing action at a time per user: a lease row, taken with one conditional
-- upsert and released by its holder (or taken over once expired).
CREATE TABLE billing_locks (
  user_id    TEXT PRIMARY KEY REFERENCES users(id),
  holder     TEXT NOT NULL,      -- the request id holding the lock
  action     TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);

-- Counts the user's successful billing actions. Part of every Stripe idempotency key
-- plangate sends for an action, so retries of one action share a key while a later,
-- identical-looking action (cancel → resume → cancel) gets a new one.
ALTER TABLE users ADD COLUMN billing_seq INTEGER NOT NULL DEFAULT 0;

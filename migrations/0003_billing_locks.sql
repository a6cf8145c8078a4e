-- One billing action at a time per user: a lease row, taken with one conditional
-- upsert and released by its holder (or taken over once expired). The row stays;
-- `seq` counts the actions that ended and is part of every Stripe idempotency key an
-- action sends: retries within one action share a key, the next action (even an
-- identical-looking one: cancel → resume → cancel) gets new ones, and an action whose
-- holder died is resumed under the same keys, so Stripe replays what it already did.
CREATE TABLE billing_locks (
  user_id    TEXT PRIMARY KEY REFERENCES users(id),
  holder     TEXT NOT NULL,      -- the request id holding (or last holding) the lock
  action     TEXT NOT NULL,
  expires_at INTEGER NOT NULL,   -- 0 once released
  seq        INTEGER NOT NULL DEFAULT 0
);

-- The claim of a webhook event (the request id that holds its lease): completion and
-- failure are recorded only by the current holder, so a delivery whose lease was taken
-- over cannot overwrite the new holder's result.
ALTER TABLE webhook_events ADD COLUMN claim_token TEXT;

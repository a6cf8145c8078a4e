-- Stripe webhooks: idempotency with two states, dead letters, reconciliation, payments.

-- As-of time (unix seconds) of the Stripe state stored on the row: the fetch time when
-- it came from Stripe's API, the event's `created` when it came from a payload. A
-- payload older than this is never applied (no stale resurrection).
ALTER TABLE users ADD COLUMN stripe_synced_at INTEGER;
-- Trials are granted once per user.
ALTER TABLE users ADD COLUMN trial_used INTEGER NOT NULL DEFAULT 0;

-- One row per Stripe event id. A delivery claims the row (`processing`, with a lease);
-- success marks it `processed`; failure marks it `failed` (payload kept, retried by the
-- cron with backoff) and after too many attempts `dead` (admin retry only).
CREATE TABLE webhook_events (
  id              TEXT PRIMARY KEY,            -- evt_…
  type            TEXT NOT NULL,
  created         INTEGER NOT NULL,            -- event.created
  status          TEXT NOT NULL CHECK (status IN ('processing', 'processed', 'failed', 'dead')),
  attempts        INTEGER NOT NULL DEFAULT 0,
  last_error      TEXT,
  payload         TEXT NOT NULL,
  received_at     INTEGER NOT NULL,
  processed_at    INTEGER,
  lease_until     INTEGER,                     -- while processing: others may take over after this
  next_attempt_at INTEGER,                     -- while failed: the cron retries from this time
  source          TEXT NOT NULL DEFAULT 'webhook'  -- webhook | reconcile | admin
);
CREATE INDEX idx_webhook_events_retry ON webhook_events(status, next_attempt_at)
  WHERE status IN ('failed', 'processing');
CREATE INDEX idx_webhook_events_processed_at ON webhook_events(processed_at)
  WHERE status = 'processed';
CREATE INDEX idx_webhook_events_type ON webhook_events(type);

-- One-off payments (payment-mode checkouts, payment intents, refunds) recorded for the
-- credit ledger. Updated only by events at least as new as the last one applied.
CREATE TABLE stripe_payments (
  id                  TEXT PRIMARY KEY,        -- payment intent id (pi_…), else checkout session id
  user_id             TEXT REFERENCES users(id),
  customer_id         TEXT,
  checkout_session_id TEXT,
  amount              INTEGER,
  amount_refunded     INTEGER NOT NULL DEFAULT 0,
  currency            TEXT,
  status              TEXT NOT NULL,           -- completed | succeeded | failed | refunded | partially_refunded
  last_event_id       TEXT NOT NULL,
  last_event_created  INTEGER NOT NULL,
  created_at          INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL
);
CREATE INDEX idx_stripe_payments_user ON stripe_payments(user_id);

-- Small named values the cron keeps between runs (the reconciliation cursor) and
-- operational counters (e.g. failed KV dual-writes).
CREATE TABLE app_state (
  name       TEXT PRIMARY KEY,
  value      TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);

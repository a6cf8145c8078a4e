-- Issue 9: usage quotas per billing period and the credit ledger.

-- The start of the user's current Stripe billing period (with current_period_end):
-- usage is counted per period while subscribed, per UTC calendar month otherwise.
ALTER TABLE users ADD COLUMN current_period_start INTEGER;

-- Uses of a feature in one period. `period` names it: `s<start unix seconds>` for a
-- Stripe billing period, `m<YYYY-MM>` for a calendar month. A consume increments `used`
-- in one conditional statement (never past the limit); `last_key` is the request id of
-- the last request that counted, read back in the same batch to learn whether this
-- request's increment happened (request ids are never reused; idempotency keys may be,
-- once their rows are purged).
CREATE TABLE usage (
  user_id    TEXT NOT NULL REFERENCES users(id),
  period     TEXT NOT NULL,
  feature    TEXT NOT NULL,
  used       INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
  period_end INTEGER NOT NULL,
  last_key   TEXT,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (user_id, period, feature)
) WITHOUT ROWID;

-- One row per consume request (idempotency key, per user): the first answer is kept
-- and replayed for the same key. `token` is the request that created the row: only it
-- may count. `outcome`: `ok:<used>`, `quota:<used>` (a counted feature), `spent:<balance>`,
-- `credits:<balance>` (a feature paid in credits). Deleted by the cron after 30 days.
CREATE TABLE usage_requests (
  user_id         TEXT NOT NULL REFERENCES users(id),
  idempotency_key TEXT NOT NULL,
  feature         TEXT NOT NULL,
  amount          INTEGER NOT NULL,
  period          TEXT NOT NULL,
  token           TEXT NOT NULL,
  outcome         TEXT,
  created_at      INTEGER NOT NULL,
  PRIMARY KEY (user_id, idempotency_key)
);
CREATE INDEX idx_usage_requests_created ON usage_requests(created_at);

-- The credit ledger: the balance of a user is SUM(delta), never below zero (every
-- debit is one conditional statement). `source_key` names the business object a row
-- comes from (a payment intent, a subscription period, a spend request), so the same
-- grant or spend can never be written twice whatever the events or retries.
CREATE TABLE credit_transactions (
  id              TEXT PRIMARY KEY,
  user_id         TEXT NOT NULL REFERENCES users(id),
  delta           INTEGER NOT NULL,
  reason          TEXT NOT NULL CHECK (reason IN ('purchase', 'grant', 'spend', 'refund', 'migration', 'adjustment')),
  source_key      TEXT NOT NULL UNIQUE,
  stripe_event_id TEXT,
  metadata        TEXT,
  created_at      INTEGER NOT NULL
);
-- Balance (covering: user_id, delta) and history (newest first; the rowid, which grows
-- with every insert and ends every index entry, orders rows of the same second).
CREATE INDEX idx_credit_transactions_user ON credit_transactions(user_id, created_at, delta);

-- A pack purchase's payment: which pack and how many credits it granted, for refunds.
ALTER TABLE stripe_payments ADD COLUMN pack TEXT;
ALTER TABLE stripe_payments ADD COLUMN credits INTEGER;

-- Issue 10: customer records, moved from the legacy `LEGACY_AUTH_KV` namespace
-- (`customer_<customerId>` JSON, `email_to_customer_<sha256(lower(trim(email)))>`).
-- Times are unix seconds (UTC); the legacy records' ms / seconds / ISO dates are
-- normalised on import (see src/domain/customer.rs).
CREATE TABLE customers (
  id             TEXT PRIMARY KEY,               -- the legacy customerId (cust_<hex> when created here)
  user_id        TEXT UNIQUE REFERENCES users(id), -- set once, by a verified email; never re-linked
  email          TEXT,                           -- as the record gave it
  email_hash     TEXT,                           -- sha256 hex of lower(trim(email)); NULL without email
  name           TEXT,
  display_name   TEXT,
  company_name   TEXT,
  plan           TEXT,                           -- legacy snapshot, read-only here (plangate's plan: users.plan)
  tier           TEXT,
  status         TEXT,
  subscriptions  TEXT,                           -- JSON, as the record held it
  flairs         TEXT,                           -- JSON
  config         TEXT,                           -- JSON
  features       TEXT,                           -- JSON
  extra          TEXT,                           -- JSON object of every other field: never dropped
  created_at     INTEGER,
  updated_at     INTEGER,
  imported_at    INTEGER,                        -- when it came from LEGACY_AUTH_KV; NULL for 'api'
  source         TEXT NOT NULL CHECK (source IN ('legacy', 'api')),
  CHECK (length(id) > 0)
);

-- Look-ups by email (`/customer/by-email`, linking a verified user, the credit import,
-- the test-account purge).
CREATE INDEX idx_customers_email_hash ON customers(email_hash);

-- Issue 10: the legacy credit import (`POST /api/admin/migrations/credits`).

-- Matching by a verified email reads `customers` (migration 0010): a row whose
-- `user_id` is set is a verified mapping, the user proved the email.

-- The three CSV exports of the old system, staged as uploaded (one upload replaces the
-- whole file), so an import can be given as three calls. Texts as exported; integers
-- checked on upload. Kept by a dry run, emptied by the import that reads them.
CREATE TABLE legacy_credit_files (
  name        TEXT PRIMARY KEY CHECK (name IN ('users', 'payments', 'credit_transactions')),
  rows        INTEGER NOT NULL,
  uploaded_at INTEGER NOT NULL
);

CREATE TABLE legacy_users (
  id                 TEXT PRIMARY KEY,
  email              TEXT,
  email_hash         TEXT,      -- sha256 hex of lower(trim(email)), as customers.email_hash
  credits_balance    INTEGER NOT NULL,
  stripe_customer_id TEXT,
  created_at         TEXT,
  updated_at         TEXT,
  -- Set by each import run: the plangate user and how it was found.
  user_id            TEXT,
  matched_by         TEXT CHECK (matched_by IN ('stripe_customer', 'verified_email'))
);

CREATE TABLE legacy_payments (
  id                       TEXT PRIMARY KEY,
  user_id                  TEXT,   -- legacy user id
  stripe_payment_intent_id TEXT,
  amount                   INTEGER,
  status                   TEXT,
  created_at               TEXT,
  updated_at               TEXT
);
CREATE INDEX idx_legacy_payments_user ON legacy_payments(user_id);

CREATE TABLE legacy_credit_transactions (
  id              TEXT PRIMARY KEY,
  user_id         TEXT,            -- legacy user id
  delta           INTEGER NOT NULL,
  reason          TEXT NOT NULL,   -- the ledger reason it maps to
  legacy_reason   TEXT,            -- as exported
  stripe_event_id TEXT,
  metadata        TEXT,
  created_at      TEXT
);
CREATE INDEX idx_legacy_credit_transactions_user ON legacy_credit_transactions(user_id);

-- Scratch: the fault found in the file being uploaded, read back in the same batch
-- (nothing of a faulty file is staged).
CREATE TABLE legacy_credit_upload_errors (
  line INTEGER NOT NULL,
  why  TEXT NOT NULL
);

-- Users and their plan: D1 is the source of truth. Times are unix seconds (UTC).
CREATE TABLE users (
  id                     TEXT PRIMARY KEY,              -- usr_<hex>, also Stripe client_reference_id
  auth_id                TEXT NOT NULL UNIQUE,          -- identity provider's user id (JWT sub)
  email                  TEXT,
  plan                   TEXT NOT NULL DEFAULT 'free',  -- tier id from plans.toml
  stripe_customer_id     TEXT UNIQUE,
  stripe_subscription_id TEXT,
  subscription_status    TEXT,                          -- Stripe status: trialing, active, past_due, …
  trial_ends_at          INTEGER,
  current_period_end     INTEGER,
  cancel_at              INTEGER,
  scheduled_plan         TEXT,
  scheduled_at           INTEGER,
  plan_updated_at        INTEGER NOT NULL,
  created_at             INTEGER NOT NULL,
  updated_at             INTEGER NOT NULL,
  CHECK (length(auth_id) > 0),
  CHECK (length(plan) > 0)
);

-- Webhooks find a user by subscription id; customers are found by the UNIQUE index.
CREATE INDEX idx_users_stripe_subscription_id ON users(stripe_subscription_id)
  WHERE stripe_subscription_id IS NOT NULL;
-- Reconciliation and renewal jobs scan by status and period end.
CREATE INDEX idx_users_status_period_end ON users(subscription_status, current_period_end)
  WHERE subscription_status IS NOT NULL;

-- Append-only audit of every change of a user's plan or subscription status.
CREATE TABLE plan_changes (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id     TEXT NOT NULL REFERENCES users(id),
  old_plan    TEXT,
  new_plan    TEXT NOT NULL,
  old_status  TEXT,
  new_status  TEXT,
  cause       TEXT NOT NULL,   -- webhook:evt_…, api:upgrade, admin, migration
  created_at  INTEGER NOT NULL,
  CHECK (length(cause) > 0)
);
CREATE INDEX idx_plan_changes_user ON plan_changes(user_id, created_at);

CREATE TRIGGER plan_changes_append_only
BEFORE UPDATE ON plan_changes
BEGIN
  SELECT RAISE(ABORT, 'plan_changes is append-only');
END;

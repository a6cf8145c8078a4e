-- Issue 10 review: who a test-account purge may delete, as an allow-list (the same rule
-- as `domain::purge::may_bill`): only an account that surely bills nothing goes — no
-- status and no subscription, an ended one (canceled, incomplete_expired), or a trial
-- without a subscription (the legacy system's own trial). A live or pending status
-- without a subscription id (legacy records kept the status as a bare string), a
-- subscription id without a status, or a status this version does not know stays;
-- so does an account a billing action holds the lock of.
DROP VIEW purgeable_users;
CREATE VIEW purgeable_users AS
SELECT id FROM users
WHERE CASE
        WHEN subscription_status ISNULL OR subscription_status = 'trialing' THEN stripe_subscription_id ISNULL
        ELSE subscription_status IN ('canceled', 'incomplete_expired')
      END
  AND NOT EXISTS (SELECT 1 FROM billing_locks l WHERE l.user_id = users.id AND l.expires_at > unixepoch());

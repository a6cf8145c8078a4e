-- Issue 10 review: a user imported from a legacy record that kept its billing status as
-- a bare string has no Stripe subscription id, yet a status only a paying customer had
-- (active, past_due, …): a purge must leave it alone too. Only `trialing` needs a
-- subscription id to count (a legacy trial without one is the app's own, nothing to bill).
DROP VIEW purgeable_users;
CREATE VIEW purgeable_users AS
SELECT id FROM users
WHERE NOT IFNULL(subscription_status IN ('active', 'past_due', 'incomplete', 'unpaid', 'paused')
                 OR (subscription_status = 'trialing' AND stripe_subscription_id NOTNULL), 0)
  AND NOT EXISTS (SELECT 1 FROM billing_locks l WHERE l.user_id = users.id AND l.expires_at > unixepoch());

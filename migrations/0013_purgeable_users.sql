-- Issue 10 review: the users a test-account purge may delete, checked again inside its
-- D1 batch (their state may change between the listing and the delete): not one Stripe
-- may still bill (a subscription that is live or may still become so) nor one a billing
-- action holds the lock of (it may be creating a subscription this moment).
CREATE VIEW purgeable_users AS
SELECT id FROM users
WHERE NOT (stripe_subscription_id NOTNULL
           AND subscription_status IN ('trialing', 'active', 'past_due', 'incomplete', 'unpaid', 'paused'))
  AND NOT EXISTS (SELECT 1 FROM billing_locks l WHERE l.user_id = users.id AND l.expires_at > unixepoch());

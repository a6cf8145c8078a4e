-- Issue 10 review: when several customer records share an email, the email resolves
-- to the one the legacy mapping `email_to_customer_<hash>` names (as the legacy API
-- answered), not simply the oldest. `mapped` = 1 marks it: set by a read-through by
-- email, by the backfill's mapping phase, and for records created through the API
-- (which never share an email).
ALTER TABLE customers ADD COLUMN mapped INTEGER NOT NULL DEFAULT 0;
UPDATE customers SET mapped = 1 WHERE source = 'api';

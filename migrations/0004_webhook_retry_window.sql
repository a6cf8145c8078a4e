-- The retry window of a failed webhook event. The cron leaves an event `dead` only
-- once it has failed MAX_ATTEMPTS times *and* its retries span at least 24 hours
-- since its first failure, so a short outage (or a burst of re-deliveries inside one
-- backoff window, which no longer count as attempts) cannot use up its retries.
ALTER TABLE webhook_events ADD COLUMN first_failed_at INTEGER;

-- Rows that failed before this column existed: their first failure is at the latest
-- when plangate first received them.
UPDATE webhook_events SET first_failed_at = received_at WHERE status IN ('failed', 'dead');

-- Events the old rule left dead within the last day (8 attempts could be used up in
-- well under an hour) go back to the cron under the new rule. Unparsable payloads stay
-- dead: they can never succeed.
UPDATE webhook_events
   SET status = 'failed', next_attempt_at = CAST(strftime('%s', 'now') AS INTEGER)
 WHERE status = 'dead'
   AND first_failed_at >= CAST(strftime('%s', 'now') AS INTEGER) - 86400
   AND (last_error IS NULL OR last_error NOT LIKE 'unparsable payload%');

-- An event the stream keeps rejecting is set aside after a few attempts (its SQS wake-up goes
-- to the dead-letter queue), so the sweep stops retrying it and later events of the same
-- aggregate can flow. Operators re-queue it by clearing dead_at.
ALTER TABLE outbox ADD COLUMN dead_at timestamptz;

DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_created_unpublished ON outbox (created_at)
    WHERE published_at IS NULL AND dead_at IS NULL;

-- Idempotency records for mutations sent with an Idempotency-Key (Powertools Idempotency,
-- PostgreSQL persistence). Kept on the primary, so a retry reaches the same record from any
-- region. Expired rows are ignored by reads and overwritten by the next use of their key.

CREATE TABLE idempotency_records (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 512),
    status text NOT NULL CHECK (status IN ('INPROGRESS', 'COMPLETED', 'EXPIRED')),
    expiration bigint NOT NULL,              -- epoch seconds
    in_progress_expiration bigint,           -- epoch milliseconds
    response_data text,
    payload_hash text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_records_expiration ON idempotency_records (expiration);

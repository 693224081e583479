-- How many write transactions the request of an idempotency record has committed, counted in
-- each of those transactions. A record left INPROGRESS by a Lambda that died is taken over by the
-- retry only when this is 0: after a commit, running the request again would write twice, so the
-- retry is told the request was applied instead.
ALTER TABLE idempotency_records
    ADD COLUMN committed_writes integer NOT NULL DEFAULT 0 CHECK (committed_writes >= 0);

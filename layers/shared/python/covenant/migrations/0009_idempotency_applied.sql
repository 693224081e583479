-- Whether the request of an idempotency record has committed a write, set inside that write's
-- transaction. A record left INPROGRESS by an attempt that died, or whose COMMIT lost its
-- connection, is taken over by the retry only when this is false: after a commit, running the
-- request again would write twice, so the retry is told the request was applied instead.
ALTER TABLE idempotency_records ADD COLUMN applied boolean NOT NULL DEFAULT false;

-- The outbox's publish state leaves the outbox. Marking an event published was an UPDATE of
-- its ~600-byte row: never HOT (published_at was in three indexes' definitions or predicates),
-- so every mark wrote a whole new row version and its index entries, and the replica replayed
-- them: most of PostgreSQL's share of the bridge's work (docs/bridge.md, "Where the time
-- went"). Now:
--
-- * outbox_pending holds the seq of every event not yet published (set aside ones included:
--   they are unpublished). A statement trigger adds the seqs of every INSERT into outbox, so
--   every writer (GraphQL, the sync push, an operator) is covered without knowing of it; the
--   two partial indexes it replaces cost the writers as much. Reads start from its lowest seq,
--   so a late commit of a lower seq is still read first, as before.
-- * Marking a batch deletes its seqs from outbox_pending and records them in outbox_published
--   (one narrow row per batch: when, which seqs, how many): no outbox row is rewritten.
-- * The prune deletes outbox rows of outbox_published batches older than the retention, as it
--   did for rows with an old published_at.
--
-- Carried over: every unpublished row's seq, and every published row's time (its batch is
-- the rows published at the same instant). Run on a live table: CREATE TRIGGER locks outbox
-- against writes (SHARE ROW EXCLUSIVE) until this commits, so no insert can fall between the
-- trigger and the carry-over; writers wait for the carry-over (one scan of the rows kept, at
-- most the retention's).

CREATE TABLE outbox_pending (
    seq bigint PRIMARY KEY  -- outbox.seq of an event not yet published
);

CREATE TABLE outbox_published (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    published_at timestamptz NOT NULL DEFAULT now(),
    seqs int8multirange NOT NULL CHECK (NOT isempty(seqs)),  -- outbox.seq of its events
    events integer NOT NULL CHECK (events > 0)
);
CREATE INDEX outbox_published_published_at ON outbox_published (published_at);

CREATE FUNCTION outbox_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_pending (seq) SELECT seq FROM inserted;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_enqueue AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_enqueue();

INSERT INTO outbox_pending (seq) SELECT seq FROM outbox WHERE published_at IS NULL;

INSERT INTO outbox_published (published_at, seqs, events)
SELECT published_at, range_agg(int8range(seq, seq, '[]')), count(*)
FROM outbox
WHERE published_at IS NOT NULL
GROUP BY published_at
ORDER BY published_at;

DROP INDEX outbox_unpublished;
DROP INDEX outbox_created_unpublished;
DROP INDEX outbox_published_at;
ALTER TABLE outbox DROP COLUMN published_at;

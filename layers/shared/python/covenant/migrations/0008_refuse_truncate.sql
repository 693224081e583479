-- TRUNCATE fires no row triggers: the rows of a tracked table would vanish with no tombstone and
-- no change number, and every synced device would keep them for good. Refuse it; DELETE leaves
-- tombstones (and is what retention and tests use).
CREATE FUNCTION refuse_untracked_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE % would bypass change tracking (no tombstones for sync)', TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Use DELETE: every deleted row then leaves a tombstone.';
END
$$;

CREATE TRIGGER sectors_refuse_truncate BEFORE TRUNCATE ON sectors
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_untracked_truncate();
CREATE TRIGGER countries_refuse_truncate BEFORE TRUNCATE ON countries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_untracked_truncate();
CREATE TRIGGER projects_refuse_truncate BEFORE TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_untracked_truncate();

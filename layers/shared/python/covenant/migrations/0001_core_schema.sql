-- Covenant core schema: reference data, countries, projects, the outbox and change tracking.
-- Every enum and range of DESIGN.md is a CHECK constraint; every API filter and sort has an index.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- ---------------------------------------------------------------------------------------------
-- Change tracking for offline sync.
--
-- Every insert/update of a synced row and every delete (as a tombstone) gets a change number
-- from the sequence `change_seq`. The number is assigned at COMMIT time, by a deferred
-- constraint trigger, while the transaction holds an exclusive transaction-level advisory lock
-- until its commit completes. So numbers are handed out in commit order: a transaction can only
-- take numbers after every transaction that took smaller ones has committed and become visible
-- (PostgreSQL makes a commit visible before it releases locks; replicas replay commits in WAL
-- order). A reader that sees change N therefore already sees every change below N, and "all
-- changes after cursor X" never misses a write that committed late. A plain sequence or a
-- timestamp taken at write time would: a long transaction could commit a smaller number after
-- a reader had moved its cursor past it. Writers serialise only for the few microseconds of
-- their commit, not for their whole duration. Rows not yet committed carry change_seq NULL.
-- ---------------------------------------------------------------------------------------------

CREATE SEQUENCE change_seq AS bigint;

-- Advisory lock key that orders commits of synced changes (see above).
CREATE FUNCTION change_seq_lock_key() RETURNS bigint
    LANGUAGE sql IMMUTABLE AS 'SELECT 4242424242::bigint';

-- BEFORE INSERT OR UPDATE: clear the change number (stamped at commit), bump version and
-- updated_at on a real change. The stamping UPDATE itself passes through untouched.
CREATE FUNCTION track_row_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('covenant.stamping', true) = 'on' THEN
        RETURN NEW;
    END IF;
    NEW.change_seq := NULL;
    IF TG_OP = 'UPDATE' THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    ELSE
        NEW.version := 1;
    END IF;
    RETURN NEW;
END
$$;

-- Deferred, at commit: take the ordering lock, then stamp the row with the next change number.
-- TG_ARGV names the row's key columns.
CREATE FUNCTION stamp_change_seq() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    key_match text := '';
    key_column text;
BEGIN
    PERFORM pg_advisory_xact_lock(change_seq_lock_key());
    FOREACH key_column IN ARRAY TG_ARGV LOOP
        key_match := key_match || format(' AND %I = ($1).%I', key_column, key_column);
    END LOOP;
    PERFORM set_config('covenant.stamping', 'on', true);
    EXECUTE format(
        'UPDATE %I.%I SET change_seq = nextval(''change_seq'') WHERE change_seq IS NULL%s',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, key_match
    ) USING NEW;
    PERFORM set_config('covenant.stamping', 'off', true);
    RETURN NULL;
END
$$;

-- Deletes leave a tombstone (stamped like any change) so that pulls can report them.
CREATE TABLE tombstones (
    table_name text NOT NULL CHECK (table_name IN ('countries', 'projects', 'sectors')),
    record_id text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    change_seq bigint,
    PRIMARY KEY (table_name, record_id)
);
CREATE UNIQUE INDEX tombstones_change_seq ON tombstones (change_seq);
CREATE INDEX tombstones_deleted_at ON tombstones (deleted_at);

-- AFTER DELETE: leave a tombstone (TG_ARGV[0] names the key column). AFTER INSERT: a record
-- created again under a deleted id is alive again, so its tombstone goes.
CREATE FUNCTION record_tombstone() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tombstones (table_name, record_id)
    VALUES (TG_TABLE_NAME, to_jsonb(OLD) ->> TG_ARGV[0])
    ON CONFLICT (table_name, record_id)
        DO UPDATE SET deleted_at = now(), change_seq = NULL;
    RETURN NULL;
END
$$;

CREATE FUNCTION clear_tombstone() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tombstones
    WHERE table_name = TG_TABLE_NAME AND record_id = to_jsonb(NEW) ->> TG_ARGV[0];
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER tombstones_stamp_change_seq
    AFTER INSERT OR UPDATE ON tombstones
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.change_seq IS NULL)
    EXECUTE FUNCTION stamp_change_seq('table_name', 'record_id');

-- ---------------------------------------------------------------------------------------------
-- Reference data
-- ---------------------------------------------------------------------------------------------

-- Filled from the region table in cdk.json by the seed step (the table's one source).
CREATE TABLE regions (
    code text PRIMARY KEY CHECK (code ~ '^[a-z]{3}$'),
    aws_region text NOT NULL UNIQUE CHECK (aws_region ~ '^[a-z]{2}(-[a-z]+)+-[0-9]$'),
    is_primary boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX regions_single_primary ON regions (is_primary) WHERE is_primary;

CREATE TABLE sectors (
    id text PRIMARY KEY
        CHECK (id IN ('agriculture', 'minerals', 'energy', 'technology', 'health', 'education')),
    name text NOT NULL UNIQUE
        CHECK (name IN ('Agriculture', 'Minerals', 'Energy', 'Technology', 'Health', 'Education')),
    description text NOT NULL CHECK (length(description) <= 500),
    version integer NOT NULL DEFAULT 1,
    change_seq bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Countries
-- ---------------------------------------------------------------------------------------------

CREATE TABLE countries (
    code char(3) PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    iso2 char(2) NOT NULL UNIQUE CHECK (iso2 ~ '^[A-Z]{2}$'),
    name text NOT NULL CHECK (name = btrim(name) AND length(name) BETWEEN 1 AND 100),
    continent text NOT NULL CHECK (continent IN
        ('Africa', 'Asia', 'Europe', 'North America', 'South America', 'Oceania')),
    region text NOT NULL REFERENCES regions (code),
    -- Whole US dollars; below 2^53 so every value is exact as a JSON number.
    gdp_usd bigint NOT NULL CHECK (gdp_usd > 0 AND gdp_usd < 9007199254740992),
    -- The 0.01 % contribution, always derived: floor(gdp / 10 000).
    contribution_usd bigint GENERATED ALWAYS AS (gdp_usd / 10000) STORED,
    covenant_status text NOT NULL DEFAULT 'pending'
        CHECK (covenant_status IN ('pending', 'active', 'suspended')),
    joined_at timestamptz,
    version integer NOT NULL DEFAULT 1,
    change_seq bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT countries_joined_when_member
        CHECK (covenant_status = 'pending' OR joined_at IS NOT NULL),
    CONSTRAINT countries_code_region UNIQUE (code, region)
);
CREATE UNIQUE INDEX countries_name_unique ON countries (lower(name));
-- Filters (region, continent, status, GDP range, name search) and sorts (name, GDP, code).
CREATE INDEX countries_region ON countries (region, code);
CREATE INDEX countries_continent ON countries (continent, code);
CREATE INDEX countries_status ON countries (covenant_status, code);
CREATE INDEX countries_gdp ON countries (gdp_usd, code);
CREATE INDEX countries_name ON countries (name, code);
CREATE INDEX countries_name_search ON countries USING gin (lower(name) gin_trgm_ops);
CREATE UNIQUE INDEX countries_change_seq ON countries (change_seq);

-- ---------------------------------------------------------------------------------------------
-- Projects
-- ---------------------------------------------------------------------------------------------

CREATE TABLE projects (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (name = btrim(name) AND length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    sector_id text NOT NULL REFERENCES sectors (id),
    country_code char(3) NOT NULL,
    -- The country's home region, kept equal to it by the foreign key below (and its cascade).
    region text NOT NULL,
    status text NOT NULL DEFAULT 'planning'
        CHECK (status IN ('planning', 'active', 'completed', 'cancelled')),
    budget_usd bigint NOT NULL CHECK (budget_usd > 0 AND budget_usd < 9007199254740992),
    impact_score numeric(4, 2) NOT NULL DEFAULT 0 CHECK (impact_score BETWEEN 0 AND 10),
    progress smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    version integer NOT NULL DEFAULT 1,
    change_seq bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_completed_in_full CHECK (status <> 'completed' OR progress = 100),
    CONSTRAINT projects_country_region FOREIGN KEY (country_code, region)
        REFERENCES countries (code, region) ON UPDATE CASCADE
);
-- Filters (sector, status, country, region, budget range, impact range, name search) and sorts
-- (name, budget, impact, progress, created, updated), each with the id as the keyset tiebreaker.
CREATE INDEX projects_sector ON projects (sector_id, id);
CREATE INDEX projects_status ON projects (status, id);
CREATE INDEX projects_country ON projects (country_code, id);
CREATE INDEX projects_region ON projects (region, id);
CREATE INDEX projects_budget ON projects (budget_usd, id);
CREATE INDEX projects_impact ON projects (impact_score, id);
CREATE INDEX projects_progress ON projects (progress, id);
CREATE INDEX projects_name ON projects (name, id);
CREATE INDEX projects_created ON projects (created_at, id);
CREATE INDEX projects_updated ON projects (updated_at, id);
CREATE INDEX projects_name_search ON projects USING gin (lower(name) gin_trgm_ops);
CREATE UNIQUE INDEX projects_change_seq ON projects (change_seq);

-- A project's region is its country's: derived on write, never taken from a client.
CREATE FUNCTION project_region_from_country() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.country_code IS DISTINCT FROM OLD.country_code THEN
        SELECT region INTO NEW.region FROM countries WHERE code = NEW.country_code;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER projects_region_from_country
    BEFORE INSERT OR UPDATE OF country_code ON projects
    FOR EACH ROW EXECUTE FUNCTION project_region_from_country();

-- ---------------------------------------------------------------------------------------------
-- Change-tracking triggers on the synced tables
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER sectors_track_change BEFORE INSERT OR UPDATE ON sectors
    FOR EACH ROW EXECUTE FUNCTION track_row_change();
CREATE CONSTRAINT TRIGGER sectors_stamp_change_seq AFTER INSERT OR UPDATE ON sectors
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.change_seq IS NULL)
    EXECUTE FUNCTION stamp_change_seq('id');
CREATE TRIGGER sectors_tombstone AFTER DELETE ON sectors
    FOR EACH ROW EXECUTE FUNCTION record_tombstone('id');
CREATE TRIGGER sectors_untombstone AFTER INSERT ON sectors
    FOR EACH ROW EXECUTE FUNCTION clear_tombstone('id');
CREATE UNIQUE INDEX sectors_change_seq ON sectors (change_seq);

CREATE TRIGGER countries_track_change BEFORE INSERT OR UPDATE ON countries
    FOR EACH ROW EXECUTE FUNCTION track_row_change();
CREATE CONSTRAINT TRIGGER countries_stamp_change_seq AFTER INSERT OR UPDATE ON countries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.change_seq IS NULL)
    EXECUTE FUNCTION stamp_change_seq('code');
CREATE TRIGGER countries_tombstone AFTER DELETE ON countries
    FOR EACH ROW EXECUTE FUNCTION record_tombstone('code');
CREATE TRIGGER countries_untombstone AFTER INSERT ON countries
    FOR EACH ROW EXECUTE FUNCTION clear_tombstone('code');

CREATE TRIGGER projects_track_change BEFORE INSERT OR UPDATE ON projects
    FOR EACH ROW EXECUTE FUNCTION track_row_change();
CREATE CONSTRAINT TRIGGER projects_stamp_change_seq AFTER INSERT OR UPDATE ON projects
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.change_seq IS NULL)
    EXECUTE FUNCTION stamp_change_seq('id');
CREATE TRIGGER projects_tombstone AFTER DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION record_tombstone('id');
CREATE TRIGGER projects_untombstone AFTER INSERT ON projects
    FOR EACH ROW EXECUTE FUNCTION clear_tombstone('id');

-- The highest change number a reader's snapshot can see: the cursor a sync pull hands out.
CREATE FUNCTION current_change_cursor() RETURNS bigint
    LANGUAGE sql STABLE AS $$
    SELECT GREATEST(
        0,
        (SELECT max(change_seq) FROM sectors),
        (SELECT max(change_seq) FROM countries),
        (SELECT max(change_seq) FROM projects),
        (SELECT max(change_seq) FROM tombstones)
    )
$$;

-- ---------------------------------------------------------------------------------------------
-- Transactional outbox: written in the same transaction as the change it describes.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE outbox (
    id uuid PRIMARY KEY,                                   -- the CloudEvent id = Nats-Msg-Id
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,        -- publish order
    subject text NOT NULL CHECK (subject ~ '^[a-z]+(\.[a-z0-9_-]+)+$'),
    aggregate_type text NOT NULL CHECK (aggregate_type IN ('country', 'project', 'user')),
    aggregate_id text NOT NULL CHECK (length(aggregate_id) BETWEEN 1 AND 200),
    payload jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

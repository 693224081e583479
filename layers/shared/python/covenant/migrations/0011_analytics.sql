-- ANALYTICS (functions/consumers/analytics.py): the platform's figures per region, sector and
-- status as a time series, built from the COVENANT stream's project events, idempotent per
-- event id. Nothing here is written by the API: only the ANALYTICS consumer writes.
--
-- analytics_applied: every event id the consumer applied (its stream sequence), so a
--   redelivered or replayed event changes nothing.
-- analytics_projects: each project's latest snapshot as applied (the stream sequence of the
--   event it came from: an older snapshot arriving late never overwrites a newer one).
-- analytics_hourly: per hour and (region, sector, status), how the figures changed in that
--   hour: projects (+1/-1), budget and progress sums. A figure at a time is the sum of all the
--   changes before it; statsHistory reads it that way from the region's reader.
CREATE TABLE analytics_applied (
    event_id uuid PRIMARY KEY,
    stream_seq bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analytics_projects (
    project_id uuid PRIMARY KEY,
    region text NOT NULL,
    sector_id text NOT NULL,
    status text NOT NULL,
    budget_usd bigint NOT NULL,
    progress smallint NOT NULL,
    deleted boolean NOT NULL,
    stream_seq bigint NOT NULL
);

CREATE TABLE analytics_hourly (
    region text NOT NULL,
    sector_id text NOT NULL,
    status text NOT NULL,
    hour timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour, 'UTC')),
    projects_delta bigint NOT NULL DEFAULT 0,
    budget_delta bigint NOT NULL DEFAULT 0,
    progress_delta bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (region, sector_id, status, hour)
);
CREATE INDEX analytics_hourly_by_hour ON analytics_hourly (hour);

"""The platform's figures as a time series (migration 0011): applied from COVENANT project
events by the ANALYTICS consumer, read by GraphQL's statsHistory.

Every project event carries the project's whole row (`data.project`), so applying one is:
take the project's previous snapshot out of its (region, sector, status) figures, put the new
one in, both in the hour of the event's time. Idempotent per event id (`analytics_applied`);
a snapshot older (by stream sequence) than the one applied is recorded and ignored, so a
redelivery out of order never rolls a project back. Rebuilding from any point of the stream
is `rebuild()` then replaying from there (docs/deploy.md, "ANALYTICS").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from covenant.db import Session

Dims = tuple[str, str, str]  # region, sector id, status
BUCKETS = {"HOUR": timedelta(hours=1), "DAY": timedelta(days=1)}
MAX_POINTS = 1000


@dataclass(frozen=True)
class ProjectEvent:
    event_id: str
    stream_seq: int
    type: str  # covenant.projects.<action>
    time: datetime
    project: Mapping[str, Any]


@dataclass(frozen=True)
class Snapshot:
    dims: Dims
    budget: int
    progress: int
    deleted: bool


def project_event(
    event_id: str, stream_seq: int, envelope: Mapping[str, Any]
) -> ProjectEvent | None:
    """The project event in an envelope, or None (a country event: no figure of its own; a
    region change reaches projects as their own events)."""
    kind = str(envelope.get("type") or "")
    data = envelope.get("data")
    if not kind.startswith("covenant.projects.") or not isinstance(data, dict):
        return None
    project = data.get("project")
    if not isinstance(project, dict) or "id" not in project:
        return None
    when = datetime.fromisoformat(str(envelope.get("time")).replace("Z", "+00:00"))
    return ProjectEvent(event_id, stream_seq, kind, when.astimezone(UTC), project)


def _snapshot(event: ProjectEvent) -> Snapshot:
    p = event.project
    return Snapshot(
        (str(p.get("region")), str(p.get("sectorId")), str(p.get("status"))),
        int(p.get("budgetUsd") or 0),
        int(p.get("progress") or 0),
        event.type.endswith(".deleted"),
    )


def apply(session: Session, events: Sequence[ProjectEvent]) -> int:
    """Applies the events not applied yet, in one transaction; returns how many changed a
    figure. The caller commits (UnitOfWork) or this runs in its own BEGIN/COMMIT."""
    if not events:
        return 0
    session.run(_LOCK)
    fresh = {
        str(row[0])
        for row in session.run(
            "INSERT INTO analytics_applied (event_id, stream_seq) "
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:seqs AS bigint[])) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            ids=[e.event_id for e in events],
            seqs=[e.stream_seq for e in events],
        )
    }
    todo = sorted((e for e in events if e.event_id in fresh), key=lambda e: e.stream_seq)
    if not todo:
        return 0
    ids = sorted({str(e.project["id"]) for e in todo})
    current: dict[str, tuple[Snapshot, int]] = {}
    for row in session.rows(
        "SELECT project_id, region, sector_id, status, budget_usd, progress, deleted, stream_seq "
        "FROM analytics_projects WHERE project_id = ANY(CAST(:ids AS uuid[])) "
        "ORDER BY project_id FOR UPDATE",
        ids=ids,
    ):
        current[str(row["project_id"])] = (
            Snapshot(
                (row["region"], row["sector_id"], row["status"]),
                int(row["budget_usd"]),
                int(row["progress"]),
                bool(row["deleted"]),
            ),
            int(row["stream_seq"]),
        )
    deltas: dict[tuple[Dims, datetime], list[int]] = {}

    def add(dims: Dims, hour: datetime, sign: int, snap: Snapshot) -> None:
        entry = deltas.setdefault((dims, hour), [0, 0, 0])
        entry[0] += sign
        entry[1] += sign * snap.budget
        entry[2] += sign * snap.progress

    changed: dict[str, tuple[Snapshot, int]] = {}
    applied = 0
    for event in todo:
        key = str(event.project["id"])
        before = changed.get(key) or current.get(key)
        if before is not None and before[1] >= event.stream_seq:
            continue  # an older snapshot than the one applied
        new = _snapshot(event)
        hour = event.time.replace(minute=0, second=0, microsecond=0)
        if before is not None and not before[0].deleted:
            add(before[0].dims, hour, -1, before[0])
        if not new.deleted:
            add(new.dims, hour, +1, new)
        changed[key] = (new, event.stream_seq)
        applied += 1
    if changed:
        items = sorted(changed.items())
        session.run(
            "INSERT INTO analytics_projects AS a (project_id, region, sector_id, status, "
            "budget_usd, progress, deleted, stream_seq) "
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:regions AS text[]), "
            "CAST(:sectors AS text[]), CAST(:statuses AS text[]), CAST(:budgets AS bigint[]), "
            "CAST(:progress AS smallint[]), CAST(:deleted AS boolean[]), CAST(:seqs AS bigint[])) "
            "ON CONFLICT (project_id) DO UPDATE SET region = EXCLUDED.region, "
            "sector_id = EXCLUDED.sector_id, status = EXCLUDED.status, "
            "budget_usd = EXCLUDED.budget_usd, progress = EXCLUDED.progress, "
            "deleted = EXCLUDED.deleted, stream_seq = EXCLUDED.stream_seq",
            ids=[k for k, _ in items],
            regions=[s.dims[0] for _, (s, _) in items],
            sectors=[s.dims[1] for _, (s, _) in items],
            statuses=[s.dims[2] for _, (s, _) in items],
            budgets=[s.budget for _, (s, _) in items],
            progress=[s.progress for _, (s, _) in items],
            deleted=[s.deleted for _, (s, _) in items],
            seqs=[seq for _, (_, seq) in items],
        )
    rows = [(d, h, v) for (d, h), v in sorted(deltas.items()) if any(v)]
    if rows:
        session.run(
            "INSERT INTO analytics_hourly AS h (region, sector_id, status, hour, projects_delta, "
            "budget_delta, progress_delta) "
            "SELECT * FROM unnest(CAST(:regions AS text[]), CAST(:sectors AS text[]), "
            "CAST(:statuses AS text[]), CAST(:hours AS timestamptz[]), CAST(:p AS bigint[]), "
            "CAST(:b AS bigint[]), CAST(:g AS bigint[])) "
            "ON CONFLICT (region, sector_id, status, hour) DO UPDATE SET "
            "projects_delta = h.projects_delta + EXCLUDED.projects_delta, "
            "budget_delta = h.budget_delta + EXCLUDED.budget_delta, "
            "progress_delta = h.progress_delta + EXCLUDED.progress_delta",
            regions=[d[0] for d, _, _ in rows],
            sectors=[d[1] for d, _, _ in rows],
            statuses=[d[2] for d, _, _ in rows],
            hours=[h.isoformat() for _, h, _ in rows],
            p=[v[0] for _, _, v in rows],
            b=[v[1] for _, _, v in rows],
            g=[v[2] for _, _, v in rows],
        )
    return applied


# Serialises apply() and seed_from_projects(): a project the seed adds while a batch that
# creates it is being applied would otherwise be counted twice.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('covenant-analytics', 0))"

_SEED = """
WITH fresh AS (
    INSERT INTO analytics_projects (project_id, region, sector_id, status, budget_usd,
                                    progress, deleted, stream_seq)
    SELECT id, region, sector_id, status, budget_usd, progress, false, 0 FROM projects
    ON CONFLICT (project_id) DO NOTHING
    RETURNING project_id, region, sector_id, status, budget_usd, progress
), changes AS (
    INSERT INTO analytics_hourly AS h (region, sector_id, status, hour, projects_delta,
                                       budget_delta, progress_delta)
    SELECT f.region, f.sector_id, f.status, date_trunc('hour', p.created_at, 'UTC'),
           count(*), sum(f.budget_usd), sum(f.progress)
    FROM fresh f JOIN projects p ON p.id = f.project_id
    GROUP BY 1, 2, 3, 4
    ON CONFLICT (region, sector_id, status, hour) DO UPDATE SET
        projects_delta = h.projects_delta + EXCLUDED.projects_delta,
        budget_delta = h.budget_delta + EXCLUDED.budget_delta,
        progress_delta = h.progress_delta + EXCLUDED.progress_delta
)
SELECT count(*) FROM fresh
"""


class Runner(Protocol):
    def run(self, sql: str, **params: Any) -> list[list[Any]]: ...


def seed_from_projects(runner: Runner) -> int:
    """Counts every project of the table the figures do not know yet, as it is now, from the
    hour it was created (inside the caller's transaction); returns how many. Its snapshot
    carries stream sequence 0, so the project's first event (any sequence) takes it out and
    puts its own in: seeding never counts a project twice, whenever it runs. A fresh
    deployment's seed data (written without events) and projects older than the COVENANT
    stream's 30 days get a history this way; before their first event it is their present
    state carried back to their creation."""
    runner.run(_LOCK)
    return int(runner.run(_SEED)[0][0])


def rebuild(session: Session) -> None:
    """Forgets every figure and applied event id: replaying the stream from its first message
    (or any later one, see docs) then builds the series again; seed_from_projects() before
    the replay adds what the stream no longer holds."""
    session.run("DELETE FROM analytics_hourly")
    session.run("DELETE FROM analytics_projects")
    session.run("DELETE FROM analytics_applied")


@dataclass(frozen=True)
class StatsFilter:
    region: str | None = None
    sector_id: str | None = None
    status: str | None = None


def bucket_start(value: datetime, bucket: str) -> datetime:
    utc = value.astimezone(UTC)
    if bucket == "DAY":
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


def history(
    session: Session, bucket: str, start: datetime, end: datetime, where: StatsFilter
) -> list[dict[str, Any]]:
    """One point per bucket from `start`'s to `end`'s: the figures at the end of the bucket
    (projects, budget, average progress of the projects matching the filter)."""
    step = BUCKETS[bucket]
    first, last = bucket_start(start, bucket), bucket_start(end, bucket)
    rows = session.rows(
        "WITH filtered AS ("
        "  SELECT hour, projects_delta, budget_delta, progress_delta FROM analytics_hourly"
        "  WHERE hour < CAST(:stop AS timestamptz)"
        "  AND (CAST(:region AS text) IS NULL OR region = CAST(:region AS text))"
        "  AND (CAST(:sector AS text) IS NULL OR sector_id = CAST(:sector AS text))"
        "  AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))),"
        " base AS (SELECT coalesce(sum(projects_delta), 0) AS p,"
        "  coalesce(sum(budget_delta), 0) AS b, coalesce(sum(progress_delta), 0) AS g"
        "  FROM filtered WHERE hour < CAST(:first AS timestamptz)),"
        " inrange AS (SELECT date_trunc(CAST(:unit AS text), hour, 'UTC') AS bucket,"
        "  sum(projects_delta) AS p, sum(budget_delta) AS b, sum(progress_delta) AS g"
        "  FROM filtered WHERE hour >= CAST(:first AS timestamptz) GROUP BY 1),"
        " series AS (SELECT generate_series(CAST(:first AS timestamptz),"
        "  CAST(:last AS timestamptz), CAST(:step AS interval)) AS bucket)"
        " SELECT s.bucket AS at,"
        "  base.p + sum(coalesce(i.p, 0)) OVER w AS projects,"
        "  base.b + sum(coalesce(i.b, 0)) OVER w AS budget,"
        "  base.g + sum(coalesce(i.g, 0)) OVER w AS progress"
        " FROM series s CROSS JOIN base LEFT JOIN inrange i ON i.bucket = s.bucket"
        " WINDOW w AS (ORDER BY s.bucket) ORDER BY s.bucket",
        stop=(last + step).isoformat(),
        first=first.isoformat(),
        last=last.isoformat(),
        unit=bucket.lower(),
        step=f"{int(step.total_seconds())} seconds",
        region=where.region,
        sector=where.sector_id,
        status=where.status,
    )
    return [
        {
            "at": row["at"],
            "projects": int(row["projects"]),
            "budget_usd": int(row["budget"]),
            "average_progress": (
                round(int(row["progress"]) / int(row["projects"]), 2) if row["projects"] else None
            ),
        }
        for row in rows
    ]


def points(start: datetime, end: datetime, bucket: str) -> int:
    return int((bucket_start(end, bucket) - bucket_start(start, bucket)) / BUCKETS[bucket]) + 1

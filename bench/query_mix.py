"""A standard query mix run against the GraphQL handler in-process, at 10 000 and 100 000
projects, side by side in the same run with

- the floor: the same data fetched by hand-written SQL through pg8000 and serialised to the
  same JSON, and
- a naive resolver (Q1 only): the same schema executed by graphql-core with resolvers that
  query once per parent (countries, then each country's projects, then each project's sector).

It starts its own PostgreSQL primary + replica in a temporary folder (as the tests do), prints
p50 / p99 latency and statements per request, the plans of the handler's SQL at 100 000
projects, and whether the targets are met. It measures only: nothing here asserts on time.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import cProfile
import importlib
import io
import json
import logging
import math
import os
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg8000.native
from ariadne import ObjectType, QueryType, load_schema_from_path, make_executable_schema
from graphql import GraphQLSchema, graphql_sync

from covenant import db
from covenant.migrate import migrate
from covenant.regions import Region, get_region, primary_region
from covenant.seed import seed
from devstack.functions import get_function, invoke
from devstack.postgres import PostgresCluster
from devstack.processes import free_port, hand_over, service_user, wait_until
from graphql_api.repository import COUNTRIES, PROJECTS
from graphql_api.resolvers.scalars import date_time, money
from graphql_api.schema import SCHEMA_FILE, snake_case

REPO = Path(__file__).resolve().parent.parent
BASE_EVENT = json.loads((REPO / "events" / "graphql_query.json").read_text())
EDITOR = {"sub": "bench-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
REGION = "ams"
SIZES = (10_000, 100_000)

# Timed iterations per size and query: (handler and floor, naive). The variants of a query are
# interleaved. A variant slower than ~1 s per request gets fewer (at least MIN_SAMPLES), so
# that it spends at most VARIANT_BUDGET_S; the table shows the n actually run.
ITERATIONS = {
    10_000: {
        "Q1": (30, 10),
        "Q2": (60, 0),
        "Q3": (40, 0),
        "Q4": (40, 0),
        "Q5": (40, 0),
        "M": (60, 0),
    },
    100_000: {
        "Q1": (20, 5),
        "Q2": (40, 0),
        "Q3": (30, 0),
        "Q4": (30, 0),
        "Q5": (30, 0),
        "M": (40, 0),
    },
}
WARMUP = 3
FLOOR_TARGET = 1.5  # every p50 at most this many times its floor's
MIN_SAMPLES = 5
VARIANT_BUDGET_S = 25.0
MEASURE_TIMEOUT_MS = 60_000  # the handler's statement_timeout while measuring (default 5 s)

Q1 = (
    "{ countries(first: 195) { nodes { code name gdpUsd contributionUsd "
    "projects(first: 10) { nodes { id name budgetUsd sector { name } } } } } }"
)
Q2 = (
    '{ projects(first: 50, filter: {region: "ams", status: ACTIVE, budgetMin: 1000000}, '
    "orderBy: {field: BUDGET, direction: DESC}) { totalCount pageInfo { hasNextPage endCursor } "
    "nodes { id name budgetUsd impactScore country { name } } } }"
)
STATUS_FIELDS = "projectsByStatus { status count }"
Q3 = (
    "{ regionalStats { region { code } countryCount activeCountryCount totalGdpUsd "
    f"totalContributionUsd projectCount totalBudgetUsd averageImpactScore {STATUS_FIELDS} }} }}"
)
Q4 = (
    "{ globalStats { countryCount activeCountryCount totalGdpUsd totalContributionUsd "
    f"projectCount totalBudgetUsd averageImpactScore averageProgress {STATUS_FIELDS} }} }}"
)
Q5 = (
    "{ sectoralStats { sector { id name } projectCount countryCount totalBudgetUsd "
    f"averageImpactScore averageProgress {STATUS_FIELDS} }} }}"
)
MUTATION = (
    "mutation Bench($id: ID!, $progress: Int!) { updateProject(id: $id, input: "
    "{progress: $progress}) { id name progress version updatedAt } }"
)
QUERIES = {"Q1": Q1, "Q2": Q2, "Q3": Q3, "Q4": Q4, "Q5": Q5}
DESCRIPTIONS = {
    "Q1": "countries(195) > projects(10) > sector",
    "Q2": "projects page: filter+sort+totalCount",
    "Q3": "regionalStats",
    "Q4": "globalStats",
    "Q5": "sectoralStats",
    "M": "updateProject (primary)",
}
# Statement budget: one per level that needs data (each list level, and the many-to-one level
# below it, batched for every parent at once) plus one per totalCount asked for; the reading
# of tests/functions/graphql_api/test_n_plus_one.py.
BUDGET = {
    "Q1": (3, "countries + projects + sector"),
    "Q2": (3, "projects + country + totalCount"),
    "Q3": (1, "regionalStats"),
    "Q4": (1, "globalStats"),
    "Q5": (1, "sectoralStats"),
}
STATUSES = ("planning", "active", "completed", "cancelled")

Result = tuple[str, int, float]  # (response body JSON, statements run, ms spent in SQL calls)


def say(message: str = "") -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------
# The cluster and the data
# --------------------------------------------------------------------------------------------


def connect(port: int, *, read_only: bool) -> pg8000.native.Connection:
    options = "-c statement_timeout=60000"
    if read_only:
        options += " -c default_transaction_read_only=on"
    return pg8000.native.Connection(
        user="postgres",
        host="127.0.0.1",
        port=port,
        database="covenant",
        application_name="covenant-bench",
        startup_params={"options": options},
    )


def wait_for_replica(writer: pg8000.native.Connection, reader: pg8000.native.Connection) -> None:
    target = writer.run("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_until(
        lambda: bool(
            reader.run("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=target)[0][0]
        ),
        180,
        "replica catch-up",
    )


# Bulk load: the per-row triggers are bypassed (session_replication_role = replica) and their
# effects applied set-based in the same statement: the region comes from the country, the
# change number from change_seq, version/created_at/updated_at from the defaults. Foreign keys
# are not checked in that mode; the rows are valid by construction (codes and sectors are read
# from the tables). Names follow the seed's convention, "<country name> <kind> ...".
# Through the triggers the load costs a row write, the commit-time change stamp and their index
# entries per project: linear since migration 0005 (before it, the stamp walked every row still
# unstamped: 90 000 inserts took 461 s), but still 34 s for 90 000 projects here (24 s of it the
# stamps, 0.27 ms a row: each writes a row version into all 23 indexes of projects), against 7 s.
_GROW = """
WITH c AS (SELECT array_agg(code ORDER BY code) AS codes, array_agg(name ORDER BY code) AS names,
                  array_agg(region ORDER BY code) AS regions
           FROM countries),
g AS (SELECT n, (ARRAY['planning', 'active', 'completed', 'cancelled'])
                 [1 + (n / (CAST(:nc AS int) * 6)) % 4] AS status
      FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS n)
INSERT INTO projects (id, name, description, sector_id, country_code, region, status,
                      budget_usd, impact_score, progress, change_seq)
SELECT md5('covenant-bench-' || g.n)::uuid,
       c.names[1 + g.n % CAST(:nc AS int)] || ' '
           || (ARRAY['Programme', 'Initiative', 'Facility', 'Network', 'Corridor', 'Fund',
                     'Hub', 'Scheme'])[1 + (g.n * 7) % 8] || ' ' || g.n,
       'Benchmark project ' || g.n,
       (ARRAY['agriculture', 'minerals', 'energy', 'technology', 'health', 'education'])
           [1 + (g.n / CAST(:nc AS int)) % 6],
       c.codes[1 + g.n % CAST(:nc AS int)],
       c.regions[1 + g.n % CAST(:nc AS int)],
       g.status,
       100000 + ((g.n::bigint * 2654435761) % 250000) * 1000,
       ((g.n::bigint * 40503) % 1001) / 100.0,
       CASE g.status WHEN 'completed' THEN 100 ELSE (g.n * 37) % 100 END,
       nextval('change_seq')
FROM g, c
"""


@dataclass
class Cluster:
    postgres: PostgresCluster
    data_dir: Path
    writer: pg8000.native.Connection
    reader: pg8000.native.Connection
    next_n: int = 1

    def grow_to(self, total: int) -> None:
        current = int(self.writer.run("SELECT count(*) FROM projects")[0][0])
        count = total - current
        if count <= 0:
            return
        countries = int(self.writer.run("SELECT count(*) FROM countries")[0][0])
        started = time.perf_counter()
        lo, hi = self.next_n, self.next_n + count - 1
        self.writer.run("BEGIN")
        self.writer.run("SET LOCAL session_replication_role = replica")
        self.writer.run(_GROW, lo=lo, hi=hi, nc=countries)
        self.writer.run("COMMIT")
        self.next_n = hi + 1
        inserted = time.perf_counter() - started
        self.writer.run("VACUUM (ANALYZE)")
        analysed = time.perf_counter() - started - inserted
        wait_for_replica(self.writer, self.reader)
        waited = time.perf_counter() - started - inserted - analysed
        say(
            f"  inserted {count:,} projects in {inserted:.1f} s (bulk load, triggers bypassed), "
            f"VACUUM (ANALYZE) {analysed:.1f} s, replica caught up in {waited:.1f} s"
        )


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-bench-"))
    data_dir.chmod(0o755)
    hand_over(data_dir, service_user())
    postgres = PostgresCluster(data_dir / "postgres", free_port(), free_port(), durable=False)
    postgres.start()
    writer = reader = None
    try:
        os.environ["DATABASE_URL"] = postgres.primary.url
        os.environ["DATABASE_READER_URL"] = postgres.replica.url
        migrate()
        seed()
        writer = connect(postgres.primary.port, read_only=False)
        reader = connect(postgres.replica.port, read_only=True)
        wait_for_replica(writer, reader)
        yield Cluster(postgres, data_dir, writer, reader)
    finally:
        db.close_all()
        for connection in (writer, reader):
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Time spent in SQL calls (round trip + server + row decoding), per request
# --------------------------------------------------------------------------------------------


class SqlClock:
    """Wraps covenant.db.Session.run (the handler's one path to the database) for the whole
    run: adds each call's time to `ms`, and records (sql, params) while `capture` is a list.
    The floor and the naive resolver time their own calls with `timed`."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.capture: list[tuple[str, dict[str, Any]]] | None = None
        original = db.Session.run
        clock = self

        def run(session: db.Session, sql: str, **params: Any) -> list[list[Any]]:
            if clock.capture is not None:
                clock.capture.append((sql, params))
            started = time.perf_counter()
            try:
                return original(session, sql, **params)
            finally:
                clock.ms += (time.perf_counter() - started) * 1000

        db.Session.run = run  # type: ignore[method-assign]

    def timed(self, connection: pg8000.native.Connection, sql: str, **params: Any) -> Any:
        started = time.perf_counter()
        try:
            return connection.run(sql, **params)
        finally:
            self.ms += (time.perf_counter() - started) * 1000


CLOCK: SqlClock  # installed by main()


# --------------------------------------------------------------------------------------------
# The handler, in-process, as the tests call it
# --------------------------------------------------------------------------------------------


def make_event(
    query: str,
    variables: dict[str, Any] | None = None,
    claims: dict[str, str] | None = None,
    region: str = REGION,
) -> dict[str, Any]:
    event = copy.deepcopy(BASE_EVENT)
    event["rawPath"] = f"/{region}/graphql"
    context = event["requestContext"]
    context["stage"] = region
    context["http"]["method"] = "POST"
    context["http"]["path"] = f"/{region}/graphql"
    event["headers"] = {
        "accept": "application/graphql-response+json",
        "content-type": "application/json",
    }
    if claims is not None:
        context["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
    payload: dict[str, Any] = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    event["body"] = json.dumps(payload)
    return event


class _Sink(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


class Handler:
    def __init__(self, cluster: Cluster) -> None:
        self.function = get_function("graphql")
        self.region = get_region(REGION)
        # Mutations go to the primary region's function, as a secondary hands them over (the
        # hop's round trip is bench/hop.py's subject, not this one's).
        self.primary = primary_region()
        self.endpoints = {
            "DATABASE_URL": cluster.postgres.primary.url,
            "DATABASE_READER_URL": cluster.postgres.replica.url,
        }
        self.events = {name: make_event(query) for name, query in QUERIES.items()}
        self.metrics = importlib.import_module("graphql_api.handler").metrics
        self.sink = _Sink()

    def set_statement_timeout(self, ms: int | None) -> None:
        """DB_STATEMENT_TIMEOUT_MS for the handler's connections (None: the default, 5 s).
        A connection gets it when it opens, so the cached ones are dropped."""
        if ms is None:
            self.endpoints.pop("DB_STATEMENT_TIMEOUT_MS", None)
        else:
            self.endpoints["DB_STATEMENT_TIMEOUT_MS"] = str(ms)
        db.close_all()
        with db._databases_lock:
            db._databases.clear()

    def call(self, event: dict[str, Any], region: Region | None = None) -> Result:
        # Powertools prints EMF blobs even with POWERTOOLS_METRICS_DISABLED (the cold-start
        # metric, and every 100th value, since a disabled flush never clears them): keep them
        # out of the table, and clear the values as a real flush does.
        CLOCK.ms = 0.0
        with db.record_statements() as statements, contextlib.redirect_stdout(self.sink):
            response = invoke(self.function, region or self.region, event, self.endpoints)
        sql_ms = CLOCK.ms
        self.metrics.clear_metrics()
        if response["statusCode"] != 200:
            raise RuntimeError(f"handler answered {response['statusCode']}: {response['body']}")
        return str(response["body"]), len(statements), sql_ms

    def query(self, name: str) -> Result:
        return self.call(self.events[name])

    def update(self, project_id: str, progress: int) -> Result:
        event = make_event(
            MUTATION, {"id": project_id, "progress": progress}, EDITOR, self.primary.code
        )
        return self.call(event, self.primary)


# --------------------------------------------------------------------------------------------
# The floor: hand-written SQL through pg8000, serialised to the same JSON
# --------------------------------------------------------------------------------------------


def dumps(data: dict[str, Any]) -> str:
    return json.dumps({"data": data}, separators=(",", ":"))


def by_status(planning: Any, active: Any, completed: Any, cancelled: Any) -> list[dict[str, Any]]:
    counts = (planning, active, completed, cancelled)
    return [
        {"status": s.upper(), "count": int(n or 0)} for s, n in zip(STATUSES, counts, strict=True)
    ]


# Q1's floor: per country, its first ten projects by name, read from the
# (country_code, name, id) index that serves the handler's nested list too (migration 0005).
# Before that index existed PostgreSQL walked projects_name in name order filtering on the
# country (4 s at 100 000 projects) and the floor fenced the ordering off with OFFSET 0.
_FLOOR_Q1 = """
SELECT c.code::text, c.name, c.gdp_usd, c.contribution_usd, p.id::text, p.name, p.budget_usd,
       s.name
FROM (SELECT code, name, gdp_usd, contribution_usd FROM countries
      ORDER BY name, code LIMIT 195) AS c
LEFT JOIN LATERAL (SELECT id, name, budget_usd, sector_id FROM projects
                   WHERE country_code = c.code ORDER BY name, id LIMIT 10) AS p ON true
LEFT JOIN sectors s ON s.id = p.sector_id
ORDER BY c.name, c.code, p.name, p.id
"""

_FLOOR_Q2 = """
SELECT p.id::text, p.name, p.budget_usd, p.impact_score::float8, c.name,
       (SELECT count(*) FROM projects
        WHERE region = :region AND status = :status AND budget_usd >= :budget_min)
FROM projects p JOIN countries c ON c.code = p.country_code
WHERE p.region = :region AND p.status = :status AND p.budget_usd >= :budget_min
ORDER BY p.budget_usd DESC, p.id DESC
LIMIT 51
"""

_STATUS_SQL = (
    "count(*) FILTER (WHERE status = 'planning'), count(*) FILTER (WHERE status = 'active'), "
    "count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'cancelled')"
)

_FLOOR_Q3 = f"""
SELECT r.code, c.n, c.active, c.gdp, c.contribution, p.n, p.budget, p.impact,
       p.planning, p.active, p.completed, p.cancelled
FROM regions r
LEFT JOIN (SELECT region, count(*) AS n, count(*) FILTER (WHERE covenant_status = 'active')
                  AS active, sum(gdp_usd)::bigint AS gdp,
                  sum(contribution_usd)::bigint AS contribution
           FROM countries GROUP BY region) AS c ON c.region = r.code
LEFT JOIN (SELECT region, count(*) AS n, sum(budget_usd)::bigint AS budget,
                  avg(impact_score)::float8 AS impact, {_STATUS_SQL}
           FROM projects GROUP BY region) AS p(region, n, budget, impact, planning, active,
                                                completed, cancelled) ON p.region = r.code
ORDER BY r.code
"""

_FLOOR_Q4 = f"""
SELECT c.*, p.*
FROM (SELECT count(*), count(*) FILTER (WHERE covenant_status = 'active'),
             COALESCE(sum(gdp_usd), 0)::bigint, COALESCE(sum(contribution_usd), 0)::bigint
      FROM countries) AS c,
     (SELECT count(*), COALESCE(sum(budget_usd), 0)::bigint, avg(impact_score)::float8,
             avg(progress)::float8, {_STATUS_SQL}
      FROM projects) AS p
"""

_FLOOR_Q5 = f"""
SELECT s.id, s.name, p.n, p.countries, p.budget, p.impact, p.progress,
       p.planning, p.active, p.completed, p.cancelled
FROM sectors s
LEFT JOIN (SELECT sector_id, count(*), count(DISTINCT country_code), sum(budget_usd)::bigint,
                  avg(impact_score)::float8, avg(progress)::float8, {_STATUS_SQL}
           FROM projects GROUP BY sector_id)
     AS p(sector_id, n, countries, budget, impact, progress, planning, active, completed,
          cancelled) ON p.sector_id = s.id
ORDER BY s.name
"""

# The sign-out check every authenticated mutation makes (on the replica): part of what a
# correct mutation must do, so the floor makes it too.
_FLOOR_SIGNED_OUT = """
SELECT EXISTS (SELECT 1 FROM token_revocations WHERE sub = :sub
               AND (CAST(:iat AS bigint) IS NULL
                    OR CAST(:iat AS bigint) < floor(extract(epoch FROM revoked_at))::bigint))
"""
_FLOOR_UPDATE = """
UPDATE projects p SET progress = CAST(:progress AS smallint)
FROM (SELECT id, progress FROM projects WHERE id = CAST(:id AS uuid) FOR UPDATE) AS old
WHERE p.id = old.id
RETURNING p.id::text, p.name, p.description, p.sector_id, p.country_code::text, p.region,
          p.status, p.budget_usd, p.impact_score::float8, p.progress, p.version, p.created_at,
          p.updated_at, old.progress
"""

_FLOOR_OUTBOX = """
INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload)
VALUES (CAST(:id1 AS uuid), :subject1, 'project', :aggregate, CAST(:payload1 AS jsonb)),
       (CAST(:id2 AS uuid), :subject2, 'project', :aggregate, CAST(:payload2 AS jsonb))
"""

_SNAPSHOT_FIELDS = [
    "id",
    "name",
    "description",
    "sectorId",
    "countryCode",
    "region",
    "status",
    "budgetUsd",
    "impactScore",
    "progress",
    "version",
    "createdAt",
    "updatedAt",
]


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(kind: str, subject: str, data: dict[str, Any]) -> tuple[str, str]:
    event_id = str(uuid.uuid4())
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/covenant/{REGION}/graphql",
        "type": kind,
        "subject": subject,
        "time": iso(datetime.now(UTC)),
        "datacontenttype": "application/json",
        "data": data,
    }
    return event_id, json.dumps(body, separators=(",", ":"), default=str)


class Floor:
    def __init__(self, cluster: Cluster) -> None:
        self.reader = cluster.reader
        self.writer = cluster.writer

    def _read(self, sql: str, **params: Any) -> Any:
        return CLOCK.timed(self.reader, sql, **params)

    def _write(self, sql: str, **params: Any) -> Any:
        return CLOCK.timed(self.writer, sql, **params)

    def query(self, name: str) -> Result:
        CLOCK.ms = 0.0
        method: Callable[[], tuple[str, int]] = getattr(self, name.lower())
        body, statements = method()
        return body, statements, CLOCK.ms

    def q1(self) -> tuple[str, int]:
        nodes: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for code, name, gdp, contribution, pid, pname, budget, sector in self._read(_FLOOR_Q1):
            if current is None or current["code"] != code:
                current = {
                    "code": code,
                    "name": name,
                    "gdpUsd": gdp,
                    "contributionUsd": contribution,
                    "projects": {"nodes": []},
                }
                nodes.append(current)
            if pid is not None:
                current["projects"]["nodes"].append(
                    {"id": pid, "name": pname, "budgetUsd": budget, "sector": {"name": sector}}
                )
        return dumps({"countries": {"nodes": nodes}}), 1

    def q2(self) -> tuple[str, int]:
        rows = self._read(_FLOOR_Q2, region=REGION, status="active", budget_min=1_000_000)
        page = rows[:50]
        cursor = None
        if page:
            raw = json.dumps(["budget_usd:desc", page[-1][2], page[-1][0]], separators=(",", ":"))
            cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        data = {
            "projects": {
                "totalCount": int(rows[0][5]) if rows else 0,
                "pageInfo": {"hasNextPage": len(rows) > 50, "endCursor": cursor},
                "nodes": [
                    {
                        "id": pid,
                        "name": name,
                        "budgetUsd": budget,
                        "impactScore": impact,
                        "country": {"name": country},
                    }
                    for pid, name, budget, impact, country, _ in page
                ],
            }
        }
        return dumps(data), 1

    def q3(self) -> tuple[str, int]:
        stats = [
            {
                "region": {"code": code},
                "countryCount": int(n or 0),
                "activeCountryCount": int(active or 0),
                "totalGdpUsd": str(gdp or 0),
                "totalContributionUsd": str(contribution or 0),
                "projectCount": int(projects or 0),
                "totalBudgetUsd": str(budget or 0),
                "averageImpactScore": impact,
                "projectsByStatus": by_status(*counts),
            }
            for code, n, active, gdp, contribution, projects, budget, impact, *counts in (
                self._read(_FLOOR_Q3)
            )
        ]
        return dumps({"regionalStats": stats}), 1

    def q4(self) -> tuple[str, int]:
        countries, active, gdp, contribution, projects, budget, impact, progress, *counts = (
            self._read(_FLOOR_Q4)[0]
        )
        stats = {
            "countryCount": countries,
            "activeCountryCount": active,
            "totalGdpUsd": str(gdp),
            "totalContributionUsd": str(contribution),
            "projectCount": projects,
            "totalBudgetUsd": str(budget),
            "averageImpactScore": impact,
            "averageProgress": progress,
            "projectsByStatus": by_status(*counts),
        }
        return dumps({"globalStats": stats}), 1

    def q5(self) -> tuple[str, int]:
        stats = [
            {
                "sector": {"id": sid, "name": name},
                "projectCount": int(n or 0),
                "countryCount": int(countries or 0),
                "totalBudgetUsd": str(budget or 0),
                "averageImpactScore": impact,
                "averageProgress": progress,
                "projectsByStatus": by_status(*counts),
            }
            for sid, name, n, countries, budget, impact, progress, *counts in (
                self._read(_FLOOR_Q5)
            )
        ]
        return dumps({"sectoralStats": stats}), 1

    def update(self, project_id: str, progress: int) -> Result:
        """What the mutation must do: check the caller has not signed out since the token was
        issued, then the update and its two outbox events, one transaction, then read the
        primary's position after the commit (the answer's extensions.position)."""
        CLOCK.ms = 0.0
        if self._read(_FLOOR_SIGNED_OUT, sub=EDITOR["sub"], iat=EDITOR.get("iat"))[0][0]:
            raise RuntimeError("the bench editor has signed out")
        self._write("BEGIN")
        try:
            row = self._write(_FLOOR_UPDATE, id=project_id, progress=progress)[0]
            snapshot = dict(zip(_SNAPSHOT_FIELDS, row[:-1], strict=True))
            subject = f"projects/{project_id}"
            id1, payload1 = envelope("covenant.projects.updated", subject, {"project": snapshot})
            id2, payload2 = envelope(
                "audit.projects.updated",
                subject,
                {
                    "actor": {"sub": EDITOR["sub"], "roles": ["editor"]},
                    "action": "updated",
                    "region": REGION,
                    "changes": {"progress": {"from": row[-1], "to": progress}},
                },
            )
            self._write(
                _FLOOR_OUTBOX,
                id1=id1,
                id2=id2,
                subject1="covenant.projects.updated",
                subject2="audit.projects.updated",
                aggregate=project_id,
                payload1=payload1,
                payload2=payload2,
            )
            self._write("COMMIT")
        except BaseException:
            self._write("ROLLBACK")
            raise
        self._write("SELECT pg_current_wal_insert_lsn()::text")
        data = {
            "updateProject": {
                "id": snapshot["id"],
                "name": snapshot["name"],
                "progress": snapshot["progress"],
                "version": snapshot["version"],
                "updatedAt": iso(snapshot["updatedAt"]),
            }
        }
        return dumps(data), 6, CLOCK.ms


# --------------------------------------------------------------------------------------------
# The naive resolver: the same schema, executed by graphql-core, one query per parent
# --------------------------------------------------------------------------------------------


class Naive:
    def __init__(self, cluster: Cluster) -> None:
        self.reader = cluster.reader
        self.statements = 0
        self.schema = self._schema()

    def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        self.statements += 1
        rows = CLOCK.timed(self.reader, sql, **params)
        names = [c["name"] for c in self.reader.columns or []]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _schema(self) -> GraphQLSchema:
        query = QueryType()
        country = ObjectType("Country")
        project = ObjectType("Project")

        @query.field("countries")
        def countries(_: Any, info: Any, **args: Any) -> dict[str, Any]:
            rows = self._rows(
                f"SELECT {COUNTRIES.columns} FROM countries c ORDER BY c.name, c.code LIMIT :n",
                n=args["first"],
            )
            return {"nodes": rows}

        @country.field("projects")
        def projects(row: dict[str, Any], info: Any, **args: Any) -> dict[str, Any]:
            rows = self._rows(
                f"SELECT {PROJECTS.columns} FROM projects p "
                "WHERE p.country_code = CAST(:code AS bpchar) ORDER BY p.name, p.id LIMIT :n",
                code=row["code"],
                n=args["first"],
            )
            return {"nodes": rows}

        @project.field("sector")
        def sector(row: dict[str, Any], info: Any) -> dict[str, Any]:
            return self._rows(
                "SELECT id, name, description FROM sectors WHERE id = :id", id=row["sector_id"]
            )[0]

        return make_executable_schema(
            load_schema_from_path(str(SCHEMA_FILE)),
            query,
            country,
            project,
            money,
            date_time,
            convert_names_case=snake_case,
        )

    def query(self, name: str) -> Result:
        assert name == "Q1"
        self.statements = 0
        CLOCK.ms = 0.0
        result = graphql_sync(self.schema, QUERIES[name])
        if result.errors:
            raise RuntimeError(f"naive resolver failed: {result.errors}")
        body = json.dumps({"data": result.data}, separators=(",", ":"))
        return body, self.statements, CLOCK.ms


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class Series:
    times_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)

    def add(self, started: float, result: Result) -> None:
        self.times_ms.append((time.perf_counter() - started) * 1000)
        self.statements.append(result[1])
        self.sql_ms.append(result[2])

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p99(self) -> float:  # nearest rank: with fewer than 100 samples, the slowest one
        ordered = sorted(self.times_ms)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def sql_p50(self) -> float:
        return statistics.median(self.sql_ms)

    @property
    def stmts(self) -> str:
        low, high = min(self.statements), max(self.statements)
        return str(low) if low == high else f"{low}-{high}"


def run_interleaved(
    variants: dict[str, Callable[[], Result]], iterations: dict[str, int]
) -> dict[str, Series]:
    series = {name: Series() for name in variants}
    counts = {}
    for name, call in variants.items():
        started = time.perf_counter()
        call()
        seconds = time.perf_counter() - started
        if seconds < 0.5:
            for _ in range(WARMUP - 1):
                call()
        affordable = int(VARIANT_BUDGET_S / max(seconds, 1e-6))
        counts[name] = min(iterations[name], max(MIN_SAMPLES, affordable))
    for i in range(max(counts.values())):
        for name, call in variants.items():
            if i < counts[name]:
                started = time.perf_counter()
                result = call()
                series[name].add(started, result)
    return series


class Progress:
    """Alternates a project's progress so that every update really changes the row."""

    def __init__(self) -> None:
        self.value = 40

    def next(self) -> int:
        self.value = 41 if self.value == 40 else 40
        return self.value


def same_data(*bodies: str) -> bool:
    data = [json.loads(body)["data"] for body in bodies]
    return all(d == data[0] for d in data[1:])


def verify(handler: Handler, floor: Floor, naive: Naive) -> None:
    for name in QUERIES:
        handler_body = handler.query(name)[0]
        if "errors" in json.loads(handler_body):
            raise RuntimeError(f"{name}: the handler answered errors: {handler_body[:500]}")
        bodies = [handler_body, floor.query(name)[0]]
        if name == "Q1":
            bodies.append(naive.query(name)[0])
        if not same_data(*bodies):
            for body in bodies:
                say(body[:600])
            raise RuntimeError(f"{name}: the floor's (or naive) data differ from the handler's")


def verify_mutation(handler: Handler, floor: Floor, project_id: str, progress: Progress) -> None:
    first = json.loads(handler.update(project_id, progress.next())[0])
    if "errors" in first:
        raise RuntimeError(f"the mutation failed: {first}")
    value = progress.next()
    second = json.loads(floor.update(project_id, value)[0])
    h, f = first["data"]["updateProject"], second["data"]["updateProject"]
    if not (
        h.keys() == f.keys()
        and (f["id"], f["name"], f["progress"]) == (h["id"], h["name"], value)
        and f["version"] == h["version"] + 1
        and isinstance(f["updatedAt"], str)
        and len(f["updatedAt"]) == len(h["updatedAt"])
    ):
        raise RuntimeError(f"mutation shapes differ: handler {h}, floor {f}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        self.messages.append(str(error) if error is not None else record.getMessage())


def default_timeout_check(handler: Handler, attempts: int = 2) -> dict[str, str]:
    """Each query with the handler's default settings (statement_timeout 5 s): failures."""
    handler.set_statement_timeout(None)
    records = _Records()
    engine_logger = logging.getLogger("graphql_api.engine")
    engine_logger.addHandler(records)
    engine_logger.propagate = False  # the traceback would land between the table rows
    failures = {}
    try:
        for name in QUERIES:
            failed = 0
            for _ in range(attempts):
                body = json.loads(handler.query(name)[0])
                failed += bool(body.get("errors"))
            if failed:
                reason = records.messages[-1] if records.messages else "see the errors"
                failures[name] = f"{failed}/{attempts} requests failed: {reason[:160]}"
    finally:
        engine_logger.removeHandler(records)
        engine_logger.propagate = True
        handler.set_statement_timeout(MEASURE_TIMEOUT_MS)
    return failures


@dataclass
class SizeResult:
    size: int
    series: dict[str, dict[str, Series]]  # query -> variant -> series
    default_failures: dict[str, str]

    def ratio(self, query: str) -> float:
        return self.series[query]["handler"].p50 / self.series[query]["floor"].p50


def measure_size(
    size: int, handler: Handler, floor: Floor, naive: Naive, project_id: str, progress: Progress
) -> SizeResult:
    failures = default_timeout_check(handler)
    if failures:
        for name, failure in failures.items():
            say(f"  with the default statement_timeout (5 s): {name}: {failure}")
        say(f"  measuring with DB_STATEMENT_TIMEOUT_MS={MEASURE_TIMEOUT_MS} so that they finish")
    else:
        say("  with the default statement_timeout (5 s): every query answers without error")
    verify(handler, floor, naive)
    verify_mutation(handler, floor, project_id, progress)
    say("  same data: yes (Q1-Q5: handler data == floor data; Q1: == naive; M: same shape)")
    results: dict[str, dict[str, Series]] = {}
    for name in [*QUERIES, "M"]:
        n, naive_n = ITERATIONS[size][name]
        variants: dict[str, Callable[[], Result]]
        if name == "M":
            variants = {
                "handler": lambda: handler.update(project_id, progress.next()),
                "floor": lambda: floor.update(project_id, progress.next()),
            }
        else:
            variants = {
                "handler": lambda q=name: handler.query(q),
                "floor": lambda q=name: floor.query(q),
            }
        counts = {"handler": n, "floor": n}
        if naive_n:
            variants["naive"] = lambda q=name: naive.query(q)
            counts["naive"] = naive_n
        started = time.perf_counter()
        results[name] = run_interleaved(variants, counts)
        say(f"  measured {name} in {time.perf_counter() - started:.1f} s")
    return SizeResult(size, results, failures)


VARIANTS = {
    "handler": "the handler, in-process (devstack.functions.invoke)",
    "floor": "hand-written SQL via pg8000, same JSON",
    "naive": "graphql-core, resolvers querying once per parent",
}


def print_table(result: SizeResult) -> None:
    say()
    say(f"== {result.size:,} projects (region {REGION}; ms; p99 = nearest rank) ==")
    header = (
        f"{'query':<5} {'what':<38} {'variant':<8} {'n':>3} {'p50':>9} {'p99':>9} "
        f"{'SQL p50':>9} {'stmts/req':>9}  {'ratio (p50)':<18}"
    )
    say(header)
    say("-" * len(header))
    for name, variants in result.series.items():
        handler_p50 = variants["handler"].p50
        floor_p50 = variants["floor"].p50
        for i, (variant, series) in enumerate(variants.items()):
            if variant == "handler":
                note = f"{handler_p50 / floor_p50:.2f}x floor"
            elif variant == "floor":
                note = "1.00x floor"
            elif variant == "naive":
                note = f"{series.p50 / handler_p50:.1f}x the handler"
            else:
                note = f"{series.p50 / floor_p50:.1f}x floor"
            say(
                f"{name if i == 0 else '':<5} {DESCRIPTIONS[name] if i == 0 else '':<38} "
                f"{variant:<8} {len(series.times_ms):>3} {series.p50:>9.2f} {series.p99:>9.2f} "
                f"{series.sql_p50:>9.2f} {series.stmts:>9}  {note}"
            )
    say("SQL p50 = median time inside the SQL calls (round trips, server, row decoding); the")
    say("rest of p50 is Python: GraphQL parse/validate/execute, Powertools, transport, JSON.")


# --------------------------------------------------------------------------------------------
# Where the handler's time goes: plans, profiles
# --------------------------------------------------------------------------------------------


def explain(
    handler: Handler, reader: pg8000.native.Connection, name: str, slow: list[str]
) -> list[str]:
    """Prints the plans of the handler's statements for `name`; returns the flags raised and
    adds statements slower than 1 s to `slow`."""
    CLOCK.capture = []
    try:
        handler.query(name)
        captured = CLOCK.capture
    finally:
        CLOCK.capture = None
    flags = []
    for index, (sql, params) in enumerate(captured, 1):
        plan = [
            row[0] for row in reader.run("EXPLAIN (ANALYZE false, COSTS true) " + sql, **params)
        ]
        executed = reader.run("EXPLAIN (ANALYZE true, TIMING false) " + sql, **params)[-1][0]
        say()
        say(f"-- {name} statement {index}/{len(captured)}: {' '.join(sql.split())[:150]}...")
        for line in plan[:14]:
            say(f"   {line}")
        if len(plan) > 14:
            say(f"   ... ({len(plan) - 14} more lines)")
        say(f"   {executed.strip()} (EXPLAIN ANALYZE, TIMING off, on the replica)")
        server_ms = float(executed.split(":")[1].split()[0])
        if server_ms > 1000:
            found_slow = (
                f"{name} statement {index} runs {server_ms / 1000:.2f} s on the server: "
                f"{server_ms / 50:.0f} % of the default 5 s statement_timeout"
            )
            say(f"   => {found_slow}")
            slow.append(found_slow)
        found = []
        if any("Seq Scan on projects" in line for line in plan):
            found.append("Seq Scan on projects")
        if any("Filter:" in line and "parent_key" in line for line in plan):
            found.append("index walked in sort order, filtered on the parent key")
        for flag in found:
            say(f"   => FLAG: {flag}")
        if not found:
            say("   => no Seq Scan on projects, no filtered index walk")
        flags += [f"{name} statement {index}: {flag}" for flag in found]
    return flags


def profile(handler: Handler, name: str, repeat: int = 5) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        handler.query(name)
    profiler.disable()
    for order, title, restriction in (
        ("tottime", "own time, everything", ()),
        ("cumulative", "cumulative, the project's functions", ("graphql_api|covenant",)),
    ):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(*restriction, 12)
        say()
        say(f"cProfile of {repeat} handler requests of {name}: top 12 by {title}")
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[start:]:
            if line.strip():
                short = line.replace(str(REPO) + "/", "").replace(sys.prefix + "/lib/", "")
                short = short.replace(f"{sys.base_prefix}/lib/", "<stdlib>/")
                say("  " + short.replace("python3.11/site-packages/", "")[:140])


# --------------------------------------------------------------------------------------------


def main() -> None:
    global CLOCK
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    # On SIGTERM too, leave through the `finally` that stops PostgreSQL and removes its folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_started = time.perf_counter()
    say("Covenant GraphQL query-mix benchmark (handler in-process vs hand-written SQL floor)")
    say(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    CLOCK = SqlClock()
    with cluster() as servers:
        say(
            f"PostgreSQL primary :{servers.postgres.primary.port}, "
            f"replica :{servers.postgres.replica.port} (fsync off), migrated and seeded"
        )
        for variant, meaning in VARIANTS.items():
            say(f"  {variant:<8} {meaning}")
        handler, floor, naive = Handler(servers), Floor(servers), Naive(servers)
        project_id = servers.writer.run(
            "SELECT id::text FROM projects WHERE status = 'active' ORDER BY id LIMIT 1"
        )[0][0]
        progress = Progress()
        results: list[SizeResult] = []
        for size in SIZES:
            say()
            say(f"Growing to {size:,} projects")
            servers.grow_to(size)
            results.append(measure_size(size, handler, floor, naive, project_id, progress))
            print_table(results[-1])
            if size == SIZES[0]:
                # Where the Python time goes, at the size where SQL does not drown it.
                for name in [n for n in QUERIES if results[-1].ratio(n) > 2]:
                    profile(handler, name)
                say()
                say(f"Plan of the handler's Q1 SQL at {size:,} projects (for comparison)")
                explain(handler, servers.reader, "Q1", [])
        say()
        say(f"Plans of the handler's SQL at {SIZES[-1]:,} projects (captured from a request)")
        slow: list[str] = []
        flags = explain(handler, servers.reader, "Q1", slow)
        flags += explain(handler, servers.reader, "Q2", slow)
        print_targets(results, flags + slow)
    say()
    say(f"Total run time {time.perf_counter() - run_started:.0f} s")


def print_targets(results: list[SizeResult], flags: list[str]) -> None:
    say()
    say("== Targets ==")
    for result in results:
        for name, (budget, what) in BUDGET.items():
            used = max(result.series[name]["handler"].statements)
            verdict = "met" if used <= budget else "NOT MET"
            say(
                f"  statements/request {name} at {result.size:>7,}: {used} <= {budget} "
                f"({what}): {verdict}"
            )
        m = result.series["M"]["handler"]
        say(
            f"  statements/request M  at {result.size:>7,}: {m.stmts} (the caller's sign-out "
            "check on the replica; BEGIN, UPDATE locking the row and returning its old values, "
            "one outbox INSERT of both events, COMMIT, the position after it; "
            f"floor {max(result.series['M']['floor'].statements)}): no list, not judged"
        )
    for result in results:
        for name in result.series:
            ratio = result.ratio(name)
            verdict = "met" if ratio <= FLOOR_TARGET else "NOT MET"
            say(
                f"  p50 {name:<2} at {result.size:>7,} within {FLOOR_TARGET}x floor: "
                f"{ratio:.2f}x: {verdict}"
            )
    large = results[-1]
    q1 = large.series["Q1"]
    speedup = q1["naive"].p50 / q1["handler"].p50
    verdict = "met" if speedup >= 10 else "NOT MET"
    say(
        f"  Q1 at {large.size:,} >= 10x faster than the naive resolver: {speedup:.1f}x "
        f"({q1['naive'].p50:.1f} ms vs {q1['handler'].p50:.1f} ms): {verdict}"
    )
    say("Also:")
    for result in results:
        if result.default_failures:
            for name, failure in result.default_failures.items():
                say(
                    f"  {name} at {result.size:,} with the default 5 s statement_timeout: {failure}"
                )
        else:
            say(f"  at {result.size:,}: no errors with the default 5 s statement_timeout")
    for flag in flags or ["no Seq Scan on projects, no filtered index walk in Q1/Q2"]:
        say(f"  plan at {large.size:,}: {flag}")

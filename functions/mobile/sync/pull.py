"""GET /sync: every change since the client's cursor, in one statement on the reader.

The cursor is the commit-ordered change number of the foundation's change tracking
(`sync_cursor()`), never a clock: a reader that sees change N sees every change below N, so
"rows and tombstones with change_seq > cursor" misses nothing and repeats nothing. The whole
answer, records and cursor, is built by PostgreSQL in a single statement, hence from a single
snapshot; an incremental pull walks the change_seq indexes from the cursor, so it costs what
changed, not the table size.

Three cases besides the ordinary ones:
- the cursor is older than the tombstone retention (`sync_horizon.pruned_through`): deletes
  it should hear of may be gone, so the answer is the full data set with WatermelonDB's
  `experimentalStrategy: "replacement"` (the app replaces its copy, keeping unpushed changes);
- the cursor is newer than this replica has replayed (the client pulled from a region whose
  replica was ahead): if the primary knows the cursor, "nothing new yet" with the same cursor,
  unless the pull carries a schema migration, whose tables and columns the app fills only from
  this answer: that pull is served by the primary;
- the cursor is unknown even to the primary (a database restored or reset): replacement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Tracer

from covenant import handoff
from covenant.db import Session, reader, writer
from covenant.handoff import PrimaryRequired
from mobile.sync.params import PullParams
from mobile.sync.schema import TABLES, SyncTable

logger = logging.getLogger(__name__)
tracer = Tracer()

REPLACEMENT = "replacement"


def _table_changes(table: SyncTable) -> str:
    t, a = table.name, table.alias
    return f"""(
    SELECT json_build_object(
        'created', COALESCE(json_agg(x.rec ORDER BY x.seq) FILTER (WHERE x.is_new), '[]'::json),
        'updated', COALESCE(json_agg(x.rec ORDER BY x.seq) FILTER (WHERE NOT x.is_new),
                            '[]'::json),
        'deleted', COALESCE((
            SELECT json_agg(ts.record_id ORDER BY ts.change_seq)
            FROM tombstones ts
            WHERE ts.table_name = '{t}'
              AND ts.change_seq > CAST(:{t}_tombstones_since AS bigint)), '[]'::json))
    FROM (SELECT {a}.change_seq AS seq,
                 (CAST(:{t}_all_new AS boolean)
                  OR ({a}.version = 1 AND {a}.change_seq > CAST(:since AS bigint))) AS is_new,
                 {table.record_sql()} AS rec
          FROM {t} {a}
          WHERE {a}.change_seq > CAST(:{t}_rows_since AS bigint)) AS x)"""  # noqa: S608


# The whole answer from one snapshot. Identifiers come from mobile.sync.schema; every value
# is a bound parameter.
PULL_SQL = f"""
SELECT json_build_object(
           'changes', json_build_object(
               {", ".join(f"'{t.name}', {_table_changes(t)}" for t in TABLES)}),
           'timestamp', h.cursor)::text AS body,
       h.cursor,
       h.pruned_through
FROM (SELECT sync_cursor() AS cursor, pruned_through FROM sync_horizon) AS h
"""  # noqa: S608


@dataclass(frozen=True)
class TablePlan:
    rows_since: int  # rows with change_seq above this
    all_new: bool  # every row goes to `created` (the client has none of them)
    tombstones_since: int | None  # None: no deletes (the client has nothing to delete)


@dataclass(frozen=True)
class PullResult:
    body: str  # the JSON answer
    cursor: int
    strategy: str | None  # "replacement" or None
    kind: str  # first | incremental | replacement | ahead (for logs and metrics)


def _plans(params: PullParams, *, full: bool) -> dict[str, TablePlan]:
    since = params.last_pulled_at
    plans: dict[str, TablePlan] = {}
    for table in TABLES:
        if full or since == 0 or (params.migration and table.name in params.migration.tables):
            # A table the app never had (first pull, replacement, or added by an app
            # migration): everything, as created.
            plans[table.name] = TablePlan(0, True, None)
        elif params.migration and table.name in params.migration.columns:
            # Columns added by an app migration: every row, so the new columns get values.
            plans[table.name] = TablePlan(0, False, since)
        else:
            plans[table.name] = TablePlan(since, False, since)
    return plans


def _run(session: Session, params: PullParams, *, full: bool) -> tuple[str, int, int]:
    bound: dict[str, Any] = {"since": 0 if full else params.last_pulled_at}
    for name, plan in _plans(params, full=full).items():
        bound[f"{name}_rows_since"] = plan.rows_since
        bound[f"{name}_all_new"] = plan.all_new
        bound[f"{name}_tombstones_since"] = plan.tombstones_since
    row = session.one(PULL_SQL, **bound)
    assert row is not None
    return str(row["body"]), int(row["cursor"]), int(row["pruned_through"])


def _with_strategy(body: str, strategy: str) -> str:
    # The body is a JSON object built by json_build_object: it ends with its closing brace.
    return body[:-1] + f',"experimentalStrategy":"{strategy}"}}'


@tracer.capture_method(capture_response=False)
def pull(params: PullParams, session: Session | None = None) -> PullResult:
    since = params.last_pulled_at
    if session is None:
        with reader().session() as own:
            return pull(params, own)
    body, cursor, pruned_through = _run(session, params, full=False)
    if since == 0:
        return PullResult(body, cursor, None, "first")
    if since < pruned_through:
        logger.info("sync pull: cursor %d is below the tombstone horizon %d", since, pruned_through)
        return _replacement(session, params)
    if since > cursor:
        if not handoff.is_primary():
            raise PrimaryRequired  # the primary region's function answers the whole pull
        with writer().session() as primary:
            known = int(primary.scalar("SELECT sync_cursor()"))
        if since <= known and params.migration is not None:
            with writer().session() as primary:
                return pull(params, primary)
        if since <= known:
            empty = _empty_changes(since)
            return PullResult(empty, since, None, "ahead")
        logger.info("sync pull: cursor %d is unknown (the primary is at %d)", since, known)
        return _replacement(session, params)
    return PullResult(body, cursor, None, "incremental")


def _replacement(session: Session, params: PullParams) -> PullResult:
    body, cursor, _ = _run(session, params, full=True)
    return PullResult(_with_strategy(body, REPLACEMENT), cursor, REPLACEMENT, "replacement")


def _empty_changes(cursor: int) -> str:
    tables = ",".join(f'"{t.name}":{{"created":[],"updated":[],"deleted":[]}}' for t in TABLES)
    return f'{{"changes":{{{tables}}},"timestamp":{cursor}}}'

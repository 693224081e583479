"""POST /sync: apply a client's project creates, updates and deletes, all or nothing, in one
transaction on the writer, with the outbox events the GraphQL mutations write.

Order of work inside the transaction:
1. The receipt: (user, last_pulled_at, changes) hashed into `sync_push_receipts`. A push that
   was already applied finds its receipt and gets the first answer again (nothing applied
   twice); an identical push still running holds the key, so a concurrent retry waits for it
   and then finds the receipt. The receipt commits with the changes, or not at all.
2. Conflicts: every pushed id is locked (FOR UPDATE, in id order). A record changed on the
   server after last_pulled_at (change_seq above it), or deleted there after it (a newer
   tombstone), is a conflict: nothing is applied, 409 lists the ids, the client pulls and
   pushes again (WatermelonDB's protocol). So is every record of a push whose cursor cannot
   be checked: below the tombstone horizon (deletes since then are forgotten) or above the
   primary's cursor (not handed out by this database, e.g. before a restore). The horizon is
   read after the tombstones, so a prune committing in between is seen.
3. The writes, set-based: INSERT, UPDATE, DELETE, then the events, each statement taking at
   most ROWS_PER_STATEMENT records (a 1 000-record push runs four of each, none near the
   statement timeout even on a loaded writer; one statement per kind grew with the push).

Per the protocol: a `created` record that already exists updates it; an `updated` record that
does not exist is created, unless it was deleted after last_pulled_at (conflict); a delete of
a record that does not exist is ignored. An update that changes nothing writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pg8000.exceptions import DatabaseError

from covenant.db import Row, sqlstate
from covenant.domain_events import (
    ChangeEvents,
    add_change_events,
    change_events,
    wake_bridge_after_commit,
)
from covenant.identity import Caller
from covenant.project_rules import PROJECT_FIELDS, PROJECT_SQL_TYPES
from covenant.sync_horizon import prune_tombstones
from covenant.uow import UnitOfWork
from mobile.http import Conflict
from mobile.settings import SyncSettings
from mobile.sync.changes import PushedChanges, PushedRecord, check, complete, record_error

logger = logging.getLogger(__name__)

_COLUMNS = (
    "p.id::text AS id, p.name, p.description, p.sector_id, p.country_code::text AS country_code, "
    "p.region, p.status, p.budget_usd, p.impact_score::float8 AS impact_score, p.progress, "
    "p.version, p.change_seq, p.created_at, p.updated_at"
)
_CASTS = PROJECT_SQL_TYPES
_UNNEST = (
    "unnest(CAST(:id AS uuid[]), "
    + ", ".join(f"CAST(:{f} AS {_CASTS[f]}[])" for f in PROJECT_FIELDS)
    + f") AS v(id, {', '.join(PROJECT_FIELDS)})"
)

_CLAIM_RECEIPT = """
INSERT INTO sync_push_receipts (id, actor_sub, last_pulled_at) VALUES (:id, :sub, :since)
ON CONFLICT (id) DO NOTHING RETURNING id
"""
_LOCK = f"SELECT {_COLUMNS} FROM projects p WHERE p.id = ANY(CAST(:ids AS uuid[])) ORDER BY p.id FOR UPDATE"  # noqa: S608,E501
_TOMBSTONES = """
SELECT record_id, change_seq FROM tombstones
WHERE table_name = 'projects' AND record_id = ANY(CAST(:ids AS text[]))
"""
_INSERT = (
    f"INSERT INTO projects AS p (id, {', '.join(PROJECT_FIELDS)}) "  # noqa: S608
    f"SELECT v.id, {', '.join('v.' + f for f in PROJECT_FIELDS)} FROM {_UNNEST} "
    f"RETURNING {_COLUMNS}"
)
_UPDATE = (
    f"UPDATE projects AS p SET {', '.join(f'{f} = v.{f}' for f in PROJECT_FIELDS)} "  # noqa: S608
    f"FROM {_UNNEST} WHERE p.id = v.id RETURNING {_COLUMNS}"
)
_DELETE = f"DELETE FROM projects AS p WHERE p.id = ANY(CAST(:ids AS uuid[])) RETURNING {_COLUMNS}"  # noqa: S608
_HORIZON = "SELECT sync_cursor() AS cursor, pruned_through FROM sync_horizon"
# The change-ordering lock that COMMIT's deferred stamping takes (migration 0001), taken as the
# last statement instead: PostgreSQL's statement timeout does not bound a COMMIT waiting for it
# (the client's socket timeout did, and the outcome was then unknown). As a statement it is
# bounded, the timeout rolls the push back, and COMMIT finds the lock already held.
_ORDER_COMMIT = "SELECT pg_advisory_xact_lock(change_seq_lock_key())"
_DUPLICATE_ID = re.compile(r"\(id\)=\(([0-9a-f-]{36})\)")
# Records per statement: each of a push's statements stays a small, bounded piece of work, so
# the largest push never nears the statement timeout, while a push of a few records still runs
# one statement of each kind.
ROWS_PER_STATEMENT = 250
T = TypeVar("T")


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        yield items[start : start + ROWS_PER_STATEMENT]


@dataclass(frozen=True)
class PushRequest:
    caller: Caller
    region: str
    request_id: str
    last_pulled_at: int
    raw_changes: Mapping[str, Any]  # as received: hashed into the receipt
    changes: PushedChanges


@dataclass(frozen=True)
class PushResult:
    body: dict[str, Any]
    replayed: bool


def receipt_id(sub: str, last_pulled_at: int, raw_changes: Mapping[str, Any]) -> str:
    canonical = json.dumps(raw_changes, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{sub}\n{last_pulled_at}\n{canonical}".encode()).hexdigest()


@dataclass
class _Plan:
    inserts: list[dict[str, Any]]
    updates: list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]  # values, changes
    deletes: list[str]
    unchanged: int


def _same(field: str, old: Any, new: Any) -> bool:
    if field == "impact_score":
        return old is not None and round(float(old), 2) == round(float(new), 2)
    return bool(old == new)


def _conflicts(
    changes: PushedChanges, since: int, existing: Mapping[str, Row], deleted_at: Mapping[str, int]
) -> list[str]:
    found = []
    for record_id in changes.ids:
        row = existing.get(record_id)
        if row is not None:
            if int(row["change_seq"]) > since:
                found.append(record_id)
        elif record_id not in changes.deleted and deleted_at.get(record_id, 0) > since:
            found.append(record_id)
    return found


def _plan(changes: PushedChanges, existing: Mapping[str, Row]) -> _Plan:
    plan = _Plan([], [], [], 0)
    for record in [*changes.created, *changes.updated]:
        current = existing.get(record.id)
        if current is None:
            plan.inserts.append({"id": record.id, **complete(record.values, "projects", record.id)})
            continue
        merged = {f: current[f] for f in PROJECT_FIELDS} | record.values
        check(merged, "projects", record.id)
        diff = {
            f: {"from": current[f], "to": merged[f]}
            for f in PROJECT_FIELDS
            if not _same(f, current[f], merged[f])
        }
        if diff:
            plan.updates.append(({"id": record.id, **merged}, diff))
        else:
            plan.unchanged += 1
    plan.deletes = [record_id for record_id in changes.deleted if record_id in existing]
    plan.unchanged += len(changes.deleted) - len(plan.deletes)
    return plan


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in ("id", *PROJECT_FIELDS)}


def _require_countries(uow: UnitOfWork, plan: _Plan, records: Sequence[PushedRecord]) -> None:
    wanted = {v["country_code"] for v in plan.inserts} | {
        v["country_code"] for v, diff in plan.updates if "country_code" in diff
    }
    if not wanted:
        return
    known = {
        row[0]
        for row in uow.run(
            "SELECT code::text FROM countries WHERE code = ANY(CAST(:codes AS bpchar[]))",
            codes=sorted(wanted),
        )
    }
    for record in records:
        code = record.values.get("country_code")
        if code in wanted and code not in known:
            raise record_error("projects", record.id, "country_code", f"names no country ({code})")


@contextmanager
def _duplicate_creates_conflict() -> Iterator[None]:
    """Two pushes creating the same new id at once: the second one's INSERT meets the first
    one's committed row. That is a conflict like any other."""
    try:
        yield
    except DatabaseError as exc:
        details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if sqlstate(exc) == "23505" and details.get("n") == "projects_pkey":
            match = _DUPLICATE_ID.search(str(details.get("D", "")))
            ids = [match.group(1)] if match else []
            raise _conflict(ids) from exc
        raise


def _conflict(ids: list[str]) -> Conflict:
    return Conflict(
        "Some records changed on the server after your last pull. Pull, then push again.",
        conflicts={"projects": ids},
    )


def _uncheckable_cursor(since: int, horizon: Row, ids: list[str]) -> Conflict | None:
    """A cursor against which changes cannot be checked makes every pushed record a
    conflict; the pull that follows answers a full replacement and a usable cursor."""
    if since < int(horizon["pruned_through"]):
        why = "is older than the tombstone retention: deletes since then are forgotten"
        reason = "cursor_too_old"
    elif since > int(horizon["cursor"]):
        why = f"is newer than any change on this server ({horizon['cursor']})"
        reason = "cursor_unknown"
    else:
        return None
    return Conflict(
        f"last_pulled_at {since} {why}. Pull, then push again.",
        conflicts={"projects": ids},
        field="last_pulled_at",
        reason=reason,
    )


def push(request: PushRequest) -> PushResult:
    changes, since = request.changes, request.last_pulled_at
    key = receipt_id(request.caller.sub, since, request.raw_changes)
    with _duplicate_creates_conflict(), UnitOfWork() as uow:
        if uow.scalar(_CLAIM_RECEIPT, id=key, sub=request.caller.sub, since=since) is None:
            stored = uow.scalar("SELECT response FROM sync_push_receipts WHERE id = :id", id=key)
            return PushResult(_as_dict(stored), replayed=True)
        ids = changes.ids
        # Locked in id order across the batches too (two pushes never wait on each other in a
        # cycle); the ids are lower-case UUIDs, whose text order is PostgreSQL's uuid order.
        existing = {
            row["id"]: row for batch in _batches(sorted(ids)) for row in uow.rows(_LOCK, ids=batch)
        }
        deleted_at = {
            row[0]: int(row[1])
            for batch in _batches(ids)
            for row in uow.run(_TOMBSTONES, ids=batch)
            if row[1] is not None
        }
        horizon = uow.one(_HORIZON)
        assert horizon is not None  # sync_horizon has its one row from migration 0006
        uncheckable = _uncheckable_cursor(since, horizon, ids)
        if uncheckable is not None:
            raise uncheckable
        conflicts = _conflicts(changes, since, existing, deleted_at)
        if conflicts:
            raise _conflict(conflicts)
        plan = _plan(changes, existing)
        _require_countries(uow, plan, [*changes.created, *changes.updated])
        _apply(uow, request, plan, existing)
        body = {
            "applied": {
                "projects": {
                    "created": len(plan.inserts),
                    "updated": len(plan.updates),
                    "deleted": len(plan.deletes),
                    "unchanged": plan.unchanged,
                }
            }
        }
        # The answer as the receipt keeps it (jsonb orders keys its own way): a replay then
        # answers the same bytes as the first answer.
        body = _as_dict(
            uow.scalar(
                "UPDATE sync_push_receipts SET response = CAST(:body AS jsonb) WHERE id = :id "
                "RETURNING response",
                body=json.dumps(body),
                id=key,
            )
        )
        if uow.events:
            wake_bridge_after_commit(uow, request.region)
        uow.run(_ORDER_COMMIT)
    _maintain()
    return PushResult(body, replayed=False)


def _apply(uow: UnitOfWork, request: PushRequest, plan: _Plan, existing: Mapping[str, Row]) -> None:
    """The writes, then the push's events, ROWS_PER_STATEMENT records at a time."""
    events: list[ChangeEvents] = []

    def emit(action: str, row: Row, diff: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        events.append(
            change_events(
                function="mobile",
                region=request.region,
                actor=request.caller.describe(),
                request_id=request.request_id,
                collection="projects",
                action=action,
                row={k: v for k, v in row.items() if k != "change_seq"},
                changes=diff,
                via="sync",
            )
        )

    for inserts in _batches(plan.inserts):
        for row in uow.rows(_INSERT, **_columns(inserts)):
            emit("created", row)
    diffs = {values["id"]: diff for values, diff in plan.updates}
    for updates in _batches([values for values, _ in plan.updates]):
        for row in uow.rows(_UPDATE, **_columns(updates)):
            emit("updated", row, diffs[row["id"]])
    for deletes in _batches(plan.deletes):
        uow.run(_DELETE, ids=list(deletes))
        for record_id in deletes:
            emit("deleted", existing[record_id])
    for batch in _batches(events):
        add_change_events(uow, batch)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


_maintenance_lock = threading.Lock()
_last_maintenance = 0.0
_MAINTENANCE_EVERY_S = 600.0


def _maintain() -> None:
    """Now and then (per warm Lambda), prune tombstones past retention and expired receipts.
    Best effort: a failure here never fails the push that already committed."""
    global _last_maintenance
    with _maintenance_lock:
        if time.monotonic() - _last_maintenance < _MAINTENANCE_EVERY_S and _last_maintenance:
            return
        _last_maintenance = time.monotonic()
    settings = SyncSettings.load()
    try:
        pruned = prune_tombstones(settings.tombstone_retention_s)
        with UnitOfWork() as uow:
            uow.run(
                "DELETE FROM sync_push_receipts WHERE applied_at < now() "
                "- make_interval(secs => CAST(:ttl AS double precision))",
                ttl=settings.push_receipt_ttl_s,
            )
        if pruned.pruned:
            logger.info(
                "sync: pruned %d tombstones through %d", pruned.pruned, pruned.pruned_through
            )
    except Exception:
        logger.warning("sync maintenance failed; the next push retries it", exc_info=True)

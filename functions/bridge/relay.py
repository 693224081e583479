"""Moves events from the outbox into JetStream.

One relay pass, in one writer transaction: take the relay lock, read the oldest unpublished
events (seq order), publish them all with pipelined acknowledgements and `Nats-Msg-Id` = event
id, then mark the acknowledged ones published in one statement. The transaction-scoped
advisory lock lets one relay publish at a time, which keeps the events of a project in commit
order (a second bridge waits, then continues where the first stopped: nothing is published
twice, nothing skipped). If the bridge dies after publishing but before the mark commits, the
rows are still unpublished: the next pass publishes them again and JetStream's duplicate
window drops the copies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.errors import MaxPayloadError, NoRespondersError
from nats.js.errors import APIError

from covenant.db import Database, Session

logger = logging.getLogger(__name__)

RELAY_LOCK = 0x0B71D6E  # advisory lock id: one relay publishes at a time

_CLAIM = """
SELECT id::text AS id, subject, aggregate_type || ':' || aggregate_id AS aggregate,
       payload::text AS payload, attempts
FROM outbox
WHERE published_at IS NULL AND dead_at IS NULL
  AND created_at <= now() - make_interval(secs => CAST(:min_age AS float8))
ORDER BY seq
LIMIT :limit
FOR UPDATE
"""

_MARK_PUBLISHED = """
UPDATE outbox SET published_at = now(), last_error = NULL
WHERE id = ANY(CAST(:ids AS uuid[]))
"""

_MARK_FAILED = """
UPDATE outbox AS o
SET attempts = o.attempts + 1,
    last_error = f.error,
    dead_at = CASE WHEN o.attempts + 1 >= :max_attempts THEN now() END
FROM unnest(CAST(:ids AS uuid[]), CAST(:errors AS text[])) AS f(id, error)
WHERE o.id = f.id
"""


class Publisher(Protocol):
    async def publish_async(
        self, subject: str, payload: bytes = b"", *, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Any]: ...


@dataclass
class RelayResult:
    published: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # every event not published, why
    rejected: set[str] = field(default_factory=set)  # the event's own fault: counts an attempt
    dead: list[str] = field(default_factory=list)
    stream_missing: set[str] = field(default_factory=set)
    more: bool = False  # the pass was full: more events may wait


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 1000
    ack_timeout_s: float = 10.0
    max_attempts: int = 5
    max_payload: int = 1024 * 1024


async def relay_pass(
    database: Database, publisher: Any, settings: RelaySettings, min_age_s: float = 0.0
) -> RelayResult:
    result = RelayResult()
    session = Session(database)
    session.run("BEGIN")
    try:
        session.run("SELECT pg_advisory_xact_lock(:key)", key=RELAY_LOCK)
        rows = session.rows(_CLAIM, min_age=min_age_s, limit=settings.batch_size)
        result.more = len(rows) == settings.batch_size
        await _publish(rows, publisher, settings, result)
        if result.published:
            session.run(_MARK_PUBLISHED, ids=result.published)
        if result.rejected:
            ids = sorted(result.rejected)
            session.run(
                _MARK_FAILED,
                ids=ids,
                errors=[result.failed[i][:1000] for i in ids],
                max_attempts=settings.max_attempts,
            )
            attempts = {row["id"]: row["attempts"] for row in rows}
            result.dead = [i for i in ids if attempts[i] + 1 >= settings.max_attempts]
        session.run("COMMIT")
    except BaseException:
        try:
            session.run("ROLLBACK")
        except Exception:
            database.close()
        raise
    return result


async def _publish(
    rows: list[dict[str, Any]], publisher: Any, settings: RelaySettings, result: RelayResult
) -> None:
    pending: list[tuple[str, asyncio.Future[Any]]] = []
    blocked: set[str] = set()  # aggregates with an earlier event failing in this pass
    for row in rows:
        payload = row["payload"].encode("utf-8")
        if row["aggregate"] in blocked:
            continue  # keep this aggregate's order: it waits behind its failed event
        if len(payload) > settings.max_payload:
            result.failed[row["id"]] = (
                f"event of {len(payload)} bytes exceeds the {settings.max_payload}-byte limit"
            )
            result.rejected.add(row["id"])
            blocked.add(row["aggregate"])
            continue
        try:
            future = await publisher.publish_async(
                row["subject"], payload, headers={"Nats-Msg-Id": row["id"]}
            )
        except MaxPayloadError as exc:
            result.failed[row["id"]] = f"rejected by the server: {exc}"
            result.rejected.add(row["id"])
            blocked.add(row["aggregate"])
            continue
        except Exception as exc:  # not connected: everything waits for the next pass
            result.failed[row["id"]] = f"{type(exc).__name__}: {exc}"
            blocked.add(row["aggregate"])
            continue
        pending.append((row["id"], future))
    subjects = {row["id"]: row["subject"] for row in rows}
    deadline = time.monotonic() + settings.ack_timeout_s
    for event_id, future in pending:
        try:
            await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except NoRespondersError:
            result.stream_missing.add(subjects[event_id])
            result.failed[event_id] = f"no JetStream stream captures {subjects[event_id]}"
        except TimeoutError:
            result.failed[event_id] = "no acknowledgement in time"
        except APIError as exc:
            result.failed[event_id] = f"rejected by the stream: {exc.description or exc}"
            if exc.code != 503:  # 503: JetStream unavailable for now, not the event's fault
                result.rejected.add(event_id)
        except Exception as exc:  # connection lost mid-pass: the next pass retries it
            result.failed[event_id] = f"{type(exc).__name__}: {exc}"
        else:
            result.published.append(event_id)


def outbox_lag_seconds(database: Database) -> float:
    """Age of the oldest unpublished event (0 when there is none)."""
    with database.session() as session:
        lag = session.scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 "
            "FROM outbox WHERE published_at IS NULL AND dead_at IS NULL"
        )
    return float(lag or 0.0)


def prune_published(database: Database, retention_s: int, limit: int = 10_000) -> int:
    """Deletes published rows older than the retention, a bounded batch per run."""
    with database.session() as session:
        rows = session.run(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
            "WHERE published_at < now() - make_interval(secs => CAST(:retention AS float8)) "
            "LIMIT :limit) RETURNING 1",
            retention=retention_s,
            limit=limit,
        )
    return len(rows)


def unpublished(database: Database, event_ids: list[str]) -> set[str]:
    """The ids among event_ids that are in the outbox and not yet published."""
    if not event_ids:
        return set()
    with database.session() as session:
        rows = session.run(
            "SELECT id::text FROM outbox WHERE id = ANY(CAST(:ids AS uuid[])) "
            "AND published_at IS NULL",
            ids=event_ids,
        )
    return {row[0] for row in rows}

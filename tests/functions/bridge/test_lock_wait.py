"""A bridge that finds another one draining (holding the relay lock) waits for it in the lock's
queue, longer than the statement timeout, but never beyond what its invocation has time for;
then it gives up without failing: its SQS wake-ups whose events are still unpublished come back
as batch item failures, the sweep returns normally, and a RelayBusy metric says so.

The bridge runs here with a 1 s statement timeout (in AWS 5 s), and the relay lock is held by a
session of the test's own, as another bridge's pass holds it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.relay import RELAY_LOCK, _Reader
from covenant import db
from covenant.config import environment
from covenant.regions import primary_region
from devstack.event_sources import scheduled_event
from devstack.functions import LocalContext, function_environment, get_function, load_handler

STATEMENT_TIMEOUT_MS = 1000
# The bridge's time settings in bridge_env: BRIDGE_TIME_RESERVE_MS (default), BRIDGE_ACK_TIMEOUT_S.
RESERVE_S, ACK_TIMEOUT_S = 3.0, 5.0


@pytest.fixture
def short_timeout_url(servers: Any) -> str:
    """The writer's URL spelled so that the bridge gets a Database of its own (db.database
    caches one per role and URL), created with the 1 s statement timeout."""
    return f"{servers.writer_url}?sslmode=disable"


class LockHolder:
    """Another relay's pass: a transaction holding the relay lock, on a thread of its own,
    until released (or `hold_s` has passed)."""

    def __init__(self, url: str, hold_s: float = 30.0) -> None:
        self._database = db.Database(
            db.Role.WRITER, url, statement_timeout_ms=60_000, connect_timeout_s=3
        )
        self._hold_s = hold_s
        self._locked = threading.Event()
        self._release = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._hold, name="relay-lock-holder", daemon=True)

    def _hold(self) -> None:
        try:
            session = db.Session(self._database)
            session.run("BEGIN")
            session.run("SELECT pg_advisory_xact_lock(:key)", key=RELAY_LOCK)
            self._locked.set()
            self._release.wait(self._hold_s)
            session.run("COMMIT")
        except BaseException as exc:  # surfaced by release()
            self._errors.append(exc)
        finally:
            self._database.close()

    def __enter__(self) -> LockHolder:
        self._thread.start()
        assert self._locked.wait(10), self._errors
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive() and not self._errors, self._errors

    def __exit__(self, *exc: object) -> None:
        self.release()


def invoke_with_time(bridge_env: Any, event: dict[str, Any], timeout_s: float, url: str) -> Any:
    """The bridge invoked as Lambda invokes it, with `timeout_s` left in its context, on the
    1 s statement timeout."""
    function, region = get_function("bridge"), primary_region()
    handler = load_handler(function)
    endpoints = bridge_env.endpoints(
        DATABASE_URL=url, DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS)
    )
    with environment(function_environment(function, region, endpoints)):
        return handler(event, LocalContext(function, region, timeout_s=timeout_s))


def timeout_allowing_wait(wait_s: float) -> float:
    """The invocation time after which the bridge may wait `wait_s` for the relay lock: it
    keeps its reserve, and time for one batch whose acknowledgements all time out."""
    return RESERVE_S + ACK_TIMEOUT_S + wait_s


def test_a_wakeup_waits_past_the_statement_timeout_for_the_lock_then_publishes(
    bridge_env, short_timeout_url, capsys
) -> None:
    event_ids = bridge_env.write_events(6)
    record = bridge_env.sqs_record(event_ids)
    capsys.readouterr()

    # The other relay's pass lasts 2.5 s, more than twice the statement timeout.
    with LockHolder(short_timeout_url, hold_s=2.5):
        started = time.monotonic()
        response = invoke_with_time(bridge_env, bridge_env.sqs_batch(record), 30, short_timeout_url)
        took = time.monotonic() - started

    assert response == {"batchItemFailures": []}
    assert 2.0 <= took < 10, took  # it waited for the lock, then relayed
    assert bridge_env.stream_ids() == Counter(event_ids)
    assert all(r["published_at"] is not None for r in bridge_env.outbox_rows(event_ids).values())
    out = capsys.readouterr().out
    assert bridge_env.metric_values(out, "RelayBusy") == []
    assert bridge_env.metric_values(out, "EventsPublished") == [6.0]


def test_a_wakeup_gives_up_when_the_lock_is_held_beyond_its_time(
    bridge_env, short_timeout_url, capsys
) -> None:
    # Published before the other relay took the lock (as if by it): that wake-up is done.
    done = bridge_env.write_events(2)
    assert bridge_env.sweep()["published"] == 2
    waiting = bridge_env.write_events(4)
    done_record, waiting_record = bridge_env.sqs_record(done), bridge_env.sqs_record(waiting)
    capsys.readouterr()

    allowed_wait_s = 2.0  # twice the statement timeout
    with LockHolder(short_timeout_url) as holder:
        started = time.monotonic()
        response = invoke_with_time(
            bridge_env,
            bridge_env.sqs_batch(done_record, waiting_record),
            timeout_allowing_wait(allowed_wait_s),
            short_timeout_url,
        )
        took = time.monotonic() - started
        assert bridge_env.stream_ids() == Counter(done)  # nothing read under the other's lock
        holder.release()

    assert bridge_env.failed_message_ids(response) == {waiting_record["messageId"]}
    assert allowed_wait_s - 0.3 <= took < allowed_wait_s + 2, took
    out = capsys.readouterr().out
    assert bridge_env.metric_values(out, "RelayBusy") == [1.0]
    assert bridge_env.metric_values(out, "EventsPublished") == [0.0]
    assert all(r["published_at"] is None for r in bridge_env.outbox_rows(waiting).values())

    # Its retry, or the sweep, publishes what waited: every event once.
    assert bridge_env.sweep() == {"published": 4, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(done + waiting)
    assert bridge_env.wakeup(waiting) == {"batchItemFailures": []}
    assert bridge_env.stream_ids() == Counter(done + waiting)


def test_the_sweep_returns_normally_when_another_bridge_is_draining(
    bridge_env, short_timeout_url, capsys
) -> None:
    event_ids = bridge_env.write_events(4)
    capsys.readouterr()

    with LockHolder(short_timeout_url) as holder:
        started = time.monotonic()
        response = invoke_with_time(
            bridge_env, scheduled_event("us-east-1"), timeout_allowing_wait(1.5), short_timeout_url
        )
        took = time.monotonic() - started
        holder.release()

    assert response == {"published": 0, "failed": 0, "pruned": 0, "busy": True}
    assert 1.2 <= took < 3.5, took
    out = capsys.readouterr().out
    assert bridge_env.metric_values(out, "RelayBusy") == [1.0]
    assert bridge_env.metric_values(out, "OutboxLagSeconds") != []
    assert bridge_env.stream_ids() == Counter()

    assert bridge_env.sweep() == {"published": 4, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(event_ids)


def test_no_time_left_to_wait_gives_up_at_once(bridge_env, short_timeout_url, capsys) -> None:
    event_ids = bridge_env.write_events(2)
    record = bridge_env.sqs_record(event_ids)
    capsys.readouterr()

    with LockHolder(short_timeout_url):
        started = time.monotonic()
        # Less time than the reserve and one batch's acknowledgements: no wait at all.
        response = invoke_with_time(
            bridge_env, bridge_env.sqs_batch(record), timeout_allowing_wait(-1), short_timeout_url
        )
        took = time.monotonic() - started

    assert bridge_env.failed_message_ids(response) == {record["messageId"]}
    assert took < 1.0, took
    assert bridge_env.metric_values(capsys.readouterr().out, "RelayBusy") == [1.0]
    assert bridge_env.stream_ids() == Counter()


@pytest.fixture
def short_timeout_writer(short_timeout_url: str) -> Iterator[db.Database]:
    database = db.Database(
        db.Role.WRITER,
        short_timeout_url,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        connect_timeout_s=1,
    )
    yield database
    database.close()


def test_after_a_wait_the_pass_runs_with_the_connections_own_timeouts(
    bridge_env, short_timeout_url, short_timeout_writer
) -> None:
    reader = _Reader(short_timeout_writer)
    with LockHolder(short_timeout_url, hold_s=1.6):
        started = time.monotonic()
        assert reader.begin(time.monotonic() + 10)
        assert time.monotonic() - started >= 1.4

    session = db.Session(short_timeout_writer)  # the reader's connection (same thread)
    try:
        assert session.scalar("SHOW statement_timeout") == "1s"
        assert session.scalar("SHOW lock_timeout") == "0"
        # The pass holds the lock: another relay does not get it.
        assert (
            session.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND objid = :key AND pid = pg_backend_pid()",
                key=RELAY_LOCK & 0xFFFFFFFF,
            )
            == 1
        )
    finally:
        reader.rollback()


def test_a_wait_bound_in_the_past_gives_up_without_a_transaction(
    bridge_env, short_timeout_url, short_timeout_writer
) -> None:
    reader = _Reader(short_timeout_writer)
    with LockHolder(short_timeout_url):
        assert not reader.begin(time.monotonic() - 1)
        session = db.Session(short_timeout_writer)
        # The connection is out of any transaction, holding nothing.
        assert (
            session.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()"
            )
            == 0
        )
        time.sleep(0.05)
        # Each statement runs in a transaction of its own: none was left open (one begun before
        # the sleep would date now(), its start, at least 50 ms back).
        assert session.scalar("SELECT clock_timestamp() - now() < interval '40 ms'") is True

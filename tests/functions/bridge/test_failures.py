"""Nothing is lost and nothing is duplicated when NATS goes down while mutations commit or in
the middle of a relay pass, when the server freezes, or when the bridge dies between publishing
events and marking them published; and an outage never holds the bridge for the ack timeout."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from moto import mock_aws

import bridge.connection
import bridge.relay
from covenant import aws, db
from covenant.db import DatabaseUnavailable
from covenant.regions import primary_region
from devstack import event_sources
from devstack.functions import get_function
from devstack.processes import wait_until

MUTATIONS = 200


def _queue_depth(client, url: str) -> int:
    attributes = client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


class _EventSourceThread:
    """The SQS event source polling the wake-up queue and invoking the bridge, in the
    background, as `make dev` runs it."""

    def __init__(self, source: event_sources.SqsEventSource) -> None:
        self.source = source
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-event-source", daemon=True)

    def __enter__(self) -> _EventSourceThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the event source did not stop"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.source.poll_once(wait_s=0):
                    self._stop.wait(0.05)
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
                return


def test_nats_stopped_while_200_mutations_run_then_every_event_once(
    bridge_env, gql, monkeypatch
) -> None:
    monkeypatch.setattr(event_sources, "VISIBILITY_TIMEOUT_S", 1)
    # Long enough that no wake-up is dead-lettered during the outage: the wake-ups alone
    # must deliver everything once NATS is back (the sweep is checked to find nothing left).
    monkeypatch.setattr(event_sources, "MAX_RECEIVE_COUNT", 1000)
    aws.forget_clients()
    with mock_aws():
        sqs = bridge_env.moto_client("sqs")
        queues = event_sources.create_queues(sqs)
        source = event_sources.SqsEventSource(
            sqs, queues, get_function("bridge"), primary_region(), bridge_env.endpoints()
        )
        projects: list[str] = []
        with _EventSourceThread(source) as background:
            for n in range(MUTATIONS):
                if n == MUTATIONS // 4:
                    bridge_env.nats_server.stop()  # while the bridge may be mid-pass
                if n == 3 * MUTATIONS // 4:
                    bridge_env.nats_server.start()
                # Every mutation succeeds (gql asserts it): the outbox takes its events.
                projects.append(
                    gql.create_project(f"Outage Grid {n}", OUTBOX_WAKEUP_QUEUE_URL=queues.url)
                )
            deadline = time.monotonic() + 120
            while _queue_depth(sqs, queues.url):
                assert time.monotonic() < deadline, "wake-ups still queued after the outage"
                time.sleep(0.2)
        assert background.errors == []
        assert _queue_depth(sqs, queues.dead_letter_url) == 0

    events = bridge_env.events_of(projects)
    assert len(events) == 2 * MUTATIONS
    assert Counter(e["subject"] for e in events) == {
        "covenant.projects.created": MUTATIONS,
        "audit.projects.created": MUTATIONS,
    }
    assert bridge_env.sweep() == {"published": 0, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids("COVENANT") == Counter(
        e["id"] for e in events if e["subject"].startswith("covenant.")
    )
    assert bridge_env.stream_ids("AUDIT") == Counter(
        e["id"] for e in events if e["subject"].startswith("audit.")
    )
    assert bridge_env.stream_ids() == Counter(e["id"] for e in events)
    rows = bridge_env.outbox_rows(e["id"] for e in events)
    assert all(r["published_at"] is not None and r["attempts"] == 0 for r in rows.values())
    assert bridge_env.order_violations(events) == []


class _StopsNatsMidPass:
    """The bridge's publisher, with nats-server stopped just before the `after`-th publish:
    NATS dies with a pass's publishes in flight."""

    def __init__(self, publisher, nats_server, after: int) -> None:
        self._publisher = publisher
        self._nats_server = nats_server
        self._after = after
        self.published = 0

    @property
    def max_payload(self) -> int:
        return self._publisher.max_payload

    async def publish(self, subject, payload, msg_id, on_settled):
        self.published += 1
        if self.published == self._after:
            self._nats_server.stop()
        await self._publisher.publish(subject, payload, msg_id, on_settled)

    def fail_pending(self, error):
        return self._publisher.fail_pending(error)


def test_nats_dying_mid_pass_ends_the_pass_then_every_event_once_in_order(
    bridge_env, monkeypatch
) -> None:
    event_ids = bridge_env.write_events(2000, per_aggregate=4)
    publisher = bridge.connection.publisher

    async def dying_publisher():
        return _StopsNatsMidPass(await publisher(), bridge_env.nats_server, after=300)

    monkeypatch.setattr(bridge.connection, "publisher", dying_publisher)
    started = time.monotonic()
    # Batches of 100 projects' 4 events: the 300th publish comes after acknowledgements.
    interrupted = bridge_env.sweep(BRIDGE_ACK_TIMEOUT_S="120", BRIDGE_BATCH_SIZE="400")
    elapsed = time.monotonic() - started
    monkeypatch.setattr(bridge.connection, "publisher", publisher)

    # The pass ended when the connection dropped, not after the acknowledgement timeout.
    assert elapsed < 60, elapsed
    assert 0 < interrupted["published"] < 300 and interrupted["failed"] > 0, interrupted
    bridge_env.nats_server.start()
    assert bridge_env.stream_ids() == Counter(
        i for i, row in bridge_env.outbox_rows(event_ids).items() if row["published_at"]
    )

    after = bridge_env.sweep()
    assert after["published"] == 2000 - interrupted["published"], after
    assert bridge_env.stream_ids() == Counter(event_ids)
    rows = bridge_env.outbox_rows(event_ids)
    assert all(r["published_at"] is not None for r in rows.values())
    assert bridge_env.order_violations(rows.values()) == []


def _wait_until_stopped(pid: int) -> None:
    """SIGSTOP returns before every thread of the process has stopped: a PING sent in that
    instant is still answered (seen 3 times in 10), and the server looks alive."""

    def stopped() -> bool:
        states = [
            path.read_text().rpartition(")")[2].split()[0]
            for path in Path(f"/proc/{pid}/task").glob("*/stat")
        ]
        return bool(states) and all(state == "T" for state in states)

    wait_until(stopped, 5, f"every thread of pid {pid} to stop")


def test_a_frozen_nats_server_does_not_hold_the_bridge_for_the_ack_timeout(bridge_env) -> None:
    """A warm connection to a server that stopped answering (frozen, or gone without closing
    the connection) is found out by a PING, not by waiting out the acknowledgements."""
    before = bridge_env.write_events(4)
    assert bridge_env.sweep()["published"] == 4  # the connection is warm
    during = bridge_env.write_events(6)
    process = bridge_env.nats_server._process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        _wait_until_stopped(process.pid)
        started = time.monotonic()
        frozen = bridge_env.sweep(BRIDGE_ACK_TIMEOUT_S="120")
        elapsed = time.monotonic() - started
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert frozen == {"published": 0, "failed": 1, "pruned": 0}  # NATS unavailable
    assert elapsed < 60, elapsed
    assert bridge_env.sweep() == {"published": 6, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(before + during)


def test_sweep_after_restart_delivers_what_waited(bridge_env) -> None:
    """The schedule alone (no wake-up) recovers an outage too, and a restart keeps the
    stream's state: events published before the outage stay, once."""
    before = bridge_env.write_events(4)
    assert bridge_env.sweep()["published"] == 4
    bridge_env.nats_server.stop()
    during = bridge_env.write_events(6)
    down = bridge_env.sweep(BRIDGE_ACK_TIMEOUT_S="1")  # the warm connection is reconnecting
    assert down["published"] == 0 and down["failed"] >= 1
    bridge_env.nats_server.start()
    assert bridge_env.stream_ids() == Counter(before)
    assert bridge_env.sweep() == {"published": 6, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(before + during)


def test_crash_between_publish_and_mark_republishes_into_the_duplicate_window(
    bridge_env, gql, monkeypatch
) -> None:
    projects = [gql.create_project(f"Crash Grid {n}") for n in range(3)]
    event_ids = [e["id"] for e in bridge_env.events_of(projects)]
    assert len(event_ids) == 6

    # The statement that marks the rows published fails: the invocation dies after publishing.
    run = db.Session.run

    def failing_mark(session, sql, **params):
        if sql == bridge.relay._MARK_PUBLISHED:
            raise DatabaseUnavailable("connection to the writer lost mid-request")
        return run(session, sql, **params)

    monkeypatch.setattr(db.Session, "run", failing_mark)
    with pytest.raises(DatabaseUnavailable):
        bridge_env.wakeup(event_ids)
    assert bridge_env.stream_ids() == Counter(event_ids)  # published ...
    rows = bridge_env.outbox_rows(event_ids)
    assert all(r["published_at"] is None for r in rows.values())  # ... but not marked

    monkeypatch.setattr(db.Session, "run", run)
    response = bridge_env.wakeup(event_ids)  # SQS redelivers the wake-up
    assert bridge_env.failed_message_ids(response) == set()
    # Published a second time; the stream's duplicate window dropped every copy.
    assert bridge_env.stream_ids() == Counter(event_ids)
    rows = bridge_env.outbox_rows(event_ids)
    assert all(r["published_at"] is not None for r in rows.values())
    assert bridge_env.sweep()["published"] == 0
    assert bridge_env.stream_ids() == Counter(event_ids)


def test_nats_down_reports_every_record_as_a_batch_item_failure(bridge_env) -> None:
    first, second = bridge_env.write_events(2), bridge_env.write_events(2)
    bridge_env.nats_server.stop()
    records = [bridge_env.sqs_record(first), bridge_env.sqs_record(second)]
    try:
        response = bridge_env.invoke(bridge_env.sqs_batch(*records))
    finally:
        bridge_env.nats_server.start()
    assert bridge_env.failed_message_ids(response) == {r["messageId"] for r in records}
    rows = bridge_env.outbox_rows(first + second)
    assert len(rows) == 4 and all(r["published_at"] is None for r in rows.values())
    assert bridge_env.all_messages() == []


def test_nats_down_fails_only_the_wakeups_whose_events_wait(bridge_env) -> None:
    """The outbox decides a wake-up's fate, not NATS: a wake-up whose events were already
    published (say SQS delivered it again) succeeds even while NATS is down."""
    published = bridge_env.write_events(2)
    assert bridge_env.sweep()["published"] == 2
    waiting = bridge_env.write_events(2)
    bridge_env.nats_server.stop()
    done, pending = bridge_env.sqs_record(published), bridge_env.sqs_record(waiting)
    try:
        response = bridge_env.invoke(bridge_env.sqs_batch(done, pending))
    finally:
        bridge_env.nats_server.start()
    assert bridge_env.failed_message_ids(response) == {pending["messageId"]}
    assert bridge_env.stream_ids() == Counter(published)

"""Exactly once into the stream, in commit order: a wake-up delivered twice, two bridges
running at the same time (woken by the schedule, or by the same wake-up), the events of one
project across several relay passes, and a project whose event fails at acknowledgement time
while its later events wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from bridge.relay import RELAY_LOCK
from covenant import db

REPO_ROOT = Path(__file__).resolve().parents[3]
SWEEP_EVENT = REPO_ROOT / "events" / "schedule_outbox_sweep.json"
CONCURRENT_EVENTS = 2000


def test_the_same_wakeup_delivered_twice_publishes_each_event_once(bridge_env, gql) -> None:
    projects = [gql.create_project(f"Twice Grid {n}") for n in range(2)]
    event_ids = [e["id"] for e in bridge_env.events_of(projects)]
    assert len(event_ids) == 4
    record = bridge_env.sqs_record(event_ids)

    # A standard queue may hand the same message over twice, even within one batch ...
    first = bridge_env.invoke(bridge_env.sqs_batch(record, record))
    # ... and again later (say its delete was lost).
    second = bridge_env.invoke(bridge_env.sqs_batch(record))

    assert first == {"batchItemFailures": []}
    assert second == {"batchItemFailures": []}
    assert bridge_env.stream_ids() == Counter(event_ids)
    assert all(r["published_at"] is not None for r in bridge_env.outbox_rows(event_ids).values())


def _bridge_process(bridge_env, event_file: Path) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        **bridge_env.endpoints(),
        "BRIDGE_BATCH_SIZE": "100",
        "BRIDGE_BATCHES_PER_PASS": "4",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", "invoke", "bridge", str(event_file), "--region", "iad"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _response(stdout: str) -> dict:
    """The response `devstack invoke` prints (indented JSON) after the function's log lines."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def _waiting_for_relay_lock(session) -> int:
    return int(
        session.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND objid = :key",
            key=RELAY_LOCK & 0xFFFFFFFF,
        )
    )


def _run_together(bridge_env, event_file: Path) -> list[dict]:
    """Two bridge processes on the same event, let into the relay lock together; their
    responses."""
    # Hold the relay lock until both bridges wait for it, so they start relaying together.
    session = db.Session(db.writer())
    session.run("BEGIN")
    try:
        session.run("SELECT pg_advisory_xact_lock(:key)", key=RELAY_LOCK)
        processes = [_bridge_process(bridge_env, event_file) for _ in range(2)]
        deadline = time.monotonic() + 30
        while _waiting_for_relay_lock(session) < 2:
            assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
            assert time.monotonic() < deadline, "the bridges never reached the relay lock"
            time.sleep(0.05)
    finally:
        session.run("COMMIT")
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    return [_response(stdout) for stdout, _ in outputs]


def test_two_bridges_at_once_publish_every_event_once(bridge_env) -> None:
    event_ids = bridge_env.write_events(CONCURRENT_EVENTS, per_aggregate=4)

    responses = _run_together(bridge_env, SWEEP_EVENT)

    published = [r["published"] for r in responses]
    assert sum(published) == CONCURRENT_EVENTS, responses  # no event published twice
    assert all(n > 0 for n in published), responses  # they did take turns
    assert all(r["failed"] == 0 for r in responses), responses
    assert bridge_env.stream_ids() == Counter(event_ids)  # no duplicate, no gap
    rows = bridge_env.outbox_rows(event_ids)
    assert len(rows) == CONCURRENT_EVENTS
    assert all(r["published_at"] is not None for r in rows.values())
    assert bridge_env.order_violations(rows.values()) == []


def test_the_same_wakeup_to_two_bridges_at_once_publishes_each_event_once(
    bridge_env, tmp_path
) -> None:
    event_ids = bridge_env.write_events(CONCURRENT_EVENTS, per_aggregate=4)
    wakeup = bridge_env.sqs_batch(bridge_env.sqs_record(event_ids))
    event_file = tmp_path / "wakeup.json"
    event_file.write_text(json.dumps(wakeup))

    responses = _run_together(bridge_env, event_file)

    # Each settles the wake-up: its events are published, by one bridge or the other.
    assert responses == [{"batchItemFailures": []}] * 2
    assert bridge_env.stream_ids() == Counter(event_ids)
    rows = bridge_env.outbox_rows(event_ids)
    assert all(r["published_at"] is not None for r in rows.values())
    assert bridge_env.order_violations(rows.values()) == []


def test_events_of_a_project_reach_the_stream_in_commit_order(bridge_env, gql) -> None:
    project = gql.create_project("Ordered Grid")
    for progress in (10, 20, 30, 40, 50):
        gql.update_project(project, progress=progress)
    events = bridge_env.events_of([project])
    assert len(events) == 12

    # Small passes: the project's events span four of them.
    assert bridge_env.sweep(BRIDGE_BATCH_SIZE="3")["published"] == 12

    for stream, prefix in (("COVENANT", "covenant."), ("AUDIT", "audit.")):
        stored = bridge_env.messages(stream)
        expected = [e["id"] for e in events if e["subject"].startswith(prefix)]
        assert [m.msg_id for m in stored] == expected
        assert [m.subject for m in stored] == [
            e["subject"] for e in events if e["subject"].startswith(prefix)
        ]
    versions = [
        json.loads(m.data)["data"]["project"]["version"] for m in bridge_env.messages("COVENANT")
    ]
    assert versions == [1, 2, 3, 4, 5, 6]


async def _limit_message_size(js, stream: str, size: int) -> None:
    info = await js.stream_info(stream)
    await js.update_stream(info.config.evolve(max_msg_size=size))


def test_an_event_rejected_on_acknowledgement_holds_back_its_project(bridge_env) -> None:
    """The stream refuses an event only in its acknowledgement, after later events could have
    been sent: none of its project's later events may reach a stream before it is settled."""
    bridge_env.jetstream(lambda js: _limit_message_size(js, "COVENANT", 8 * 1024))
    project = str(uuid.uuid4())
    small = {"project": {"id": project, "description": "fits"}}
    large = {"project": {"id": project, "description": "x" * 16 * 1024}}
    held = bridge_env.write_events(2, aggregate_id=project, data=small)  # updated, audit
    [refused, *after] = bridge_env.write_events(1, aggregate_id=project, data=large)
    after += bridge_env.write_events(4, aggregate_id=project, data=small)
    others = bridge_env.write_events(20, per_aggregate=2)

    first = bridge_env.sweep(BRIDGE_MAX_ATTEMPTS="2")

    assert first == {"published": len(held) + len(others), "failed": 1, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(held + others)
    row = bridge_env.outbox_rows([refused])[refused]
    assert row["attempts"] == 1 and "rejected by the stream" in row["last_error"]

    # The second rejection sets it aside; the project's later events then flow, in order.
    assert bridge_env.sweep(BRIDGE_MAX_ATTEMPTS="2")["published"] == 0
    assert bridge_env.outbox_rows([refused])[refused]["dead_at"] is not None
    assert bridge_env.sweep(BRIDGE_MAX_ATTEMPTS="2")["published"] == len(after)
    assert bridge_env.stream_ids() == Counter(held + others + after)
    assert bridge_env.order_violations(bridge_env.events_of([project])) == []

    # Handed back as docs/deploy.md says, once the stream takes it: published, its error gone.
    bridge_env.jetstream(lambda js: _limit_message_size(js, "COVENANT", 64 * 1024))
    with db.writer().session() as session:
        session.run(
            "UPDATE outbox SET dead_at = NULL, attempts = 0 WHERE id = CAST(:id AS uuid)",
            id=refused,
        )
    assert bridge_env.sweep()["published"] == 1
    row = bridge_env.outbox_rows([refused])[refused]
    assert row["published_at"] is not None and row["last_error"] is None


def test_events_are_structured_mode_cloudevents_on_nats(bridge_env, gql) -> None:
    """The CloudEvents NATS binding reads a message without `Content-Type:
    application/cloudevents+json` as binary mode (attributes in headers, data in the payload);
    the payload is the whole structured envelope, so every message says so."""
    project = gql.create_project("Structured Grid")
    event_ids = [e["id"] for e in bridge_env.events_of([project])]

    assert bridge_env.sweep()["published"] == len(event_ids)

    messages = [m for m in bridge_env.all_messages() if m.msg_id in event_ids]
    assert sorted(m.msg_id for m in messages) == sorted(event_ids)
    for message in messages:
        assert message.content_type == "application/cloudevents+json"
        envelope = json.loads(message.data)
        assert envelope["specversion"] == "1.0" and envelope["id"] == message.msg_id

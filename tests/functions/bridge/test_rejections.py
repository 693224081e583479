"""Events NATS will not take: one too large (its wake-up ends in the dead-letter queue, its row
is set aside after BRIDGE_MAX_ATTEMPTS, the others flow), and events whose stream is missing
(they wait in the outbox, reported, until the topology is applied again)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter

from moto import mock_aws

from covenant import aws, db, wakeup
from covenant.events import CloudEvent, event_source
from covenant.regions import primary_region
from covenant.streams import apply_topology
from covenant.uow import UnitOfWork
from devstack import event_sources
from devstack.functions import get_function

MAX_ATTEMPTS = 4


def _oversized_mutation(size: int) -> tuple[str, str]:
    """One transaction, as a mutation writes it: a covenant event of `size` bytes and its
    audit event, same project. Returns (covenant id, audit id)."""
    project = str(uuid.uuid4())
    events = [
        CloudEvent(
            type="covenant.projects.updated",
            source=event_source("ams", "bridge-tests"),
            subject=f"projects/{project}",
            data={"project": {"id": project, "description": "x" * size}},
        ),
        CloudEvent(
            type="audit.projects.updated",
            source=event_source("ams", "bridge-tests"),
            subject=f"projects/{project}",
            data={"action": "updated"},
        ),
    ]
    with UnitOfWork(db.writer()) as uow:
        for event in events:
            uow.add_event(event, aggregate_type="project", aggregate_id=project)
    return events[0].id, events[1].id


def _messages(client, url: str) -> list[dict]:
    return client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
        "Messages", []
    )


def test_event_over_the_server_max_payload_is_dead_lettered_and_set_aside(
    bridge_env, gql, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(event_sources, "MAX_RECEIVE_COUNT", 2)
    monkeypatch.setattr(event_sources, "VISIBILITY_TIMEOUT_S", 1)
    aws.forget_clients()
    invocations: list[tuple[dict, object]] = []  # (SQS event, response or error)

    def recording_invoke(function, region, event, endpoints):
        try:
            response = event_sources_invoke(function, region, event, endpoints)
        except Exception as exc:
            invocations.append((event, exc))
            raise
        invocations.append((event, response))
        return response

    event_sources_invoke = event_sources.invoke
    monkeypatch.setattr(event_sources, "invoke", recording_invoke)
    endpoints = bridge_env.endpoints(BRIDGE_MAX_ATTEMPTS=str(MAX_ATTEMPTS))

    with mock_aws():
        sqs = bridge_env.moto_client("sqs")
        queues = event_sources.create_queues(sqs)
        monkeypatch.setenv("OUTBOX_WAKEUP_QUEUE_URL", queues.url)
        big, big_audit = _oversized_mutation(1_100_000)  # over nats-server's 1 MiB max_payload
        assert wakeup.send_wakeup([big, big_audit], "ams")
        project = gql.create_project("Neighbour Grid", OUTBOX_WAKEUP_QUEUE_URL=queues.url)
        others = [e["id"] for e in bridge_env.events_of([project])]
        source = event_sources.SqsEventSource(
            sqs, queues, get_function("bridge"), primary_region(), endpoints
        )

        deadline = time.monotonic() + 20
        while not _messages(sqs, queues.dead_letter_url):
            assert time.monotonic() < deadline, "the wake-up never reached the dead-letter queue"
            if not source.poll_once(wait_s=0):
                time.sleep(0.1)

        dead_letters = _messages(sqs, queues.dead_letter_url)
        assert [json.loads(m["Body"])["eventIds"] for m in dead_letters] == [[big, big_audit]]
        assert not _messages(sqs, queues.url)

    # One invocation per receive, maxReceiveCount in all. The first batch held both wake-ups
    # and reported the oversized event's, and only it, as a batch item failure. (The second
    # held only that one; see test_nats_down_reports_every_record_as_a_batch_item_failure for
    # how a batch whose every record fails is answered.)
    assert len(invocations) == 2
    event, response = invocations[0]
    assert len(event["Records"]) == 2
    assert isinstance(response, dict), response
    failed = bridge_env.failed_message_ids(response)
    assert [
        json.loads(r["body"])["eventIds"] for r in event["Records"] if r["messageId"] in failed
    ] == [[big, big_audit]]
    # The other events were published on the first pass.
    assert bridge_env.stream_ids() == Counter(others)

    row = bridge_env.outbox_rows([big])[big]
    assert row["published_at"] is None and row["dead_at"] is None
    assert row["attempts"] == 2
    assert "exceeds the 1048576-byte limit" in row["last_error"]

    # The sweep keeps retrying it until BRIDGE_MAX_ATTEMPTS, then sets it aside.
    capsys.readouterr()
    for attempt in range(3, MAX_ATTEMPTS + 1):
        assert bridge_env.sweep(BRIDGE_MAX_ATTEMPTS=str(MAX_ATTEMPTS)) == {
            "published": 0,
            "failed": 1,
            "pruned": 0,
        }
        assert bridge_env.outbox_rows([big])[big]["attempts"] == attempt
    row = bridge_env.outbox_rows([big])[big]
    assert row["dead_at"] is not None and row["published_at"] is None
    assert bridge_env.metric_values(capsys.readouterr().out, "EventsDeadLettered") == [1.0]
    # ... and raises a critical alert naming it (covenant.alerts; ALERT_ROUTER delivers it).
    (alert,) = [json.loads(m.data) for m in bridge_env.messages("ALERTS")]
    assert alert["type"] == "alerts.critical.events_set_aside"
    assert alert["data"]["details"]["eventIds"] == [big]

    # Its project's audit event waited behind it (order), and now flows; later sweeps skip it.
    assert bridge_env.sweep(BRIDGE_MAX_ATTEMPTS=str(MAX_ATTEMPTS)) == {
        "published": 1,
        "failed": 0,
        "pruned": 0,
    }
    assert bridge_env.sweep(BRIDGE_MAX_ATTEMPTS=str(MAX_ATTEMPTS)) == {
        "published": 0,
        "failed": 0,
        "pruned": 0,
    }
    assert bridge_env.outbox_rows([big])[big]["attempts"] == MAX_ATTEMPTS
    assert bridge_env.stream_ids() == Counter([*others, big_audit])


async def _limit_covenant_message_size(js, size: int) -> None:
    info = await js.stream_info("COVENANT")
    await js.update_stream(info.config.evolve(max_msg_size=size))


def test_event_over_the_stream_max_msg_size_is_a_rejection(bridge_env) -> None:
    bridge_env.jetstream(lambda js: _limit_covenant_message_size(js, 16 * 1024))
    big, big_audit = _oversized_mutation(32 * 1024)
    others = bridge_env.write_events(4)
    bad = bridge_env.sqs_record([big, big_audit])
    good = bridge_env.sqs_record(others)

    response = bridge_env.invoke(bridge_env.sqs_batch(bad, good), BRIDGE_ACK_TIMEOUT_S="1")

    assert bridge_env.failed_message_ids(response) == {bad["messageId"]}
    row = bridge_env.outbox_rows([big])[big]
    assert row["published_at"] is None
    assert row["attempts"] == 1
    assert "rejected by the stream" in row["last_error"]
    stored = bridge_env.stream_ids()
    assert big not in stored
    assert all(stored[i] == 1 for i in others)


def _payload_length(event_id: str) -> int:
    with db.writer().session() as session:
        return int(
            session.scalar(
                "SELECT length(payload::text) FROM outbox WHERE id = CAST(:id AS uuid)", id=event_id
            )
        )


def test_an_event_whose_headers_take_it_over_max_payload_is_refused_before_sending(
    bridge_env,
) -> None:
    """nats-py checks the payload alone against the server's max_payload, the server counts the
    headers too, and closes the connection of a client that sends more: the bridge counts them,
    so the event is refused on its own and the rest of the pass goes through."""
    project = str(uuid.uuid4())
    [probe] = bridge_env.write_events(1, aggregate_id=project, data={"description": "x" * 1000})
    max_payload = 1024 * 1024  # nats-server's default
    size = 1000 + max_payload - 20 - _payload_length(probe)
    bridge_env.mark_everything_published()
    [big] = bridge_env.write_events(1, aggregate_id=project, data={"description": "x" * size})
    assert _payload_length(big) == max_payload - 20  # under max_payload without its headers
    others = bridge_env.write_events(40, per_aggregate=2)

    result = bridge_env.sweep()

    assert result == {"published": len(others), "failed": 1, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(others)
    row = bridge_env.outbox_rows([big])[big]
    assert row["attempts"] == 1 and row["published_at"] is None
    assert f"exceeds the {max_payload}-byte limit" in row["last_error"]


# -- a stream missing ------------------------------------------------------------------------


async def _delete_stream(js, name: str) -> None:
    await js.delete_stream(name)


async def _apply(js) -> None:
    changes = await apply_topology(js, 1)
    assert [c.name for c in changes if c.action == "created"] == ["AUDIT", "AUDIT_LOGGER"]


def test_missing_stream_keeps_its_events_until_the_topology_is_applied(bridge_env, gql) -> None:
    bridge_env.jetstream(lambda js: _delete_stream(js, "AUDIT"))
    projects = [gql.create_project(f"Unaudited Grid {n}") for n in range(2)]
    events = bridge_env.events_of(projects)
    covenant = [e["id"] for e in events if e["subject"].startswith("covenant.")]
    audit = [e["id"] for e in events if e["subject"].startswith("audit.")]
    assert len(covenant) == len(audit) == 2
    unrelated = bridge_env.write_events(2, subjects=("covenant.projects.updated",))
    mutation = bridge_env.sqs_record([e["id"] for e in events])
    other = bridge_env.sqs_record(unrelated)

    response = bridge_env.invoke(bridge_env.sqs_batch(mutation, other))

    assert bridge_env.failed_message_ids(response) == {mutation["messageId"]}
    assert bridge_env.stream_ids("COVENANT") == Counter(covenant + unrelated)
    rows = bridge_env.outbox_rows(audit)
    assert all(r["published_at"] is None and r["dead_at"] is None for r in rows.values())
    assert all(r["attempts"] == 0 for r in rows.values())  # not the events' fault

    bridge_env.jetstream(_apply)
    assert bridge_env.sweep() == {"published": 2, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids("AUDIT") == Counter(audit)
    assert bridge_env.stream_ids() == Counter(covenant + audit + unrelated)


def test_missing_stream_is_reported_in_the_log_and_the_metrics(
    bridge_env, gql, caplog, capsys
) -> None:
    bridge_env.jetstream(lambda js: _delete_stream(js, "AUDIT"))
    gql.create_project("Unreported Grid")
    capsys.readouterr()
    with caplog.at_level(logging.ERROR):
        result = bridge_env.sweep()
    assert result == {"published": 1, "failed": 1, "pruned": 0}
    assert bridge_env.metric_values(capsys.readouterr().out, "StreamMissing") == [1.0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "no JetStream stream captures audit.projects.created" in message for message in errors
    ), errors

"""What operators rely on: the outbox lag metric on every run, pruning of published rows, NATS
settings from Secrets Manager, and the wake-up a mutation sends after its commit."""

from __future__ import annotations

import importlib
import io
import json
import urllib.request
from collections import Counter

import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws

import bridge.connection
from covenant import aws, db
from devstack import event_sources

WRONG_NATS_URL = "nats://127.0.0.1:1"


def _age(event_ids: list[str], **ages_s: float) -> None:
    """Moves the rows' created_at (or another timestamp of theirs) into the past (seconds)."""
    assignments = ", ".join(
        f"{column} = now() - make_interval(secs => CAST(:{column} AS float8))" for column in ages_s
    )
    with db.writer().session() as session:
        session.run(
            f"UPDATE outbox SET {assignments} WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=event_ids,
            **ages_s,
        )


def test_outbox_lag_is_emitted_on_every_run(bridge_env, capsys) -> None:
    capsys.readouterr()
    assert bridge_env.sweep()["published"] == 0
    assert bridge_env.metric_values(capsys.readouterr().out, "OutboxLagSeconds") == [0.0]

    waiting = bridge_env.write_events(2)
    _age(waiting, created_at=30)
    # Too young for this sweep (min age one hour): the events wait, and the lag says so.
    assert bridge_env.sweep(BRIDGE_SWEEP_MIN_AGE_S="3600")["published"] == 0
    [lag] = bridge_env.metric_values(capsys.readouterr().out, "OutboxLagSeconds")
    assert 30 <= lag < 300

    # The SQS trigger emits it too: after it published them, nothing waits.
    response = bridge_env.wakeup(waiting)
    assert bridge_env.failed_message_ids(response) == set()
    out = capsys.readouterr().out
    assert bridge_env.metric_values(out, "OutboxLagSeconds") == [0.0]
    assert bridge_env.metric_values(out, "EventsPublished") == [2.0]
    assert bridge_env.stream_ids() == Counter(waiting)


def test_lag_is_emitted_when_nats_is_unreachable(bridge_env, capsys) -> None:
    waiting = bridge_env.write_events(2)
    _age(waiting, created_at=60)
    capsys.readouterr()
    assert bridge_env.sweep(NATS_URL=WRONG_NATS_URL)["published"] == 0
    [lag] = bridge_env.metric_values(capsys.readouterr().out, "OutboxLagSeconds")
    assert lag >= 60


def test_prune_removes_old_published_rows_and_keeps_the_rest(bridge_env, capsys) -> None:
    old_published, recent_published, old_pending, old_dead = (
        bridge_env.write_events(2) for _ in range(4)
    )
    everything = old_published + recent_published + old_pending + old_dead
    _age(everything, created_at=3 * 3600)
    bridge_env.published_ago(old_published, 2 * 3600)
    bridge_env.published_ago(recent_published, 600)
    _age(old_dead, dead_at=2 * 3600)
    with db.writer().session() as session:
        session.run(
            "UPDATE outbox SET attempts = 5 WHERE id = ANY(CAST(:ids AS uuid[]))", ids=old_dead
        )
        expected_pruned = session.scalar(
            "SELECT COALESCE(sum(events), 0) FROM outbox_published "
            "WHERE published_at < now() - interval '1 hour'"
        )
    assert expected_pruned >= len(old_published)

    capsys.readouterr()
    result = bridge_env.sweep(OUTBOX_RETENTION_S="3600")

    assert result == {"published": len(old_pending), "failed": 0, "pruned": expected_pruned}
    assert bridge_env.metric_values(capsys.readouterr().out, "OutboxPruned") == [
        float(expected_pruned)
    ]
    left = bridge_env.outbox_rows(everything)
    assert set(left) == set(recent_published + old_pending + old_dead)
    assert all(left[i]["published_at"] is not None for i in old_pending)  # published, kept
    assert all(left[i]["published_at"] is None for i in old_dead)  # set aside, kept
    assert bridge_env.stream_ids() == Counter(old_pending)


@pytest.fixture
def fresh_parameters():
    parameters.clear_caches()
    yield
    parameters.clear_caches()


def test_nats_url_comes_from_the_secret(bridge_env, monkeypatch, fresh_parameters) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    event_ids = bridge_env.write_events(4)
    with mock_aws():
        secrets = bridge_env.moto_client("secretsmanager")
        arn = secrets.create_secret(
            Name="covenant/nats", SecretString=json.dumps({"url": bridge_env.nats_url})
        )["ARN"]
        result = bridge_env.sweep(NATS_URL=WRONG_NATS_URL, NATS_SECRET_ARN=arn)
        client = bridge.connection._client
        assert client is not None and client.connected_url is not None
        assert client.connected_url.port == bridge_env.nats_server.port
    assert result == {"published": 4, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(event_ids)


def _bridge_connections(nats_server) -> list[dict]:
    """The bridge's client connections as nats-server's monitoring endpoint lists them."""
    url = f"http://127.0.0.1:{nats_server.monitor_port}/connz?subs=1"
    with urllib.request.urlopen(url, timeout=5) as response:
        connections = json.loads(response.read())["connections"] or []
    return [c for c in connections if c.get("name", "").endswith("-bridge")]


def test_a_warm_bridge_keeps_one_connection_and_one_reply_subscription(bridge_env) -> None:
    for _ in range(3):
        event_ids = bridge_env.write_events(4)
        assert bridge_env.sweep()["published"] == 4
        assert bridge_env.stream_ids()[event_ids[0]] == 1
    [connection] = _bridge_connections(bridge_env.nats_server)
    # Acknowledgements come back on one wildcard inbox subscription, made once.
    assert connection["subscriptions"] == 1, connection


@pytest.fixture
def wakeup_clients(monkeypatch):
    """The wake-up's boto3 clients are cached per process: start without any, so the ones
    made inside mock_aws talk to moto."""
    aws.forget_clients()
    monkeypatch.delenv("SQS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("OUTBOX_WAKEUP_QUEUE_URL", raising=False)


def test_a_mutation_wakes_the_bridge_naming_both_its_events(
    bridge_env, gql, wakeup_clients
) -> None:
    with mock_aws():
        sqs = bridge_env.moto_client("sqs")
        queues = event_sources.create_queues(sqs)
        project = gql.create_project("Wake-up Grid", OUTBOX_WAKEUP_QUEUE_URL=queues.url)
        messages = sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        events = bridge_env.events_of([project])
        assert len(messages) == 1
        assert json.loads(messages[0]["Body"]) == {
            "reason": "committed",
            "region": "ams",
            "eventIds": [e["id"] for e in events],
        }
        assert [e["subject"] for e in events] == [
            "covenant.projects.created",
            "audit.projects.created",
        ]

        # That message, as the event source hands it over, publishes both.
        response = bridge_env.invoke(event_sources.sqs_event(messages, queues.arn, "us-east-1"))
    assert bridge_env.failed_message_ids(response) == set()
    assert bridge_env.stream_ids() == Counter(e["id"] for e in events)


def test_a_mutation_succeeds_when_its_wakeup_cannot_be_sent(
    bridge_env, gql, wakeup_clients, monkeypatch
) -> None:
    missing = "https://sqs.us-east-1.amazonaws.com/123456789012/covenant-no-such-queue"
    graphql_handler = importlib.import_module("graphql_api.handler")
    logged = io.StringIO()  # what the GraphQL function writes to CloudWatch
    monkeypatch.setattr(graphql_handler.logger.logger_handler, "stream", logged)
    with mock_aws():
        project = gql.create_project("Unheard Grid", OUTBOX_WAKEUP_QUEUE_URL=missing)
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert [
        (line["service"], line["message"]) for line in lines if line["name"] == "covenant.wakeup"
    ] == [("graphql", "outbox wake-up not sent; the sweep will publish the events")]
    events = bridge_env.events_of([project])
    assert len(events) == 2
    # The sweep publishes what no wake-up announced.
    assert bridge_env.sweep() == {"published": 2, "failed": 0, "pruned": 0}
    assert bridge_env.stream_ids() == Counter(e["id"] for e in events)

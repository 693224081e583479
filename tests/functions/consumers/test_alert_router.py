"""ALERT_ROUTER against the real nats-server and moto's SNS and DynamoDB: each alert on its
severity's topic (read back from an SQS queue subscribed to it, as an operator's endpoint
would be), the same condition once per window, nothing sent twice when the worker is killed
between sending and acknowledging."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from consumers import alert_router
from covenant import alerts, aws
from covenant.config import environment
from covenant.regions import primary_region
from devstack.consumers import alert_topics
from tests.functions.consumers.conftest import Jet, killed_worker

REGION = primary_region().aws_region


@pytest.fixture
def routed(moto_url: str, jet: Jet) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(the router's environment, severity -> the URL of a queue subscribed to its topic)."""
    env = {
        "SNS_ENDPOINT_URL": moto_url,
        "DYNAMODB_ENDPOINT_URL": moto_url,
        "ALERTS_TABLE_NAME": f"alerts-{uuid.uuid4().hex[:8]}",
        "ALERT_DEDUP_WINDOW_S": "900",
    }
    sqs = aws.client("sqs", REGION, moto_url)
    queues: dict[str, str] = {}
    with environment(env):
        alerts.ensure_table(alerts.dynamodb())
        env.update(alert_topics(alerts.sns()))
        for severity in alerts.SEVERITIES:
            url = sqs.create_queue(QueueName=f"ops-{severity}-{uuid.uuid4().hex[:8]}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            alerts.sns().subscribe(
                TopicArn=env[alerts.TOPIC_ENV[severity]], Protocol="sqs", Endpoint=arn
            )
            queues[severity] = url
    with environment(env):
        jet.reset("ALERT_ROUTER")
        yield env, queues


def received(queue_url: str, moto_url: str) -> list[dict[str, Any]]:
    """The SNS notifications the queue got: Subject, Message, MessageAttributes."""
    sqs = aws.client("sqs", REGION, moto_url)
    found: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return found
        found += [json.loads(m["Body"]) for m in batch]
        for m in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def alert(kind: str, severity: str, key: str | None = None) -> tuple[str, dict[str, Any]]:
    """An alert as a producer raises it, in a producer window of its own (so repeats have ids
    of their own, as the same condition raised in later windows has)."""
    window = uuid.uuid4().int % 10**9
    raised = alerts.Alert(kind, severity, f"{kind} happened", {"n": 1}, dedup_key=key or "")
    event = raised.event("/covenant/iad/tests", now=window * alerts.PRODUCER_WINDOW_S)
    return event.type, event.envelope()


def test_each_alert_reaches_its_severity_s_topic(routed: Any, jet: Jet, moto_url: str) -> None:
    _, queues = routed
    jet.publish(
        [alert("events_set_aside", "critical"), alert("outbox_lag", "warning", key="lag/a")]
    )
    stats = jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
    assert stats.processed == 2
    (critical,) = received(queues["critical"], moto_url)
    assert critical["Subject"] == "[critical] events_set_aside"
    assert critical["Message"].startswith("events_set_aside happened")
    assert critical["MessageAttributes"]["severity"]["Value"] == "critical"
    (warning,) = received(queues["warning"], moto_url)
    assert warning["Subject"] == "[warning] outbox_lag"
    assert received(queues["info"], moto_url) == []


def test_the_same_condition_is_sent_once_per_window(routed: Any, jet: Jet, moto_url: str) -> None:
    env, queues = routed
    key = f"lag/{uuid.uuid4().hex[:6]}"
    with environment({**env, "ALERT_DEDUP_WINDOW_S": "2"}):
        jet.publish([alert("outbox_lag", "warning", key) for _ in range(3)])
        jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
        assert len(received(queues["warning"], moto_url)) == 1
        time.sleep(2.1)  # ... and once more when the window has passed
        jet.publish([alert("outbox_lag", "warning", key) for _ in range(2)])
        jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
    assert len(received(queues["warning"], moto_url)) == 1


def test_killed_between_send_and_ack_sends_nothing_twice(
    routed: Any, jet: Jet, moto_url: str
) -> None:
    env, queues = routed
    jet.publish([alert(f"kind_{n}", "critical") for n in range(10)])
    status = killed_worker(
        "consumers.alert_router", "effect", {**env, "NATS_URL": jet.url}, "ALERTS", "ALERT_ROUTER"
    )
    assert status == -9
    stats = jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect, idle_exit_s=3)
    assert stats.processed == 10  # the seven redelivered, and the other three
    subjects = sorted(m["Subject"] for m in received(queues["critical"], moto_url))
    assert subjects == sorted(f"[critical] kind_{n}" for n in range(10))


def test_an_alert_without_a_severity_is_dropped_and_acknowledged(
    routed: Any, jet: Jet, moto_url: str
) -> None:
    _, queues = routed
    subject, envelope = alert("odd", "info")
    envelope["data"]["severity"] = "apocalyptic"
    jet.publish([(subject, envelope)])
    stats = jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
    assert stats.processed == 1
    assert all(received(url, moto_url) == [] for url in queues.values())
    assert jet.pending("ALERTS", "ALERT_ROUTER") == 0


def test_replica_lag_is_sent_once_per_window_and_again_when_it_turns_critical(
    routed: Any, jet: Jet, moto_url: str
) -> None:
    """The bridge's replica-lag alert, raised in three producer windows (15 minutes of a
    lagging replica) as a warning, then critical: one message on each topic."""

    def raised(lag_s: float) -> tuple[str, dict[str, Any]]:
        found = alerts.replica_lag({"eu-west-1/ams-reader-1": lag_s}, 5, 30)
        assert found is not None
        event = found.event("/covenant/iad/bridge", now=uuid.uuid4().int % 10**9 * 300)
        return event.type, event.envelope()

    _, queues = routed
    jet.publish([raised(6.5), raised(8.0), raised(12.0)])
    jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
    (warning,) = received(queues["warning"], moto_url)
    assert warning["Subject"] == "[warning] replica_lag"
    assert "eu-west-1/ams-reader-1 is 6.5 s behind the writer" in warning["Message"]
    jet.publish([raised(45.0)])
    jet.consume("ALERTS", "ALERT_ROUTER", alert_router.effect)
    (critical,) = received(queues["critical"], moto_url)
    assert critical["Subject"] == "[critical] replica_lag"
    assert received(queues["warning"], moto_url) == []
    assert alerts.replica_lag({"eu-west-1/ams-reader-1": 4.9}, 5, 30) is None

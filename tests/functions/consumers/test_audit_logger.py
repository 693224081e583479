"""AUDIT_LOGGER against the real nats-server and moto's DynamoDB: every audit event recorded
once, in a hash chain that verifies, nothing twice when the worker is killed between its
write and its acknowledgement, tampering detected, keyset pages by actor, entity and time."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from consumers import audit_logger
from covenant import audit_anchor, audit_trail
from covenant.config import environment
from tests.functions.consumers.conftest import Jet, killed_worker


@pytest.fixture
def trail(moto_url: str, jet: Jet) -> Iterator[tuple[Any, dict[str, str]]]:
    table = f"audit-{uuid.uuid4().hex[:8]}"
    env = {
        "DYNAMODB_ENDPOINT_URL": moto_url,
        "AUDIT_TABLE_NAME": table,
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    with environment(env):
        dynamodb = audit_trail.client()
        audit_trail.ensure_table(dynamodb)
        audit_logger._dynamodb = None
        jet.reset("AUDIT_LOGGER")
        yield dynamodb, env
        audit_logger._dynamodb = None


def audit_event(
    n: int, actor: str = "sub-a", entity: str = "projects/p1", when: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    when = when or datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=n)
    return (
        "audit.projects.updated",
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/covenant/ams/graphql",
            "type": "audit.projects.updated",
            "subject": entity,
            "time": when.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {
                "actor": {"sub": actor, "username": actor, "email": None, "roles": ["editor"]},
                "action": "updated",
                "requestId": f"r{n}",
                "region": "ams",
                "changes": {"budget": {"from": n, "to": n + 1}},
            },
        },
    )


def test_every_event_once_in_a_chain_that_verifies(trail: Any, jet: Jet) -> None:
    dynamodb, _ = trail
    events = [audit_event(n) for n in range(30)]
    jet.publish(events)
    stats = jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    assert stats.processed == 30
    records = audit_trail.records(dynamodb)
    assert [r["eventId"]["S"] for r in records] == [e["id"] for _, e in events]
    assert audit_trail.verify(dynamodb) == []
    assert jet.pending("AUDIT", "AUDIT_LOGGER") == 0


def test_killed_between_write_and_ack_records_nothing_twice(trail: Any, jet: Jet) -> None:
    dynamodb, env = trail
    events = [audit_event(n) for n in range(20)]
    jet.publish(events)
    status = killed_worker(
        "consumers.audit_logger", "record", {**env, "NATS_URL": jet.url}, "AUDIT", "AUDIT_LOGGER"
    )
    assert status == -9
    assert len(audit_trail.records(dynamodb)) == 7  # the first batch, written, never acked
    # The restarted worker gets the unacknowledged batch again once ack_wait passes.
    stats = jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect, idle_exit_s=4)
    assert stats.processed == 20
    records = audit_trail.records(dynamodb)
    assert sorted(r["eventId"]["S"] for r in records) == sorted(e["id"] for _, e in events)
    assert len(records) == 20
    assert audit_trail.verify(dynamodb) == []
    assert jet.pending("AUDIT", "AUDIT_LOGGER") == 0


def test_same_id_other_content_is_not_overwritten(trail: Any, jet: Jet) -> None:
    dynamodb, _ = trail
    subject, event = audit_event(1)
    jet.publish([(subject, event)])
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    forged = {**event, "data": {**event["data"], "changes": {}}}
    result = audit_trail.append(
        dynamodb, [audit_trail.AuditEvent(event["id"], str(forged).encode(), forged, 99)]
    )
    assert (result.appended, result.conflicts) == (0, 1)
    assert audit_trail.verify(dynamodb) == []


def test_tampering_is_detected(trail: Any, jet: Jet) -> None:
    dynamodb, env = trail
    jet.publish([audit_event(n) for n in range(5)])
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    third = audit_trail.records(dynamodb)[2]
    table = env["AUDIT_TABLE_NAME"]
    dynamodb.update_item(
        TableName=table,
        Key={"eventId": third["eventId"]},
        UpdateExpression="SET #e = :e",
        ExpressionAttributeNames={"#e": "event"},
        ExpressionAttributeValues={":e": {"S": third["event"]["S"].replace("r2", "rX")}},
    )
    assert any("changed" in p for p in audit_trail.verify(dynamodb))
    dynamodb.delete_item(TableName=table, Key={"eventId": third["eventId"]})
    assert audit_trail.verify(dynamodb) != []


@pytest.fixture
def anchors(trail: Any, moto_url: str) -> Iterator[tuple[Any, str]]:
    """The anchors' Object Lock bucket in moto, as the stack declares it: (S3 client, name)."""
    name = f"anchors-{uuid.uuid4().hex[:8]}"
    _, env = trail
    with environment({**env, "S3_ENDPOINT_URL": moto_url, audit_anchor.BUCKET_ENV: name}):
        client = audit_anchor.s3()
        audit_anchor.ensure_bucket(client, name)
        yield client, name


def rewrite_consistently(dynamodb: Any, table: str, index: int, text: str) -> None:
    """What an account administrator could do: change one record and recompute every hash
    after it, and the head, so that the chain verifies again."""
    records = audit_trail.records(dynamodb, table)
    prev = records[index - 1]["prevHash"]["S"] if index > 1 else audit_trail.GENESIS_HASH
    for item in records[index - 1 :]:
        event = item["event"]["S"]
        if int(item["chainIndex"]["N"]) == index:
            event = event.replace("r2", text)
        digest = hashlib.sha256(event.encode()).hexdigest()
        hash_ = audit_trail.chain_hash(prev, item["eventId"]["S"], digest)
        dynamodb.put_item(
            TableName=table,
            Item={
                **item,
                "event": {"S": event},
                "digest": {"S": digest},
                "prevHash": {"S": prev},
                "hash": {"S": hash_},
            },
        )
        prev = hash_
    dynamodb.update_item(
        TableName=table,
        Key={"eventId": {"S": audit_trail.HEAD_ID}},
        UpdateExpression="SET #h = :h",
        ExpressionAttributeNames={"#h": "hash"},
        ExpressionAttributeValues={":h": {"S": prev}},
    )


def test_a_consistent_rewrite_of_the_chain_breaks_its_object_lock_anchor(
    trail: Any, jet: Jet, anchors: tuple[Any, str]
) -> None:
    dynamodb, env = trail
    s3, bucket = anchors
    jet.publish([audit_event(n) for n in range(5)])
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    assert audit_logger.anchor() is True
    assert audit_logger.anchor() is False  # this hour is anchored already
    (listed,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    stored = s3.head_object(Bucket=bucket, Key=listed["Key"])
    assert stored["ObjectLockMode"] == "COMPLIANCE"  # the bucket's default retention
    assert audit_anchor.verify_anchors(dynamodb, s3, bucket) == []

    rewrite_consistently(dynamodb, env["AUDIT_TABLE_NAME"], 3, "rX")
    assert audit_trail.verify(dynamodb) == []  # the chain alone cannot tell
    (problem,) = audit_anchor.verify_anchors(dynamodb, s3, bucket)
    assert "record 5" in problem and "rewritten" in problem
    # ... and the anchor cannot be removed to hide it.
    with pytest.raises(s3.exceptions.ClientError):
        s3.delete_object(Bucket=bucket, Key=listed["Key"], VersionId=stored["VersionId"])


def test_an_anchor_is_written_once_the_head_moved_in_a_later_hour(
    trail: Any, jet: Jet, anchors: tuple[Any, str]
) -> None:
    dynamodb, _ = trail
    s3, bucket = anchors
    hour = datetime(2026, 12, 6, 10, tzinfo=UTC)
    assert audit_anchor.anchor(dynamodb, s3, bucket, hour) is None  # an empty trail
    jet.publish([audit_event(n) for n in range(3)])
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    first = audit_anchor.anchor(dynamodb, s3, bucket, hour)
    assert first is not None and first.count == 3
    assert audit_anchor.anchor(dynamodb, s3, bucket, hour + timedelta(hours=1)) is None  # idle
    jet.publish([audit_event(n) for n in range(3, 5)])
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    second = audit_anchor.anchor(dynamodb, s3, bucket, hour + timedelta(hours=2))
    assert second is not None and second.count == 5
    assert second.key == "anchors/2026/12/06/12.json"
    assert audit_anchor.verify_anchors(dynamodb, s3, bucket) == []


def test_keyset_pages_by_actor_entity_and_time(trail: Any, jet: Jet) -> None:
    dynamodb, _ = trail
    events = [
        audit_event(n, actor="sub-a" if n % 2 else "sub-b", entity=f"projects/p{n % 3}")
        for n in range(24)
    ]
    jet.publish(events)
    jet.consume("AUDIT", "AUDIT_LOGGER", audit_logger.effect)
    ids = [e["id"] for _, e in events]

    def walk(where: audit_trail.AuditFilter, size: int) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            items, more = audit_trail.page(dynamodb, where, size, after)
            seen += [i["eventId"]["S"] for i in items]
            if not more:
                return seen
            after = items[-1]["at"]["S"]

    assert walk(audit_trail.AuditFilter(), 5) == ids[::-1]
    assert walk(audit_trail.AuditFilter(actor="sub-a"), 4) == [
        ids[n] for n in reversed(range(24)) if n % 2
    ]
    assert walk(audit_trail.AuditFilter(entity="projects/p1", actor="sub-b"), 2) == [
        ids[n] for n in reversed(range(24)) if n % 3 == 1 and n % 2 == 0
    ]
    start = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    end = datetime(2026, 12, 1, 0, 9, tzinfo=UTC)
    assert walk(audit_trail.AuditFilter(start=start, end=end), 2) == ids[9:4:-1]
    view = audit_trail.record_view(
        audit_trail.page(dynamodb, audit_trail.AuditFilter(), 1, None)[0][0]
    )
    assert view["event_id"] == ids[-1] and view["actor"]["sub"] == "sub-a"
    assert boto3  # the module is what the worker uses

"""MOBILE_PUSH and NOTIFIER against the real nats-server, PostgreSQL and moto's SNS: a change
to a followed project (or to a project in a followed country) becomes one notification per
follower on NOTIFICATIONS and one push per device; nothing doubled when either worker is
killed between its effect and its acknowledgement; an invalid token's device is pruned."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sns.models import sns_backends

from consumers import mobile_push, notifier
from covenant import db, notifications
from covenant.config import environment
from covenant.regions import primary_region
from devstack.consumers import platform_applications
from tests.functions.consumers.conftest import Jet, killed_worker

REGION = primary_region().aws_region


@pytest.fixture
def push(moto_url: str, jet: Jet, servers: Any) -> Iterator[dict[str, str]]:
    env = {"SNS_ENDPOINT_URL": moto_url}
    with environment(env):
        env.update(platform_applications(notifications.sns()))
    with environment(env):
        jet.reset("MOBILE_PUSH", "NOTIFIER")
        yield env


def sent_to(endpoint_arn: str) -> list[dict[str, Any]]:
    """What SNS pushed to the endpoint (moto keeps it), as the per-platform message."""
    endpoint = sns_backends[DEFAULT_ACCOUNT_ID][REGION].platform_endpoints.get(endpoint_arn)
    return [json.loads(m) for m in endpoint.messages.values()] if endpoint else []


def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def country() -> str:
    """A country code of this test's own (follows need no real country), so that other
    tests' followers are not told."""
    return "".join(chr(ord("A") + int(c, 16) % 26) for c in uuid.uuid4().hex[:3])


def follow(sub: str, projects: list[str] = [], countries: list[str] = []) -> None:  # noqa: B006
    with db.writer().session() as session, notifications.transaction(session):
        notifications.replace_follows(session, sub, notifications.Follows(projects, countries))


def device(sub: str, platform: str = "apns") -> tuple[str, str]:
    """A registered device of the user: (device id, endpoint ARN)."""
    token = uuid.uuid4().hex * 2
    arn = notifications.create_endpoint(notifications.sns(), platform, token, sub)
    with db.writer().session() as session, notifications.transaction(session):
        found = notifications.register_device(session, sub, platform, token, arn)
    return found.id, arn


def project_change(project: str, country: str, name: str = "Solar farm") -> tuple[str, dict]:
    return (
        "covenant.projects.updated",
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/covenant/ams/graphql",
            "type": "covenant.projects.updated",
            "subject": f"projects/{project}",
            "time": "2026-12-06T12:00:00Z",
            "data": {
                "project": {
                    "id": project,
                    "name": name,
                    "countryCode": country,
                    "status": "active",
                    "progress": 40,
                }
            },
        },
    )


def run_mobile_push(jet: Jet, idle_exit_s: float = 0.5) -> Any:
    async def go() -> Any:
        import nats

        from covenant.consumer import consume

        client = await nats.connect(jet.url)
        try:
            return await consume(
                client,
                "COVENANT",
                "MOBILE_PUSH",
                mobile_push.effect_for(client),
                should_stop=lambda: False,
                idle_exit_s=idle_exit_s,
                fetch_wait_s=0.25,
            )
        finally:
            await client.close()

    import asyncio

    return asyncio.run(go())


def test_a_followed_change_reaches_each_follower_s_devices_once(push: Any, jet: Jet) -> None:
    project, other = str(uuid.uuid4()), str(uuid.uuid4())
    by_project, by_country, bystander = user(), user(), user()
    home = country()
    follow(by_project, projects=[project])
    follow(by_country, countries=[home])
    follow(bystander, projects=[other], countries=["BRA"])
    _, phone = device(by_project, "apns")
    _, android = device(by_country, "fcm")
    _, tablet = device(by_country, "apns")
    _, unrelated = device(bystander)
    jet.publish([project_change(project, home, "Solar farm")])

    stats = run_mobile_push(jet)
    assert stats.processed == 1
    queued = jet.messages("NOTIFICATIONS")
    assert sorted(m["data"]["userSub"] for m in queued) == sorted([by_project, by_country])
    assert {m["type"] for m in queued} == {"notifications.push"}

    jet.consume("NOTIFICATIONS", "NOTIFIER", notifier.effect)
    assert jet.stored("NOTIFICATIONS") == 0  # the work queue is done with them
    (apns,) = sent_to(phone)
    assert json.loads(apns["APNS"])["aps"]["alert"]["title"] == "Solar farm updated"
    assert json.loads(apns["APNS"])["projectId"] == project
    (fcm,) = sent_to(android)
    assert json.loads(fcm["GCM"])["notification"]["title"] == "Solar farm updated"
    assert len(sent_to(tablet)) == 1
    assert sent_to(unrelated) == []


def test_mobile_push_killed_before_its_ack_queues_each_notification_once(
    push: dict[str, str], jet: Jet
) -> None:
    follower = user()
    projects = [str(uuid.uuid4()) for _ in range(10)]
    follow(follower, projects=projects)
    jet.publish([project_change(p, "GHA") for p in projects])

    status = killed_worker(
        "consumers.mobile_push",
        "effect_for",
        {**push, "NATS_URL": jet.url},
        "COVENANT",
        "MOBILE_PUSH",
        with_client=True,
    )
    assert status == -9
    assert len(jet.messages("NOTIFICATIONS")) == 7  # the first batch, published, never acked

    stats = run_mobile_push(jet, idle_exit_s=3)  # the batch is back after ack_wait
    assert stats.processed == 10
    queued = jet.messages("NOTIFICATIONS")
    assert sorted(m["data"]["projectId"] for m in queued) == sorted(projects)
    assert jet.pending("COVENANT", "MOBILE_PUSH") == 0


def test_notifier_killed_before_its_ack_pushes_nothing_twice(
    push: dict[str, str], jet: Jet
) -> None:
    follower = user()
    projects = [str(uuid.uuid4()) for _ in range(10)]
    follow(follower, projects=projects)
    _, phone = device(follower)
    jet.publish([project_change(p, "GHA") for p in projects])
    run_mobile_push(jet)

    status = killed_worker(
        "consumers.notifier", "effect", {**push, "NATS_URL": jet.url}, "NOTIFICATIONS", "NOTIFIER"
    )
    assert status == -9
    assert len(sent_to(phone)) == 7  # pushed, recorded, then killed before the ack

    stats = jet.consume("NOTIFICATIONS", "NOTIFIER", notifier.effect, idle_exit_s=3)
    assert stats.processed == 10  # the seven again (redelivered) and the other three
    pushed = [json.loads(m["APNS"])["projectId"] for m in sent_to(phone)]
    assert sorted(pushed) == sorted(projects)
    assert jet.stored("NOTIFICATIONS") == 0


def test_an_invalid_token_is_pruned_and_the_other_devices_still_get_the_push(
    push: dict[str, str], jet: Jet
) -> None:
    follower = user()
    project = str(uuid.uuid4())
    follow(follower, projects=[project])
    dead_id, dead = device(follower, "fcm")
    _, alive = device(follower, "apns")
    # What SNS does when FCM answers that the token is no longer registered.
    notifications.sns().set_endpoint_attributes(EndpointArn=dead, Attributes={"Enabled": "false"})
    jet.publish([project_change(project, "KEN")])
    run_mobile_push(jet)

    jet.consume("NOTIFICATIONS", "NOTIFIER", notifier.effect)
    assert len(sent_to(alive)) == 1
    with db.writer().session() as session:
        left = session.run("SELECT id::text FROM push_devices WHERE user_sub = :sub", sub=follower)
    assert len(left) == 1 and left[0][0] != dead_id
    assert dead not in sns_backends[DEFAULT_ACCOUNT_ID][REGION].platform_endpoints
    assert jet.stored("NOTIFICATIONS") == 0


def test_a_change_nobody_follows_queues_nothing(push: dict[str, str], jet: Jet) -> None:
    jet.publish([project_change(str(uuid.uuid4()), "ATA")])
    stats = run_mobile_push(jet)
    assert stats.processed == 1
    assert jet.stored("NOTIFICATIONS") == 0


def test_a_deleted_project_s_followers_are_told_then_no_longer_follow_it(
    push: dict[str, str], jet: Jet
) -> None:
    follower = user()
    project, kept = str(uuid.uuid4()), str(uuid.uuid4())
    follow(follower, projects=[project, kept])
    _, deleted = project_change(project, "KEN")
    deleted["type"] = "covenant.projects.deleted"
    jet.publish([("covenant.projects.deleted", deleted)])
    run_mobile_push(jet)
    # Only this follower's notification counts here (another test's user may follow Kenya).
    (told,) = [m for m in jet.messages("NOTIFICATIONS") if m["data"]["userSub"] == follower]
    assert told["data"]["changeType"] == "covenant.projects.deleted"
    with db.writer().session() as session:
        assert notifications.follows_of(session, follower).projects == [kept]


def test_sns_unreachable_keeps_the_notification_for_later(push: dict[str, str], jet: Jet) -> None:
    follower = user()
    project = str(uuid.uuid4())
    follow(follower, projects=[project])
    _, phone = device(follower)
    jet.publish([project_change(project, country())])
    run_mobile_push(jet)

    with environment({**push, "SNS_ENDPOINT_URL": "http://127.0.0.1:1"}):
        failed = jet.consume("NOTIFICATIONS", "NOTIFIER", notifier.effect)
    assert (failed.processed, failed.failed_batches) == (0, 1)
    assert jet.stored("NOTIFICATIONS") == 1  # negatively acknowledged: still queued
    assert sent_to(phone) == []

    later = jet.consume("NOTIFICATIONS", "NOTIFIER", notifier.effect, idle_exit_s=4)
    assert later.processed == 1
    assert len(sent_to(phone)) == 1
    assert jet.stored("NOTIFICATIONS") == 0

"""MOBILE_PUSH: each country and project change becomes one notification per follower on the
NOTIFICATIONS stream (covenant.notifications), published with Nats-Msg-Id = uuid5(change,
user) and acknowledged by JetStream before the change is acknowledged: a redelivered change
publishes the same ids, which the stream's duplicate window drops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext
from nats.aio.client import Client

from covenant import consumer, db, notifications
from covenant.config import settings
from covenant.events import CloudEvent, event_source
from covenant.logs import adopt_shared_logs

STREAM, DURABLE = "COVENANT", "MOBILE_PUSH"
PUBLISH_CONCURRENCY = 200  # JetStream acknowledgements awaited at once

logger = Logger(service="mobile_push")
metrics = Metrics(namespace="Covenant", service="mobile_push")


def notifications_for(deliveries: Sequence[consumer.Delivery]) -> list[CloudEvent]:
    """The batch's notifications: its changes' followers, read from the writer."""
    changes = [
        c for c in (notifications.change_of(d.event_id, d.envelope) for d in deliveries) if c
    ]
    if not changes:
        return []
    with db.writer().session() as session:
        audience = notifications.followers(session, changes)
    return notifications.notifications(
        changes, audience, event_source(settings().region, "mobile_push")
    )


async def publish(client: Client, events: Sequence[CloudEvent]) -> None:
    """Every notification stored by the NOTIFICATIONS stream (or dropped as a duplicate)."""
    js = client.jetstream()
    for start in range(0, len(events), PUBLISH_CONCURRENCY):
        chunk = events[start : start + PUBLISH_CONCURRENCY]
        sent: list[Awaitable[Any]] = [
            js.publish(e.type, e.to_json().encode(), headers={"Nats-Msg-Id": e.id}) for e in chunk
        ]
        await asyncio.gather(*sent)


def effect_for(client: Client) -> consumer.Effect:
    async def effect(deliveries: Sequence[consumer.Delivery]) -> None:
        made = notifications_for(deliveries)
        await publish(client, made)
        forget_deleted(deliveries)
        metrics.add_metric(name="NotificationsQueued", unit=MetricUnit.Count, value=len(made))

    return effect


def forget_deleted(deliveries: Sequence[consumer.Delivery]) -> None:
    """A deleted project's follows go once its followers have been told (after the publish:
    a redelivery finds no followers, and its notifications are in the stream already)."""
    deleted = [
        str(d.data["project"]["id"])
        for d in deliveries
        if d.envelope.get("type") == "covenant.projects.deleted"
        and isinstance(d.data.get("project"), dict)
        and d.data["project"].get("id")
    ]
    if deleted:
        with db.writer().session() as session:
            notifications.forget_projects(session, deleted)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    return consumer.run_with_client(STREAM, DURABLE, effect_for, context, metrics)

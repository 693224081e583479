"""ANALYTICS: the platform's figures as a time series (covenant.analytics), one database
transaction per batch, acknowledged only once it committed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant import analytics, consumer, db
from covenant.logs import adopt_shared_logs

STREAM, DURABLE = "COVENANT", "ANALYTICS"

logger = Logger(service="analytics")
metrics = Metrics(namespace="Covenant", service="analytics")


def record(deliveries: Sequence[consumer.Delivery]) -> int:
    """The effect: applies the batch's project events in one transaction; durable on return."""
    events = [
        e
        for e in (analytics.project_event(d.event_id, d.stream_seq, d.envelope) for d in deliveries)
        if e is not None
    ]
    if not events:
        return 0
    with db.writer().session() as session:
        session.run("BEGIN")
        try:
            applied = analytics.apply(session, events)
            session.run("COMMIT")
        except BaseException:
            session.run("ROLLBACK")
            raise
    return applied


def effect(deliveries: Sequence[consumer.Delivery]) -> None:
    record(deliveries)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    return consumer.run(STREAM, DURABLE, effect, context, metrics)

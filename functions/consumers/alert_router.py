"""ALERT_ROUTER: each operational alert of the ALERTS stream to the SNS topic of its severity,
deduplicated per key within ALERT_DEDUP_WINDOW_S (covenant.alerts); acknowledged once sent
and marked sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant import alerts, consumer
from covenant.config import env
from covenant.logs import adopt_shared_logs

STREAM, DURABLE = "ALERTS", "ALERT_ROUTER"

logger = Logger(service="alert_router")
metrics = Metrics(namespace="Covenant", service="alert_router")


def route(deliveries: Sequence[consumer.Delivery]) -> alerts.RouteResult:
    """The effect: durable (sent and marked) when it returns."""
    result = alerts.route(
        alerts.dynamodb(),
        alerts.sns(),
        [(d.event_id, d.envelope) for d in deliveries],
        topics=alerts.topic_arns(),
        window_s=int(env("ALERT_DEDUP_WINDOW_S") or alerts.DEFAULT_DEDUP_WINDOW_S),
    )
    if result.unroutable:
        logger.error("alerts without a severity, key or topic were dropped: %d", result.unroutable)
    return result


def effect(deliveries: Sequence[consumer.Delivery]) -> None:
    result = route(deliveries)
    metrics.add_metric(name="AlertsSent", unit=MetricUnit.Count, value=result.sent)
    metrics.add_metric(name="AlertsSuppressed", unit=MetricUnit.Count, value=result.suppressed)
    if result.unroutable:
        metrics.add_metric(name="AlertsUnroutable", unit=MetricUnit.Count, value=result.unroutable)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    return consumer.run(STREAM, DURABLE, effect, context, metrics)

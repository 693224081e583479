"""Bridge Lambda entry point. Two triggers, one job: publish the outbox into JetStream.

- SQS (wake-ups sent after commits): relay everything pending, then report each message whose
  events are still unpublished as a batch item failure, so SQS retries only those and, after
  its maxReceiveCount, moves them to the dead-letter queue.
- EventBridge schedule: sweep events older than a few seconds (a lost wake-up), prune
  published rows past their retention.
Both emit the outbox lag (age of the oldest unpublished event) on every run.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from bridge.service import run_bridge
from covenant.logs import adopt_shared_logs

logger = Logger(service="bridge")
tracer = Tracer(service="bridge")
metrics = Metrics(namespace="Covenant", service="bridge")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
# Powertools prints its ColdStart metric even with metrics disabled (make dev): ask only when on.
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    return run_bridge(event, context, metrics)

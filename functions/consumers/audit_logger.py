"""AUDIT_LOGGER: every audit event into the append-only, hash-chained audit trail
(covenant.audit_trail), acknowledged only once its transaction committed; after each run, the
hour's anchor of the chain head in S3 Object Lock (covenant.audit_anchor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant import audit_anchor, audit_trail, consumer
from covenant.logs import adopt_shared_logs

STREAM, DURABLE = "AUDIT", "AUDIT_LOGGER"

logger = Logger(service="audit_logger")
metrics = Metrics(namespace="Covenant", service="audit_logger")

_dynamodb: Any = None


def dynamodb() -> Any:
    global _dynamodb
    if _dynamodb is None:
        _dynamodb = audit_trail.client()
    return _dynamodb


def record(deliveries: Sequence[consumer.Delivery]) -> audit_trail.AppendResult:
    """The effect: appends the batch (those not yet recorded); durable when it returns."""
    events = [
        audit_trail.AuditEvent(d.event_id, d.raw, d.envelope, d.stream_seq) for d in deliveries
    ]
    try:
        result = audit_trail.append(dynamodb(), events)
    except audit_trail.ChainConflict:
        # Another writer moved the head between our read and our write: read again, once.
        result = audit_trail.append(dynamodb(), events)
    if result.conflicts:
        logger.error(
            "audit events whose id is already recorded with other content were not recorded",
            extra={"conflicts": result.conflicts},
        )
        metrics.add_metric(name="AuditConflicts", unit=MetricUnit.Count, value=result.conflicts)
    if result.duplicates:
        metrics.add_metric(name="AuditDuplicates", unit=MetricUnit.Count, value=result.duplicates)
    return result


def effect(deliveries: Sequence[consumer.Delivery]) -> None:
    record(deliveries)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    result = consumer.run(STREAM, DURABLE, effect, context, metrics)
    result["anchored"] = anchor()
    return result


def anchor() -> bool:
    """This hour's anchor of the chain head, if due; a failure is logged and counted (the
    trail itself is unaffected; the next run tries again)."""
    name = audit_anchor.bucket()
    if name is None:
        return False
    try:
        written = audit_anchor.anchor(dynamodb(), audit_anchor.s3(), name)
    except Exception:
        logger.exception("the audit chain's anchor was not written")
        metrics.add_metric(name="AuditAnchorFailed", unit=MetricUnit.Count, value=1)
        return False
    if written is not None:
        logger.info("anchored the audit chain", extra={"key": written.key, "count": written.count})
    return written is not None

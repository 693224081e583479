"""NOTIFIER: the NOTIFICATIONS work queue's consumer. Each notification is pushed through SNS
mobile push to every device of its user it has not reached yet (covenant.notifications); a
device whose endpoint SNS disabled (APNs or FCM said the token is invalid) is pruned. The
batch is acknowledged, and so removed from the work queue, once its pushes are recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant import consumer, db, notifications
from covenant.logs import adopt_shared_logs

STREAM, DURABLE = "NOTIFICATIONS", "NOTIFIER"
# What SNS answers for an endpoint whose token APNs or FCM refused, or that is gone.
GONE = ("EndpointDisabled", "EndpointDisabledException", "NotFound", "NotFoundException")

logger = Logger(service="notifier")
metrics = Metrics(namespace="Covenant", service="notifier")


def deliver(deliveries: Sequence[consumer.Delivery]) -> notifications.DeliveryResult:
    """The effect: pushes, then records what was pushed and prunes dead devices; a push that
    failed otherwise raises after recording the others (the batch comes back for the rest)."""
    batch = [
        n
        for n in (notifications.notification_of(d.event_id, d.envelope) for d in deliveries)
        if n is not None
    ]
    result = notifications.DeliveryResult(pruned=[])
    if len(batch) < len(deliveries):
        logger.warning(
            "acknowledged messages that are no push notification: %d", len(deliveries) - len(batch)
        )
    if not batch:
        return result
    with db.writer().session() as session:
        devices = notifications.devices_of(session, sorted({n.user_sub for n in batch}))
        pairs = [(n.id, device_id) for n in batch for device_id, _ in devices.get(n.user_sub, [])]
        done = notifications.delivered(session, pairs)
    result.without_device = sum(1 for n in batch if not devices.get(n.user_sub))
    result.already = len(done)
    client = notifications.sns()
    pushed: list[tuple[str, str]] = []
    gone: dict[str, str] = {}  # device id -> endpoint ARN
    failure: Exception | None = None
    for notification in batch:
        message = notifications.push_message(notification)
        for device_id, arn in devices.get(notification.user_sub, []):
            if (notification.id, device_id) in done or device_id in gone:
                continue
            try:
                client.publish(TargetArn=arn, Message=message, MessageStructure="json")
            except Exception as exc:  # SNS refused it, or could not be reached
                if _error_code(exc) in GONE:
                    gone[device_id] = arn
                    continue
                failure = exc
                break
            pushed.append((notification.id, device_id))
        if failure is not None:
            break
    with db.writer().session() as session, notifications.transaction(session):
        notifications.record_delivered(session, pushed)
        notifications.forget_devices(session, sorted(gone))
        notifications.prune_deliveries(session)
    for arn in gone.values():
        try:
            notifications.delete_endpoint(client, arn)
        except Exception:  # the device row is gone: nothing pushes to the endpoint again
            logger.warning("could not delete a disabled SNS endpoint", exc_info=True)
    result.pushed = len(pushed)
    result.pruned = sorted(gone)
    if failure is not None:
        raise failure
    return result


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def effect(deliveries: Sequence[consumer.Delivery]) -> None:
    result = deliver(deliveries)
    metrics.add_metric(name="PushesSent", unit=MetricUnit.Count, value=result.pushed)
    if result.pruned:
        metrics.add_metric(name="DevicesPruned", unit=MetricUnit.Count, value=len(result.pruned))


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    return consumer.run(STREAM, DURABLE, effect, context, metrics)

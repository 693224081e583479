"""`make dev`'s stand-in for the consumers' one-minute schedule (stacks/consumers.py): one
thread per consumer function invokes it in its Lambda environments (devstack.runtime) again
as soon as the previous run returns. Each run pulls from its durable consumer until its time
runs low, so the loop keeps one consumer pulling at all times, as the schedule does in AWS
(where a run starts every minute and lasts about as long). The AWS side is moto's, created
at start as CDK creates it in AWS: the audit trail's table and its anchors' Object Lock
bucket, the alert router's table and its
SNS topic per severity, and the SNS platform applications of APNs and FCM that push goes
through (in AWS an operator creates those two with the platform's credentials; docs/deploy.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from covenant import alerts, audit_anchor, audit_trail, notifications
from covenant.config import environment
from covenant.regions import Region
from covenant.topology import FunctionSpec
from devstack.event_sources import scheduled_event

logger = logging.getLogger("devstack.consumers")

# The consumer functions (cdk.json covenant:functions), as stacks/consumers.py deploys them.
CONSUMER_FUNCTIONS = ("audit_logger", "analytics", "mobile_push", "notifier", "alert_router")
ANCHOR_BUCKET = "covenant-audit-anchors-local"
# Platform applications need credentials; moto takes any.
_PLATFORM_CREDENTIALS = {
    "apns": ("APNS", {"PlatformCredential": "local-key", "PlatformPrincipal": "local-cert"}),
    "fcm": ("GCM", {"PlatformCredential": "local-fcm-key"}),
}

Invoker = Callable[[FunctionSpec, Region, dict[str, Any]], Any]


def provision(endpoints: Mapping[str, str], moto_url: str, region: Region) -> dict[str, str]:
    """The AWS resources the consumers use, in moto; the endpoint variables for every
    function (GraphQL reads the audit trail, mobile registers devices)."""
    variables = {
        "DYNAMODB_ENDPOINT_URL": moto_url,
        "SNS_ENDPOINT_URL": moto_url,
        "AUDIT_TABLE_NAME": audit_trail.DEFAULT_TABLE,
        "AUDIT_TABLE_REGION": region.aws_region,
        "ALERTS_TABLE_NAME": alerts.DEFAULT_TABLE,
        "S3_ENDPOINT_URL": moto_url,
        audit_anchor.BUCKET_ENV: ANCHOR_BUCKET,
    }
    with environment({**endpoints, **variables}):
        audit_trail.ensure_table(audit_trail.client())
        audit_anchor.ensure_bucket(audit_anchor.s3(), ANCHOR_BUCKET)
        alerts.ensure_table(alerts.dynamodb())
        variables.update(alert_topics(alerts.sns()))
        variables.update(platform_applications(notifications.sns()))
    return variables


def alert_topics(sns: Any) -> dict[str, str]:
    """One topic per severity (CreateTopic is idempotent); their ARNs as ALERT_TOPIC_*_ARN."""
    return {
        alerts.TOPIC_ENV[severity]: sns.create_topic(Name=f"covenant-alerts-{severity}")["TopicArn"]
        for severity in alerts.SEVERITIES
    }


def platform_applications(sns: Any) -> dict[str, str]:
    """The APNs and FCM platform applications; their ARNs as PUSH_*_APPLICATION_ARN."""
    found: dict[str, str] = {}
    for platform, (sns_platform, attributes) in _PLATFORM_CREDENTIALS.items():
        arn = sns.create_platform_application(
            Name=f"covenant-{platform}", Platform=sns_platform, Attributes=attributes
        )["PlatformApplicationArn"]
        found[notifications.APPLICATION_ENV[platform]] = arn
    return found


class ConsumerLoops:
    """`event`: what each run is invoked with (an EventBridge rule's constant input, as the
    fan-out's rule per served region has), else a scheduled event. The n-th function's
    loop (from 0) runs first after `first_run_after_s` + n * `stagger_s` (make dev staggers its
    pollers' cold starts)."""

    def __init__(
        self,
        functions: list[FunctionSpec],
        region: Region,
        invoker: Invoker,
        event: dict[str, Any] | None = None,
        first_run_after_s: float = 0.0,
        stagger_s: float = 0.0,
    ) -> None:
        self.functions = functions
        self.region = region
        self.invoker = invoker
        self.event = event
        self.first_run_after_s = first_run_after_s
        self.stagger_s = stagger_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index, function in enumerate(self.functions):
            thread = threading.Thread(
                target=self._loop,
                args=(function, self.first_run_after_s + index * self.stagger_s),
                name=f"consumer-{function.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        # A run in flight ends when the runtime stops its environment; nothing waits for it.
        self._stop.set()

    def _loop(self, function: FunctionSpec, first_run_after_s: float) -> None:
        if self._stop.wait(first_run_after_s):
            return
        while not self._stop.is_set():
            try:
                event = self.event or scheduled_event(self.region.aws_region)
                self.invoker(function, self.region, event)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("consumer %s run failed; running it again in 2 s", function.name)
                self._stop.wait(2)

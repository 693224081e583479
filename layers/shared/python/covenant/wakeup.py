"""The bridge's wake-up: after a mutation commits, a small SQS message says "events are
waiting". Best effort by design: the outbox is the truth and the scheduled sweep catches
anything a lost wake-up leaves behind, so a failed send never fails the mutation."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from covenant import aws
from covenant.config import env
from covenant.regions import primary_region

logger = logging.getLogger(__name__)


def queue_region(queue_url: str) -> str:
    """sqs.<region>.amazonaws.com/... ; a local endpoint holds it in the primary's region,
    where the bridge runs."""
    host = queue_url.split("/")[2]
    parts = host.split(".")
    if len(parts) > 2 and parts[0] == "sqs":
        return parts[1]
    return primary_region().aws_region


def send_wakeup(event_ids: Sequence[str], region: str) -> bool:
    queue_url = env("OUTBOX_WAKEUP_QUEUE_URL")
    if not queue_url or not event_ids:
        return False
    try:
        aws.client("sqs", queue_region(queue_url), env("SQS_ENDPOINT_URL")).send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps(
                {"reason": "committed", "region": region, "eventIds": list(event_ids)}
            ),
        )
    except Exception:
        logger.warning("outbox wake-up not sent; the sweep will publish the events", exc_info=True)
        return False
    return True

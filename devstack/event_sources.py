"""Local stand-ins for the bridge's two triggers, as Lambda runs them in AWS:

- an SQS event source mapping: long-polls the wake-up queue (moto), invokes the bridge with
  the batch in the SQS event format, deletes the messages it did not report as failed; failed
  ones come back after the visibility timeout and, past maxReceiveCount, moto's redrive moves
  them to the dead-letter queue;
- an EventBridge schedule: invokes the bridge with a "Scheduled Event" every few seconds.

`make dev` gives them an invoker that runs the bridge in its Lambda execution environments
(devstack.runtime, reserved concurrency 3): the two triggers then run concurrently, as in
AWS, and a throttled invocation is retried by the queue. Tests may keep the in-process one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3

from covenant.regions import Region
from covenant.topology import FunctionSpec
from devstack.functions import invoke

logger = logging.getLogger("devstack.events")

WAKEUP_QUEUE = "covenant-outbox-wakeup"
DEAD_LETTER_QUEUE = "covenant-outbox-wakeup-dlq"
MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_S = 2  # short locally, so a failed wake-up is retried quickly


@dataclass(frozen=True)
class Queues:
    url: str
    arn: str
    dead_letter_url: str
    dead_letter_arn: str


def sqs_client(endpoint_url: str, region: str) -> Any:
    return moto_client("sqs", endpoint_url, region)


def moto_client(service: str, endpoint_url: str, region: str) -> Any:
    """A boto3 client of `service` served by moto at `endpoint_url`."""
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto: placeholders, never real keys
    )


def create_queues(client: Any) -> Queues:
    """The wake-up queue with its dead-letter queue and redrive policy (idempotent)."""
    dead_url = client.create_queue(QueueName=DEAD_LETTER_QUEUE)["QueueUrl"]
    dead_arn = client.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    url = client.create_queue(
        QueueName=WAKEUP_QUEUE,
        Attributes={
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
            ),
        },
    )["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return Queues(url, arn, dead_url, dead_arn)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """Received messages in the event format Lambda's SQS event source sends."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def scheduled_event(region: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": ["arn:aws:events:local:000000000000:rule/covenant-outbox-sweep"],
        "detail": {},
    }


Invoker = Callable[[FunctionSpec, Region, dict[str, Any]], Any]


class SqsEventSource:
    def __init__(
        self,
        client: Any,
        queues: Queues,
        function: FunctionSpec,
        region: Region,
        endpoints: Mapping[str, str],
        batch_size: int = 10,
        invoker: Invoker | None = None,
    ) -> None:
        self.client = client
        self.queues = queues
        self.function = function
        self.region = region
        self.endpoints = endpoints
        self.batch_size = batch_size
        self.invoker: Invoker = invoker or (
            lambda function, region, event: invoke(function, region, event, self.endpoints)
        )
        # In-process, one invocation at a time, as in one Lambda execution environment; the
        # runtime's environments need no lock.
        self.lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if invoker is None else contextlib.nullcontext()
        )

    def poll_once(self, wait_s: int = 1) -> int:
        """One receive-invoke-delete round; returns how many messages it handled."""
        messages = self.client.receive_message(
            QueueUrl=self.queues.url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        event = sqs_event(messages, self.queues.arn, self.region.aws_region)
        try:
            with self.lock:
                response = self.invoker(self.function, self.region, event) or {}
        except Exception:
            logger.exception("bridge failed on an SQS batch; its messages will be redelivered")
            return len(messages)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.client.delete_message_batch(
                QueueUrl=self.queues.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        return len(messages)


class BackgroundTriggers:
    """Runs the SQS event source and the schedule on threads until stopped."""

    def __init__(self, source: SqsEventSource, schedule_every_s: float) -> None:
        self.source = source
        self.schedule_every_s = schedule_every_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._poll, "sqs-event-source"), (self._tick, "schedule")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.source.poll_once()
            except Exception:
                logger.exception("SQS event source poll failed")
                self._stop.wait(1)

    def _tick(self) -> None:
        while not self._stop.wait(self.schedule_every_s):
            source = self.source
            try:
                with source.lock:
                    source.invoker(
                        source.function, source.region, scheduled_event(source.region.aws_region)
                    )
            except Exception:
                logger.exception("scheduled bridge run failed")

"""The durable JetStream consumers as workers: one invocation pull-fetches batches from its
durable consumer, applies each batch's effect, and acknowledges the batch only once the
effect is durable. Every effect is idempotent on the event id (the bridge publishes with
`Nats-Msg-Id` = event id; delivery is at least once), so a worker killed between its effect
and its acknowledgement (kill -9, a Lambda timeout) finds the batch redelivered after the
consumer's `ack_wait` and records nothing twice.

An invocation runs until its Lambda time runs low (`CONSUMER_TIME_RESERVE_MS` before the
timeout) or, when `CONSUMER_IDLE_EXIT_S` is set, until nothing arrived for that long. It ends
by reporting its consumer's lag (messages not yet acknowledged) as the `ConsumerLag` metric.
docs/deploy.md ("Stream consumers") says why these are Lambda functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import FetchTimeoutError

from covenant.config import env
from covenant.streams import DEFAULT_URL, server_urls

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
DEFAULT_FETCH_WAIT_S = 1.0
DEFAULT_TIME_RESERVE_MS = 5000
# The consumers' reply inboxes: their NATS user may subscribe under this prefix only.
CONSUMER_INBOX_PREFIX = "_INBOX_CONSUMERS"
NAK_DELAY_S = 2.0  # a batch whose effect failed comes back this much later


class RemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class Delivery:
    """One event as the consumer received it."""

    event_id: str
    subject: str
    stream_seq: int
    envelope: dict[str, Any]  # the CloudEvent
    raw: bytes  # the message body exactly as stored in the stream
    stored_at: datetime  # when JetStream stored it

    @property
    def data(self) -> dict[str, Any]:
        value = self.envelope.get("data")
        return value if isinstance(value, dict) else {}


Effect = Callable[[Sequence[Delivery]], None]


@dataclass
class RunStats:
    fetched: int = 0
    processed: int = 0
    rejected: int = 0
    failed_batches: int = 0
    lag: int | None = None  # pending + unacknowledged at the end of the run
    latencies_ms: list[float] = field(default_factory=list)  # stored in stream -> effect done


def parse(msg: Msg) -> Delivery | None:
    """A message as a Delivery, or None when it is no CloudEvent (a bug upstream: rejected)."""
    try:
        envelope = json.loads(msg.data)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("id"), str):
        return None
    meta = msg.metadata
    header_id = (msg.headers or {}).get("Nats-Msg-Id")
    return Delivery(
        event_id=header_id or envelope["id"],
        subject=msg.subject,
        stream_seq=meta.sequence.stream,
        envelope=envelope,
        raw=msg.data,
        stored_at=meta.timestamp,
    )


def connection_options() -> dict[str, Any]:
    """nats.connect() options: NATS_URL, and in AWS the consumer's secret (NATS_SECRET_ARN, a
    JSON object with url, user, password, token, tls_ca, tls_hostname), the bridge's format.
    Nothing of it is ever logged."""
    # One server, or a cluster's servers separated by commas (as the bridge takes them).
    options: dict[str, Any] = {"servers": server_urls(env("NATS_URL") or DEFAULT_URL)}
    secret_name = env("NATS_SECRET_ARN")
    if secret_name:
        from aws_lambda_powertools.utilities import parameters

        secret: dict[str, Any] = parameters.get_secret(secret_name, transform="json", max_age=300)
        if secret.get("url"):
            options["servers"] = server_urls(secret["url"])
        for name in ("user", "password", "token"):
            if secret.get(name):
                options[name] = secret[name]
        if secret.get("tls_ca"):
            options["tls"] = ssl.create_default_context(cadata=secret["tls_ca"])
            if secret.get("tls_hostname"):
                options["tls_hostname"] = str(secret["tls_hostname"])
    return options


async def connect() -> Client:
    """A client of the consumers' NATS user (connection_options)."""

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS connection error: %s", type(exc).__name__)

    return await nats.connect(
        **connection_options(),
        name=env("AWS_LAMBDA_FUNCTION_NAME") or "covenant-consumer",
        connect_timeout=float(env("NATS_CONNECT_TIMEOUT_S") or 3),
        allow_reconnect=True,
        max_reconnect_attempts=3,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        inbox_prefix=CONSUMER_INBOX_PREFIX,
    )


async def consume(
    client: Client,
    stream: str,
    durable: str,
    effect: Effect,
    *,
    should_stop: Callable[[], bool],
    idle_exit_s: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fetch_wait_s: float = DEFAULT_FETCH_WAIT_S,
) -> RunStats:
    """Fetches and applies batches until `should_stop()` (or `idle_exit_s` without a
    message). A batch is acknowledged only after `effect` returned; when it raises, the batch
    is negatively acknowledged (redelivered after NAK_DELAY_S) and the run ends."""
    js = client.jetstream()
    subscription = await js.pull_subscribe_bind(durable=durable, stream=stream)
    stats = RunStats()
    idle_since = time.monotonic()
    try:
        while not should_stop():
            try:
                messages = await subscription.fetch(batch_size, timeout=fetch_wait_s)
            except (FetchTimeoutError, nats.errors.TimeoutError, TimeoutError):
                if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            stats.fetched += len(messages)
            good: list[tuple[Msg, Delivery]] = []
            for msg in messages:
                delivery = parse(msg)
                if delivery is None:
                    logger.error(
                        "rejected a message that is no CloudEvent",
                        extra={"subject": msg.subject, "stream_seq": msg.metadata.sequence.stream},
                    )
                    await msg.term()
                    stats.rejected += 1
                else:
                    good.append((msg, delivery))
            if not good:
                continue
            try:
                effect([delivery for _, delivery in good])
            except Exception:
                logger.exception("effect failed; the batch will be redelivered")
                stats.failed_batches += 1
                for msg, _ in good:
                    await msg.nak(delay=NAK_DELAY_S)
                break
            done = time.time()
            for msg, delivery in good:
                await msg.ack()
                stats.latencies_ms.append((done - delivery.stored_at.timestamp()) * 1000)
            stats.processed += len(good)
        await client.flush(timeout=5)
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
    with contextlib.suppress(Exception):
        info = await js.consumer_info(stream, durable)
        stats.lag = info.num_pending + info.num_ack_pending
    return stats


def run(
    stream: str,
    durable: str,
    effect: Effect,
    context: RemainingTime,
    metrics: Any = None,
) -> dict[str, Any]:
    """One Lambda invocation of a consumer: connect, consume until the time runs low, report."""
    reserve_ms = int(env("CONSUMER_TIME_RESERVE_MS") or DEFAULT_TIME_RESERVE_MS)
    idle_raw = env("CONSUMER_IDLE_EXIT_S")
    batch_size = int(env("CONSUMER_BATCH_SIZE") or DEFAULT_BATCH_SIZE)

    def should_stop() -> bool:
        return context.get_remaining_time_in_millis() < reserve_ms

    async def go() -> RunStats:
        client = await connect()
        try:
            return await consume(
                client,
                stream,
                durable,
                effect,
                should_stop=should_stop,
                idle_exit_s=float(idle_raw) if idle_raw else None,
                batch_size=batch_size,
            )
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    stats = asyncio.run(go())
    if metrics is not None:
        from aws_lambda_powertools.metrics import MetricUnit

        metrics.add_metric(name="EventsProcessed", unit=MetricUnit.Count, value=stats.processed)
        metrics.add_metric(name="EventsRejected", unit=MetricUnit.Count, value=stats.rejected)
        metrics.add_metric(name="FailedBatches", unit=MetricUnit.Count, value=stats.failed_batches)
        if stats.lag is not None:
            metrics.add_metric(name="ConsumerLag", unit=MetricUnit.Count, value=stats.lag)
    return {
        "processed": stats.processed,
        "rejected": stats.rejected,
        "failedBatches": stats.failed_batches,
        "lag": stats.lag,
    }

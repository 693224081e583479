"""What one bridge invocation does, for either trigger. Nothing here knows Lambda's wiring."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from bridge import connection
from bridge.relay import (
    RelayResult,
    RelaySettings,
    outbox_lag_seconds,
    prune_published,
    relay_pass,
    unpublished,
)
from bridge.replica_lag import MonitoringNotAllowed, replica_lags
from covenant import alerts, config, db
from covenant.config import env
from covenant.events import event_source

logger = logging.getLogger(__name__)
# A batch whose every record failed (NATS down) is answered with every record as a batch item
# failure, like any other: raising would fail the invocation and hide which records failed.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@dataclass(frozen=True)
class BridgeSettings:
    relay: RelaySettings
    sweep_min_age_s: float
    retention_s: int
    time_reserve_ms: int
    alert_lag_s: float  # outbox lag above which the bridge raises an alert
    alert_sign_in_failures: int  # failed sign-ins in 5 minutes above which it raises one
    alert_replica_lag_warning_s: float  # replica lag above which the schedule warns
    alert_replica_lag_critical_s: float  # and above which the alert is critical

    @classmethod
    def load(cls) -> BridgeSettings:
        def number(name: str, default: float) -> float:
            raw = env(name)
            return default if raw in (None, "") else float(raw)

        return cls(
            relay=RelaySettings(
                batch_size=int(number("BRIDGE_BATCH_SIZE", 2000)),
                batches_per_pass=int(number("BRIDGE_BATCHES_PER_PASS", 10)),
                ack_timeout_s=number("BRIDGE_ACK_TIMEOUT_S", 10),
                max_attempts=int(number("BRIDGE_MAX_ATTEMPTS", 5)),
            ),
            sweep_min_age_s=number("BRIDGE_SWEEP_MIN_AGE_S", 5),
            retention_s=int(number("OUTBOX_RETENTION_S", 7 * 24 * 3600)),
            time_reserve_ms=int(number("BRIDGE_TIME_RESERVE_MS", 3000)),
            alert_lag_s=number("BRIDGE_ALERT_LAG_S", 120),
            alert_sign_in_failures=int(number("BRIDGE_ALERT_SIGN_IN_FAILURES", 200)),
            alert_replica_lag_warning_s=number("BRIDGE_ALERT_REPLICA_LAG_WARNING_S", 5),
            alert_replica_lag_critical_s=number("BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S", 30),
        )


NATS_UNAVAILABLE = "*"  # RelayResult.failed key: no connection, no event was read
BUSY = "another bridge held the relay lock"  # why a wake-up of a busy run is retried


class EventsNotPublished(Exception):
    """A wake-up whose events are not (yet) in the stream: SQS redelivers it."""


def run_bridge(event: dict[str, Any], context: LambdaContext, metrics: Metrics) -> dict[str, Any]:
    settings = BridgeSettings.load()
    is_batch = "Records" in event
    result = connection.event_loop().run_until_complete(
        _drain(context, settings, 0.0 if is_batch else settings.sweep_min_age_s)
    )
    _report(result, metrics)
    database = db.writer()
    lag_s = outbox_lag_seconds(database)
    metrics.add_metric("OutboxLagSeconds", MetricUnit.Seconds, lag_s)
    raised = raised_alerts(result, lag_s, settings.alert_lag_s)
    if not is_batch:  # the scheduled run watches sign-in failures and replica lag
        with database.session() as session:
            failures = alerts.recent_sign_in_failures(session)
        if failures > settings.alert_sign_in_failures:
            raised.append(alerts.sign_in_failures(failures, settings.alert_sign_in_failures))
        raised.extend(replica_lag_alerts(database, settings, metrics))
    if raised:
        connection.event_loop().run_until_complete(publish_alerts(raised, settings))
    if not is_batch:
        pruned = prune_published(database, settings.retention_s)
        metrics.add_metric("OutboxPruned", MetricUnit.Count, pruned)
        response: dict[str, Any] = {
            "published": len(result.published),
            "failed": len(result.failed),
            "pruned": pruned,
        }
        if result.busy:
            response["busy"] = True
        return response
    return _settle_batch(event, context, result)


async def _drain(context: LambdaContext, settings: BridgeSettings, min_age_s: float) -> RelayResult:
    total = RelayResult()
    try:
        publisher = await connection.publisher()
    except Exception as exc:
        logger.error("NATS unavailable, events stay in the outbox: %s", _describe(exc))
        total.failed[NATS_UNAVAILABLE] = f"NATS unavailable: {_describe(exc)}"
        return total
    while True:
        # No new batch once it could still be waiting for its acknowledgements (they may all
        # time out) when the invocation reaches its reserve (for the lag, prune, settle); and
        # with another bridge draining, no longer a wait for the relay lock either.
        remaining_s = (context.get_remaining_time_in_millis() - settings.time_reserve_ms) / 1000
        deadline = time.monotonic() + remaining_s - settings.relay.ack_timeout_s
        result = await relay_pass(
            db.writer(), publisher, settings.relay, min_age_s, deadline, deadline
        )
        total.published.extend(result.published)
        total.failed.update(result.failed)
        for event_id in result.published:  # failed in an earlier pass, published in this one
            total.failed.pop(event_id, None)
        total.rejected.update(result.rejected)
        total.dead.extend(result.dead)
        total.stream_missing.update(result.stream_missing)
        total.stream_leaderless.update(result.stream_leaderless)
        total.lock_wait_s += result.lock_wait_s
        if result.busy:  # another bridge holds the relay lock; it is draining, not us
            total.busy = True
            return total
        progressed = bool(result.published or result.rejected)
        # A pass always publishes its first batch: none may start past the deadline either.
        out_of_time = time.monotonic() >= deadline
        if not (result.more and progressed) or out_of_time:
            total.more = result.more
            return total


def raised_alerts(result: RelayResult, lag_s: float, threshold_s: float) -> list[alerts.Alert]:
    """The operational alerts of this run: events set aside, the outbox lagging."""
    raised = []
    if result.dead:
        raised.append(alerts.events_set_aside(result.dead))
    if lag_s > threshold_s:
        raised.append(alerts.outbox_lag(lag_s, threshold_s))
    return raised


def replica_lag_alerts(
    database: db.Database, settings: BridgeSettings, metrics: Metrics
) -> list[alerts.Alert]:
    """The replica-lag alert of this scheduled run, if a replica is past the warning."""
    try:
        with database.session() as session:
            lags = replica_lags(session)
    except MonitoringNotAllowed as exc:
        metrics.add_metric("ReplicaLagUnreadable", MetricUnit.Count, 1)
        logger.error("replica lag not read: %s", exc)
        return []
    if lags:
        metrics.add_metric("ReplicaLagSeconds", MetricUnit.Seconds, max(r.lag_s for r in lags))
    alert = alerts.replica_lag(
        {r.name: r.lag_s for r in lags},
        settings.alert_replica_lag_warning_s,
        settings.alert_replica_lag_critical_s,
    )
    return [alert] if alert else []


async def publish_alerts(raised: list[alerts.Alert], settings: BridgeSettings) -> None:
    """Publishes the alerts to ALERTS, each with its window's id as Nats-Msg-Id (a repeat in
    the window is dropped by the stream). Best effort: with NATS unreachable they stay unsent,
    and the CloudWatch alarms on the same metrics still fire."""
    loop = asyncio.get_running_loop()
    try:
        publisher = await connection.publisher()
        for alert in raised:
            event = alert.event(event_source(config.settings().region, "bridge"))
            settled: asyncio.Future[BaseException | None] = loop.create_future()

            def on_settled(
                error: BaseException | None, done: asyncio.Future[BaseException | None] = settled
            ) -> None:
                if not done.done():
                    done.set_result(error)

            await publisher.publish(event.type, event.to_json().encode(), event.id, on_settled)
            error = await asyncio.wait_for(settled, settings.relay.ack_timeout_s)
            if error is not None:
                raise error
    except Exception as exc:
        logger.error("alerts not published (%s): %s", _describe(exc), [a.kind for a in raised])


def _describe(exc: BaseException) -> str:
    return str(exc).removeprefix("nats: ") or type(exc).__name__


def _report(result: RelayResult, metrics: Metrics) -> None:
    metrics.add_metric("EventsPublished", MetricUnit.Count, len(result.published))
    metrics.add_metric("EventsFailed", MetricUnit.Count, len(result.failed))
    if NATS_UNAVAILABLE in result.failed:
        metrics.add_metric("NatsUnavailable", MetricUnit.Count, 1)
    if result.busy:
        metrics.add_metric("RelayBusy", MetricUnit.Count, 1)
        logger.warning(
            "another bridge held the relay lock for all of this invocation's wait (%.1f s): "
            "it is draining the outbox; what is left waits for a later run",
            result.lock_wait_s,
        )
    if result.stream_missing:
        metrics.add_metric("StreamMissing", MetricUnit.Count, len(result.stream_missing))
        logger.error(
            "no JetStream stream captures %s: events stay in the outbox; apply the topology "
            "(python -m covenant.streams apply)",
            ", ".join(sorted(result.stream_missing)),
        )
    if result.stream_leaderless:
        metrics.add_metric("StreamLeaderless", MetricUnit.Count, len(result.stream_leaderless))
        logger.error(
            "JetStream stream %s has no leader (an election, or a quorum of its servers lost): "
            "events stay in the outbox and flow once it elects one; see JetStreamHealthy",
            ", ".join(sorted(result.stream_leaderless)),
        )
    if result.dead:
        metrics.add_metric("EventsDeadLettered", MetricUnit.Count, len(result.dead))
        logger.error("events set aside after repeated rejection: %s", result.dead)
    for event_id, reason in result.failed.items():
        if event_id in result.rejected:
            logger.warning("event %s rejected: %s", event_id, reason)


def _settle_batch(
    event: dict[str, Any], context: LambdaContext, result: RelayResult
) -> dict[str, Any]:
    named = [event_id for record in event["Records"] for event_id in _event_ids(record["body"])]
    waiting = unpublished(db.writer(), named)

    def check(record: SQSRecord) -> None:
        # The outbox decides: a wake-up whose events are all published (by this run or an
        # earlier one) is done, whatever happened to NATS in this run.
        missing = [i for i in _event_ids(record.body) if i in waiting]
        if missing:
            fallback = result.failed.get(
                NATS_UNAVAILABLE,
                BUSY if result.busy else "waiting behind an earlier event",
            )
            reasons = {result.failed.get(i, fallback) for i in missing}
            raise EventsNotPublished(f"{len(missing)} event(s) not published: {sorted(reasons)}")

    response = process_partial_response(
        event=event, record_handler=check, processor=processor, context=context
    )
    return dict(response)


def _event_ids(body: str) -> list[str]:
    try:
        message = json.loads(body)
    except ValueError:
        return []
    ids = message.get("eventIds") if isinstance(message, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []

"""The stream consumers' benchmark: `.venv/bin/python -m bench.consumers` from the repository
root.

It starts the local stack as `make dev` does (bench.bridge's stack, in a temporary folder on
free ports) with the consumers held back, then per consumer:

1. Throughput. `--events` outbox events (half covenant, half audit, payloads as the GraphQL
   function writes them) forwarded by the bridge's handler (the rate the bridge publishes,
   measured on the same events), then the consumer's backlog worked by the consumer's own loop
   and effect (covenant.consumer.consume, in this process, against moto): events per second
   from its first fetch to its last acknowledgement.
   A bench user follows Kenya (every bench project's country) with one device, so each
   covenant event is one notification: MOBILE_PUSH's backlog is the covenant half, NOTIFIER's
   the notifications MOBILE_PUSH published. ALERT_ROUTER's backlog is `--alerts` alerts of
   distinct keys published to ALERTS as the bridge raises them (alerts are rare: no bridge
   publishes them in bulk).
2. Latency. The consumers started as `make dev` runs them (their Lambda environments, one run
   after another), then `--rate` `updateProject` mutations per second through the gateway for
   `--duration` seconds: per event, from its creation in the mutation's transaction (the
   outbox row's `created_at`, or the CloudEvent's `time`, just before the commit) to its
   effect (the analytics transaction, the audit record's `recordedAt`, the push's `sent_at`
   in push_deliveries: MOBILE_PUSH and NOTIFIER together), p50 and p99. That spans the
   after-commit wake-up, the bridge, JetStream and the consumer(s). Alerts: one a second
   raised during the load, from the alert's `time` to the router's `sentAt`.

It measures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
from nats.aio.client import Client

from bench import bridge as bench_bridge
from consumers import alert_router, audit_logger, mobile_push, notifier
from consumers import analytics as analytics_worker
from covenant import alerts, audit_trail, db, notifications
from covenant.consumer import Effect, consume
from covenant.events import event_source
from devstack.stack import DevStack

_OUT = sys.stdout


def say(message: str = "") -> None:
    print(message, file=_OUT, flush=True)


@dataclass(frozen=True)
class Consumer:
    name: str
    stream: str
    durable: str
    effect_for: Callable[[Client], Effect]
    count: Callable[[], int]  # effects recorded so far
    latencies_ms: Callable[[datetime], list[float]]  # commit -> effect of events after a time
    per_mutation: float  # effects each updateProject mutation causes (latency phase)


def _audit_count() -> int:
    return len(audit_trail.records(audit_trail.client()))


def _audit_latencies(since: datetime) -> list[float]:
    out = []
    for item in audit_trail.records(audit_trail.client()):
        created = datetime.fromisoformat(item["at"]["S"].split("#", 1)[0].replace("Z", "+00:00"))
        recorded = datetime.fromisoformat(item["recordedAt"]["S"].replace("Z", "+00:00"))
        if created >= since:
            out.append((recorded - created).total_seconds() * 1000)
    return out


def _analytics_count() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT count(*) FROM analytics_applied"))


def _analytics_latencies(since: datetime) -> list[float]:
    """From the outbox row's insert (in the mutation's transaction) to the analytics
    transaction that applied it (its now())."""
    with db.writer().session() as session:
        rows = session.run(
            "SELECT extract(epoch FROM a.applied_at - o.created_at) * 1000 "
            "FROM analytics_applied a JOIN outbox o ON o.id = a.event_id "
            "WHERE o.created_at >= CAST(:since AS timestamptz)",
            since=since.isoformat(),
        )
    return [float(row[0]) for row in rows]


FOLLOWER = "bench-follower"


def follow_kenya(stack: HeldStack) -> None:
    """The bench's follower: Kenya (every bench project's country), one APNs device."""
    from covenant.config import environment

    with environment(stack.endpoints):
        client = notifications.sns()
        token = "b" * 64
        arn = notifications.create_endpoint(client, "apns", token, FOLLOWER)
    with db.writer().session() as session, notifications.transaction(session):
        notifications.replace_follows(session, FOLLOWER, notifications.Follows([], ["KEN"]))
        notifications.register_device(session, FOLLOWER, "apns", token, arn)


def _push_count() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT count(*) FROM push_deliveries"))


def _push_latencies(since: datetime) -> list[float]:
    """From the change's outbox row (the mutation's transaction) to the push's record."""
    with db.writer().session() as session:
        changes = session.run(
            "SELECT id::text, created_at FROM outbox WHERE subject = 'covenant.projects.updated' "
            "AND created_at >= CAST(:since AS timestamptz)",
            since=since.isoformat(),
        )
        by_notification = {
            notifications.notification_id(event_id, FOLLOWER): created
            for event_id, created in changes
        }
        rows = session.run(
            "SELECT notification_id::text, sent_at FROM push_deliveries "
            "WHERE notification_id = ANY(CAST(:ids AS uuid[]))",
            ids=list(by_notification),
        )
    return [(sent - by_notification[n]).total_seconds() * 1000 for n, sent in rows]


def _alert_items() -> list[dict]:
    client = alerts.dynamodb()
    items: list[dict] = []
    for page in client.get_paginator("scan").paginate(TableName=alerts.table_name()):
        items += page["Items"]
    return [i for i in items if i.get("sent", {}).get("BOOL")]


def _alert_count() -> int:
    return len(_alert_items())


def _alert_latencies(since: datetime) -> list[float]:
    out = []
    for item in _alert_items():
        raised = datetime.fromisoformat(item["raisedAt"]["S"].replace("Z", "+00:00"))
        if raised >= since:
            sent = datetime.fromisoformat(item["sentAt"]["S"])
            out.append((sent - raised).total_seconds() * 1000)
    return out


def _sync(effect: Callable[[Sequence[Any]], None]) -> Callable[[Client], Effect]:
    return lambda _client: effect


CONSUMERS = (
    Consumer(
        "analytics",
        "COVENANT",
        "ANALYTICS",
        _sync(analytics_worker.effect),
        _analytics_count,
        _analytics_latencies,
        1,
    ),
    Consumer(
        "audit_logger",
        "AUDIT",
        "AUDIT_LOGGER",
        _sync(audit_logger.effect),
        _audit_count,
        _audit_latencies,
        1,
    ),
    # Its effect is the notification; its latency is measured with NOTIFIER's (to the push).
    Consumer(
        "mobile_push",
        "COVENANT",
        "MOBILE_PUSH",
        mobile_push.effect_for,
        _push_count,
        _push_latencies,
        1,
    ),
    Consumer(
        "notifier",
        "NOTIFICATIONS",
        "NOTIFIER",
        _sync(notifier.effect),
        _push_count,
        _push_latencies,
        1,
    ),
    Consumer(
        "alert_router",
        "ALERTS",
        "ALERT_ROUTER",
        _sync(alert_router.effect),
        _alert_count,
        _alert_latencies,
        0,
    ),
)


def raise_alerts(url: str, count: int, spread_s: float = 0.0) -> None:
    """`count` alerts of distinct keys on ALERTS, as the bridge raises them, `spread_s` apart."""

    async def go() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            for n in range(count):
                alert = alerts.Alert(
                    "bench", "info", f"bench alert {n}", dedup_key=f"bench/{time.time_ns()}/{n}"
                )
                event = alert.event(event_source("iad", "bench"))
                await js.publish(
                    event.type, event.to_json().encode(), headers={"Nats-Msg-Id": event.id}
                )
                if spread_s:
                    await asyncio.sleep(spread_s)
        finally:
            await client.close()

    asyncio.run(go())


class HeldStack(bench_bridge.BenchStack):
    """The bench's stack with the consumers started only when `start_consumers` is called."""

    def _start_consumers(self) -> None:
        return None

    def start_consumers(self) -> None:
        DevStack._start_consumers(self)


@contextlib.contextmanager
def held_stack() -> Iterator[HeldStack]:
    with bench_bridge.local_stack(stack_class=HeldStack) as stack:
        assert isinstance(stack, HeldStack)
        yield stack


async def _drain(url: str, consumer: Consumer) -> tuple[int, float]:
    client = await nats.connect(url)
    first: list[float] = []
    effect = consumer.effect_for(client)

    async def timed(batch: Sequence[Any]) -> None:
        if not first:
            first.append(time.perf_counter())
        outcome = effect(batch)
        if outcome is not None:
            await outcome

    try:
        stats = await consume(
            client,
            consumer.stream,
            consumer.durable,
            timed,
            should_stop=lambda: False,
            idle_exit_s=2.0,
        )
    finally:
        await client.close()
    last = time.perf_counter() - 2.0  # the idle wait that ended the run
    return stats.processed, max(last - (first[0] if first else last), 1e-9)


def throughput(
    stack: HeldStack, gateway: bench_bridge.Gateway, count: int, alert_count: int
) -> dict[str, float]:
    nats_url = stack.endpoints["NATS_URL"]
    templates = bench_bridge.event_templates(gateway)
    bench_bridge.mark_everything_published()
    bench_bridge._relay_warmup(stack.endpoints)
    asyncio.run(bench_bridge._purge(nats_url))
    bench_bridge.fill_outbox(count, templates)
    elapsed = bench_bridge._relay(stack.endpoints, count)
    rates = {"bridge": count / elapsed}
    say(f"  bridge: {count:,} events published in {elapsed:.2f} s: {rates['bridge']:,.0f}/s")
    raise_alerts(nats_url, alert_count)
    for consumer in CONSUMERS:
        processed, seconds = asyncio.run(_drain(nats_url, consumer))
        rates[consumer.name] = processed / seconds
        say(
            f"  {consumer.name}: {processed:,} events in {seconds:.2f} s: "
            f"{rates[consumer.name]:,.0f}/s"
        )
    return rates


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(
    stack: HeldStack, gateway: bench_bridge.Gateway, rate: float, duration_s: float
) -> dict[str, tuple[float, float, float, int]]:
    projects = [gateway.create_project(f"Consumers Bench {n}") for n in range(20)]
    stack.start_consumers()
    time.sleep(3)  # the consumers' first runs connect (cold starts)
    since = datetime.now().astimezone()
    before = {c.name: c.count() for c in CONSUMERS}
    total = int(rate * duration_s)
    alerting = threading.Thread(
        target=raise_alerts, args=(stack.endpoints["NATS_URL"], int(duration_s), 1.0)
    )
    alerting.start()
    began = time.perf_counter()
    for n in range(total):
        delay = began + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        gateway.update_project(projects[n % len(projects)], (n % 100) + 1)
    alerting.join()
    results = {}
    for consumer in CONSUMERS:
        deadline = time.monotonic() + 60
        wanted = int(consumer.per_mutation * total) or int(duration_s)
        while consumer.count() - before[consumer.name] < wanted and time.monotonic() < deadline:
            time.sleep(0.5)
        values = consumer.latencies_ms(since)
        results[consumer.name] = (
            statistics.median(values),
            _percentile(values, 0.99),
            max(values),
            len(values),
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--alerts", type=int, default=500, help="alerts in the router's backlog")
    parser.add_argument("--rate", type=float, default=20.0, help="mutations per second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of steady load")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave through the finally blocks
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    say("Starting the local stack (as make dev, consumers held back) ...")
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), held_stack() as stack:
        gateway = bench_bridge.editor_gateway(stack)
        follow_kenya(stack)
        say(f"\nThroughput: {args.events:,} outbox events through the bridge, then each backlog")
        rates = throughput(stack, gateway, args.events, args.alerts)
        say(f"\nLatency: {args.rate:g} mutations/s through the gateway for {args.duration:g} s")
        measured = latency(stack, gateway, args.rate, args.duration)
    say("")
    say(f"{'consumer':<16}{'events/s':>10}{'bridge/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    spans = {
        "mobile_push": "commit -> push (with notifier)",
        "notifier": "commit -> push (with mobile_push)",
        "alert_router": "raised -> sent to SNS",
    }
    for consumer in CONSUMERS:
        p50, p99, worst, n = measured[consumer.name]
        span = spans.get(consumer.name, "commit -> effect")
        say(
            f"{consumer.name:<16}{rates[consumer.name]:>10,.0f}{rates['bridge']:>10,.0f}"
            f"{p50:>9.1f}{p99:>9.1f}{worst:>9.1f}   ({n} events; {span})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

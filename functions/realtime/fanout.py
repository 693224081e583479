"""The fan-out: COVENANT events to the subscribers of one region (REALTIME_TARGET_REGION, by
default the function's own), through that region's `@connections` API.

Each run pulls the durable consumer `REALTIME_<REGION>` (explicit ack) for about a minute, as
the other consumers do (covenant.consumer). For every batch it knows the shard's
subscriptions (store.members, read again only when the shard's membership version moved) and
serves each one the events after its own cursor, in stream order:

- a subscription's cursor is the last stream sequence served to it. After each accepted post
  the cursor is recorded before that subscription's next post (the records of the
  subscriptions served side by side grouped into BatchWriteItem requests); a caught-up
  subscription with nothing to post keeps its cursor and rides on the shard's checkpoint,
  written once per batch after every subscription was served and before the batch is
  acknowledged. A restart (a kill, a timeout) redelivers the unacknowledged batch: every
  subscription whose cursor (or the checkpoint) is past an event skips it.
- a subscription behind the batch (it asked `since`, or the checkpoint is older than its
  cursor) is first served from the stream itself (JetStream direct get, next message of its
  subjects), at most BACKFILL_PER_PASS events per batch, so a far-behind subscriber catches up
  over a few batches without stalling the others.
- a subscription without `since` starts with the first batch after it was seen (events
  stored before its `createdAt` are not its).

Delivery is exactly once per subscription except in one window: the fan-out dies after
`@connections` accepted a message and before that message's cursor record. That one message
(the last the subscription got) is then posted again after the restart, right after it, with
the same `eventId` and `position`: at most one per subscription per crash, which a client
keeping its last position drops (docs/realtime.md, "What is guaranteed").

Each pass also closes what must end: connections that sent no `connection_init` within
INIT_TIMEOUT_S (4408), whose token expired or whose user signed out everywhere (4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import nats.errors
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import FetchTimeoutError, NotFoundError

from covenant import consumer
from covenant.config import env, env_int, settings
from covenant.logs import adopt_shared_logs
from covenant.regions import Region, get_region, load_regions, region_codes
from graphql_api import subscriptions
from graphql_api.api import GraphQLSettings
from realtime import protocol, store
from realtime.management import Connections, ManagementError

STREAM = "COVENANT"
BACKFILL_PER_PASS = 500
INIT_TIMEOUT_S = 10  # graphql-ws servers wait 3 s by default; API Gateway adds a cold start
HOUSEKEEPING_EVERY_S = 5.0
REVOCATION_EVERY_S = 30.0
# With no new event, a pass (a subscriber resuming from `since`, housekeeping) at most this
# often: an idle region costs one index query per IDLE_PASS_EVERY_S, not one per fetch.
IDLE_PASS_EVERY_S = 2.0
# After the shard's membership moved, the index (eventually consistent) is read on every pass
# for this long, so a subscription it shows late is still seen at once.
INDEX_SETTLE_S = 2.0

logger = Logger(service="fanout")
metrics = Metrics(namespace="Covenant", service="fanout")
log = logging.getLogger(__name__)
_T = TypeVar("_T")


def _concurrency() -> int:
    return max(1, env_int("REALTIME_POST_CONCURRENCY", 16))


def durable_name(region_code: str, shard: str = "0") -> str:
    """The durable consumer of a region's fan-out (shard 0 has no suffix)."""
    base = f"REALTIME_{region_code.upper()}"
    return base if shard == "0" else f"{base}_{shard}"


@dataclass
class PassStats:
    posted: int = 0
    gone: int = 0
    failed: int = 0
    closed: int = 0
    backfilled: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # stored -> posted


@dataclass
class _Pass:
    """One pass over the shard: the batch, and what its subscriptions share."""

    batch: Sequence[consumer.Delivery]
    first: int
    upper: int
    limits: Any
    recorder: _Recorder
    shared: dict[int, subscriptions.Shared] = field(default_factory=dict)
    payloads: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)


class _Recorder:
    """The cursor writes of the subscriptions served side by side, grouped (BatchWriteItem, 25
    to a request, the writes of one round in flight together). Each subscription waits for its
    own write before its next post, so none has more than one accepted post unrecorded."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout
        self.pending: list[tuple[store.Cursor, tuple[str, str, int], asyncio.Future[None]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def record(self, cursor: store.Cursor, key: tuple[str, str, int]) -> None:
        done = asyncio.get_running_loop().create_future()
        self.pending.append((cursor, key, done))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self.pending:
            taken, self.pending = self.pending, []
            chunks = [
                taken[n : n + store.BATCH_WRITE_MAX]
                for n in range(0, len(taken), store.BATCH_WRITE_MAX)
            ]
            results = await asyncio.gather(
                *(
                    self.fanout._blocking(self.fanout.table.save_cursors, [c for c, _, _ in chunk])
                    for chunk in chunks
                ),
                return_exceptions=True,
            )
            for chunk, result in zip(chunks, results, strict=True):
                for cursor, key, done in chunk:
                    if isinstance(result, BaseException):
                        done.set_exception(result)
                    else:
                        self.fanout._served[key] = (cursor.seq, cursor.caught_up)
                        done.set_result(None)


@dataclass
class FanOut:
    table: store.Store
    connections: Connections
    js: JetStreamContext
    region: str
    shard: str = "0"
    checkpoint: int = 0
    stats: PassStats = field(default_factory=PassStats)
    # True when the run must end (its time is nearly up): a pass stops before its next post.
    should_stop: Callable[[], bool] = lambda: False
    # The blocking calls (posts, store writes, GraphQL execution) of the subscriptions
    # served side by side.
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(_concurrency() + 4, "fanout")
    )
    _housekept_at: float = 0.0
    _revocation_checked: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _members: tuple[dict[str, store.Connection], list[store.Subscription]] | None = None
    _members_version: int = -1
    _members_read_at: float = float("-inf")
    _members_moved_at: float = float("-inf")
    # What this run recorded per subscription (connection, id, createdAt): (cursor, caught
    # up); the index read between passes may not show it yet.
    _served: dict[tuple[str, str, int], tuple[int, bool]] = field(default_factory=dict)

    async def serve(self, batch: Sequence[consumer.Delivery]) -> None:
        """Serves every subscription of the shard up to the batch's last event (or, with no
        batch, up to the checkpoint); durable when it returns."""
        connections, subs = await self._current_members()
        self._housekeeping(connections)
        first = batch[0].stream_seq if batch else self.checkpoint + 1
        upper = batch[-1].stream_seq if batch else self.checkpoint
        serving = _Pass(batch, first, upper, GraphQLSettings.load().limits, _Recorder(self))
        dead: set[str] = set()
        # Subscriptions are served side by side (their posts and cursor writes are network
        # waits), each by one task: its own events stay in stream order.
        slots = asyncio.Semaphore(_concurrency())

        async def serve_one(sub: store.Subscription) -> None:
            connection = connections.get(sub.connection_id)
            if connection is None or connection.state != "ready":
                return
            async with slots:
                if sub.connection_id in dead:
                    return
                try:
                    await self._serve_one(sub, connection, serving)
                except _Gone:
                    if sub.connection_id not in dead:
                        dead.add(sub.connection_id)
                        self.stats.gone += 1
                        await self._blocking(self.table.forget_connection, sub.connection_id)

        results = await asyncio.gather(*(serve_one(sub) for sub in subs), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]  # the batch is served again; the cursors keep it from doubling
        if upper > self.checkpoint:
            await self._blocking(self.table.save_checkpoint, self.shard, upper)
            self.checkpoint = upper

    async def _blocking(self, call: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call, *args)

    async def _current_members(
        self,
    ) -> tuple[dict[str, store.Connection], list[store.Subscription]]:
        """The shard's connections and subscriptions: the index is read again only when the
        shard's membership version moved (and for INDEX_SETTLE_S after, the index being
        eventually consistent), or every HOUSEKEEPING_EVERY_S (connections opened, tokens)."""
        version = await self._blocking(self.table.members_version, self.shard)
        now = time.monotonic()
        if version != self._members_version:
            self._members_moved_at = now
        if (
            self._members is None
            or version != self._members_version
            or now - self._members_moved_at < INDEX_SETTLE_S
            or now - self._members_read_at >= HOUSEKEEPING_EVERY_S
        ):
            self._members = await self._blocking(self.table.members, self.shard)
            self._members_version, self._members_read_at = version, now
            current = {
                (s.connection_id, s.subscription_id, s.created_at_ms) for s in self._members[1]
            }
            self._served = {k: v for k, v in self._served.items() if k in current}
        return self._members

    async def _serve_one(
        self, sub: store.Subscription, connection: store.Connection, serving: _Pass
    ) -> None:
        subscribed = subscriptions.Subscribed.from_json(sub.subscribed, sub.since)
        key = (sub.connection_id, sub.subscription_id, sub.created_at_ms)
        recorded = self._served.get(key)
        cursor, riding = recorded if recorded else (sub.cursor, sub.caught_up)
        if cursor is not None:
            served = max(cursor, self.checkpoint) if riding else cursor
        elif sub.since is not None:
            served = sub.since
        else:
            served = serving.first - 1  # live from the first batch after it was created
        events: list[consumer.Delivery] = []
        caught_up = True
        if served < serving.first - 1:
            # Only a subscriber who asked for a position hears that it is gone; one served up
            # to the checkpoint goes on from the oldest event kept (a stream purged by hand).
            asked = cursor is None and sub.since is not None
            events, caught_up, reached = await self._backfill(
                subscribed.subject, served, serving.first - 1, clamp=not asked
            )
            if reached is None:
                await self._blocking(self._send, connection, sub, _expired_position(sub))
                await self._blocking(
                    self.table.remove_subscription, sub.connection_id, sub.subscription_id
                )
                return
            examined = reached
        else:
            examined = served
        if caught_up:
            events.extend(d for d in serving.batch if d.stream_seq > served)
            examined = max(examined, serving.upper)
        new = cursor is None
        posted = 0
        for delivery in events:
            if new and sub.since is None and _stored_ms(delivery) < sub.created_at_ms:
                continue
            change = subscriptions.change_of(
                subscribed, delivery.event_id, delivery.stream_seq, delivery.envelope
            )
            if change is None:
                continue
            if self.should_stop():
                raise _OutOfTime  # a clean end: every accepted post is recorded
            await self._blocking(self._post, sub, connection, delivery, change, serving)
            # Before the next post: a restart from here on never posts this message again.
            cursor, riding = delivery.stream_seq, caught_up and delivery.stream_seq >= serving.first
            await serving.recorder.record(store.Cursor(sub, connection, cursor, riding), key)
            posted += 1
        with self._lock:
            self.stats.posted += posted
        # What it was served up to beyond its last post. A live subscription rides on the
        # shard's checkpoint (written after every subscription was served): nothing to write.
        # One catching up records how far it was examined, so a restart does not look again.
        if caught_up and (riding or (new and sub.since is None)):
            self._served[key] = (cursor if cursor is not None else examined, True)
        elif caught_up or cursor is None or examined > cursor:
            await serving.recorder.record(store.Cursor(sub, connection, examined, caught_up), key)

    def _post(
        self,
        sub: store.Subscription,
        connection: store.Connection,
        delivery: consumer.Delivery,
        change: dict[str, Any],
        serving: _Pass,
    ) -> None:
        """One `next` message; subscribers asking the same document with the same identity
        share its execution."""
        key = (
            delivery.stream_seq,
            sub.query,
            json.dumps(sub.variables, sort_keys=True),
            sub.operation_name,
            json.dumps(connection.actor, sort_keys=True),
        )
        payload = serving.payloads.get(key)
        if payload is None:
            context = serving.shared.setdefault(
                delivery.stream_seq,
                subscriptions.Shared(delivery.event_id, load_regions(), self.region),
            )
            payload = subscriptions.deliver(
                sub.query,
                sub.variables,
                sub.operation_name,
                serving.limits,
                change,
                protocol.actor_of(connection.actor),
                context,
            )
            serving.payloads[key] = payload
        self._send(connection, sub, {"id": sub.subscription_id, "type": "next", "payload": payload})
        with self._lock:
            self.stats.latencies_ms.append(time.time() * 1000 - _stored_ms(delivery))

    def _send(
        self, connection: store.Connection, sub: store.Subscription, message: dict[str, Any]
    ) -> None:
        try:
            delivered = self.connections.send(connection.connection_id, message)
        except ManagementError:
            with self._lock:
                self.stats.failed += 1
            raise
        if not delivered:
            raise _Gone

    async def _backfill(
        self, subject: str, after: int, until: int, *, clamp: bool
    ) -> tuple[list[consumer.Delivery], bool, int | None]:
        """The subject's events after `after` up to `until` from the stream: (events, caught
        up to `until`, last sequence examined), or (.., None) when `after` is older than
        the stream keeps."""
        info = await self.js.stream_info(STREAM)
        if after + 1 < info.state.first_seq:
            if not clamp:
                return [], False, None
            after = info.state.first_seq - 1
        found: list[consumer.Delivery] = []
        seq = after + 1
        while seq <= until and len(found) < BACKFILL_PER_PASS:
            try:
                raw = await self.js.get_msg(
                    STREAM, seq=seq, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                return found, True, until
            if raw.seq is None or raw.seq > until:
                return found, True, until
            delivery = _delivery(raw)
            if delivery is not None:
                found.append(delivery)
            seq = raw.seq + 1
        self.stats.backfilled += len(found)
        caught_up = seq > until
        return found, caught_up, until if caught_up else seq - 1

    def _housekeeping(self, connections: dict[str, store.Connection]) -> None:
        now = time.time()
        if now - self._housekept_at < HOUSEKEEPING_EVERY_S:
            return
        self._housekept_at = now
        for connection in list(connections.values()):
            close = self._must_close(connection, now)
            if close is None:
                continue
            log.info(
                "closing connection",
                extra={"connectionId": connection.connection_id, "code": close.code},
            )
            with contextlib.suppress(ManagementError):
                self.connections.close(connection.connection_id)
            self.table.forget_connection(connection.connection_id)
            del connections[connection.connection_id]
            self.stats.closed += 1

    def _must_close(self, connection: store.Connection, now: float) -> protocol.Close | None:
        if connection.state != "ready":
            if now - connection.connected_at_ms / 1000 > INIT_TIMEOUT_S:
                return protocol.Close(4408, "Connection initialisation timeout")
            return None
        if connection.token_expires_at is not None and connection.token_expires_at <= now:
            return protocol.Close(4403, "Forbidden")
        if connection.actor is None:
            return None
        checked = self._revocation_checked.get(connection.connection_id, 0.0)
        if now - checked < REVOCATION_EVERY_S:
            return None
        self._revocation_checked[connection.connection_id] = now
        if protocol.session_ended(protocol.actor_of(connection.actor)):
            return protocol.Close(4403, "Forbidden")
        return None


class _Gone(Exception):
    """The subscriber's connection is gone (410)."""


class _OutOfTime(Exception):
    """The run's time is nearly up in the middle of a pass: it stops there rather than be
    killed mid-post (the one window of a repeated message, docs/realtime.md)."""


def _stored_ms(delivery: consumer.Delivery) -> float:
    return delivery.stored_at.astimezone(UTC).timestamp() * 1000


def _delivery(raw: Any) -> consumer.Delivery | None:
    try:
        envelope = json.loads(raw.data or b"")
    except ValueError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("id"), str):
        return None
    return consumer.Delivery(
        event_id=(raw.headers or {}).get("Nats-Msg-Id") or envelope["id"],
        subject=str(raw.subject),
        stream_seq=int(raw.seq),
        envelope=envelope,
        raw=raw.data,
        stored_at=raw.time,
    )


def _expired_position(sub: store.Subscription) -> dict[str, Any]:
    return {
        "id": sub.subscription_id,
        "type": "error",
        "payload": [
            {
                "message": "since: the stream no longer keeps this position (30 days): read "
                "the current state with a query, then subscribe without since.",
                "extensions": {"code": "BAD_USER_INPUT", "field": "since"},
            }
        ],
    }


async def run_fanout(
    client: Client,
    fanout: FanOut,
    durable: str,
    *,
    should_stop: Callable[[], bool],
    idle_exit_s: float | None = None,
    batch_size: int = consumer.DEFAULT_BATCH_SIZE,
    fetch_wait_s: float = consumer.DEFAULT_FETCH_WAIT_S,
) -> int | None:
    """Pulls and serves batches until `should_stop()`; a batch is acknowledged only once
    served. Returns the consumer's lag at the end."""
    js = client.jetstream()
    fanout.should_stop = should_stop
    pull = await js.pull_subscribe_bind(durable=durable, stream=STREAM)
    fanout.checkpoint = fanout.table.checkpoint(fanout.shard)
    idle_since, passed_at = time.monotonic(), float("-inf")  # the first idle pass at once
    try:
        while not should_stop():
            try:
                messages = await pull.fetch(batch_size, timeout=fetch_wait_s)
            except (FetchTimeoutError, nats.errors.TimeoutError, TimeoutError):
                if time.monotonic() - passed_at >= IDLE_PASS_EVERY_S:
                    await fanout.serve([])  # catch up those behind; housekeeping
                    passed_at = time.monotonic()
                if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            batch = []
            for msg in messages:
                delivery = consumer.parse(msg)
                if delivery is None:
                    await msg.term()
                else:
                    batch.append(delivery)
            batch.sort(key=lambda d: d.stream_seq)
            try:
                await fanout.serve(batch)
                passed_at = time.monotonic()
            except Exception as failed:
                if isinstance(failed, _OutOfTime):
                    log.info("out of time in a batch; the rest of it will be redelivered")
                else:
                    log.exception("serving a batch failed; it will be redelivered")
                for msg in messages:
                    await msg.nak(delay=consumer.NAK_DELAY_S)
                break
            for msg in messages:
                await msg.ack()
        await client.flush(timeout=5)
    finally:
        with contextlib.suppress(Exception):
            await pull.unsubscribe()
    with contextlib.suppress(Exception):
        info = await js.consumer_info(STREAM, durable)
        return int(info.num_pending + info.num_ack_pending)
    return None


def target_region(event: Any) -> Region:
    """The region served: the schedule's input `{"region": "<code>"}` (one rule per region in
    AWS), else REALTIME_TARGET_REGION, else the function's own."""
    code = event.get("region") if isinstance(event, dict) else None
    code = code or env("REALTIME_TARGET_REGION") or settings().region
    if code not in region_codes():
        raise ValueError(f"no region {code!r}: one of {', '.join(region_codes())}")
    return get_region(str(code))


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    region = target_region(event)
    shard = str(event.get("shard", "0")) if isinstance(event, dict) else "0"
    reserve_ms = env_int("CONSUMER_TIME_RESERVE_MS", consumer.DEFAULT_TIME_RESERVE_MS)
    idle = env("CONSUMER_IDLE_EXIT_S")

    async def go() -> tuple[FanOut, int | None]:
        client = await consumer.connect()
        try:
            fanout = FanOut(
                store.Store(store.client(region.aws_region)),
                Connections(region),
                client.jetstream(),
                region.code,
                shard,
            )
            try:
                lag = await run_fanout(
                    client,
                    fanout,
                    durable_name(region.code, shard),
                    should_stop=lambda: context.get_remaining_time_in_millis() < reserve_ms,
                    idle_exit_s=float(idle) if idle else None,
                )
            finally:
                fanout.pool.shutdown()
            return fanout, lag
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    fanout, lag = asyncio.run(go())
    stats = fanout.stats
    metrics.add_metric(name="MessagesPosted", unit=MetricUnit.Count, value=stats.posted)
    metrics.add_metric(name="DeliveryErrors", unit=MetricUnit.Count, value=stats.failed)
    metrics.add_metric(name="GoneConnections", unit=MetricUnit.Count, value=stats.gone)
    metrics.add_metric(name="ClosedConnections", unit=MetricUnit.Count, value=stats.closed)
    if lag is not None:
        metrics.add_metric(name="ConsumerLag", unit=MetricUnit.Count, value=lag)
    return {
        "region": region.code,
        "posted": stats.posted,
        "gone": stats.gone,
        "failed": stats.failed,
        "closed": stats.closed,
        "backfilled": stats.backfilled,
        "lag": lag,
    }

"""The JetStream topology as code: the four streams and the durable consumers of DESIGN.md
("Events"), and the one command that applies them to any NATS server.

    python -m covenant.streams apply --url nats://127.0.0.1:4222 --replicas 1
    python -m covenant.streams apply --url nats://a:4222,nats://b:4222,nats://c:4222 --replicas 3

Run by `make dev` against the local server (one replica; three with COVENANT_NATS_NODES=3)
and by the deploy in AWS with three (NATS_URL, NATS_REPLICAS); `apply()` is the same from
Python. A URL may list several servers of one cluster, separated by commas: any live one
serves. Applying is
idempotent: it creates what is missing, updates what differs and can be changed in place
without losing data, and *refuses* (reports, does not make) any change that would lose data
or that JetStream cannot make in place. A stream or consumer with a refused change is left
exactly as it is, including its other differences: an operator decides, then applies again.
The command prints one line per stream and consumer and exits 1 if anything was refused, 2
if it cannot reach JetStream.

Replicas are never lowered unless asked (`--scale-down`, `apply(..., scale_down=True)`): a
stream or consumer with more replicas than asked for is refused, so a command run with the
local default (1) against a three-node cluster cannot drop two copies of every event. JetStream
answers late while it moves a stream to more replicas (R1 -> R3) or elects a leader: a call
that times out, or is answered 503, is asked again with bounded backoff (RETRY_DELAYS_S)
before the run gives up.

Units: the dataclasses below hold durations in seconds. nats-py's StreamConfig and
ConsumerConfig take seconds too and send nanoseconds, the unit of JetStream's API (the seed
version sent milliseconds, which JetStream read as a 30-day retention of 2.6 seconds). The
tests read the raw stream info from the server to hold this.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamManager
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from covenant.config import env
from covenant.regions import load_regions

NS_PER_S = 10**9
MINUTE_S = 60
HOUR_S = 60 * MINUTE_S
DAY_S = 24 * HOUR_S
MIB = 1024 * 1024

# The bridge publishes every event with `Nats-Msg-Id` = event id. It publishes an event twice
# only when it published it but failed to mark it published (a crash, a database error): the
# row stays unpublished and the next relay pass, a wake-up retry or the scheduled sweep, sends
# it again at most minutes later. Two hours covers that with a wide margin (including a
# Lambda retrying for its full 15 minutes and a short database outage) while keeping the
# server's in-memory table of recent ids small. A duplicate published after the window
# (the database down for hours between publish and mark) is still possible, so consumers stay
# idempotent on the event id: delivery is at least once.
DUPLICATE_WINDOW_S = 2 * HOUR_S

# Events are small JSON documents; anything larger is a bug, which the stream rejects (the
# bridge then sets the event aside in the outbox) rather than storing.
MAX_MSG_SIZE = 1 * MIB

# Seven calendar years span at most 7 * 365 + 2 days (two leap days): never keep less.
AUDIT_RETENTION_S = (7 * 365 + 2) * DAY_S

DEFAULT_URL = "nats://127.0.0.1:4222"
MAX_REPLICAS = 5  # JetStream's own limit
# Waits before asking JetStream again after a timeout or a 503 (about 15 s in all): a stream
# moving from one replica to three, or a leader election, takes seconds.
RETRY_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)

Retention = Literal["limits", "workqueue"]
Storage = Literal["file", "memory"]
Kind = Literal["stream", "consumer"]
Action = Literal["created", "updated", "unchanged", "refused"]
T = TypeVar("T")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: Retention
    max_age_s: int  # 0: no age limit
    description: str
    storage: Storage = "file"
    duplicate_window_s: int = DUPLICATE_WINDOW_S
    max_msg_size: int = MAX_MSG_SIZE
    # Any replica may answer a direct get (one message by sequence or last by subject), so
    # `make tail` and point reads do not load the stream leader.
    allow_direct: bool = True

    def config(self, replicas: int) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            max_age=self.max_age_s,  # seconds; nats-py sends nanoseconds
            duplicate_window=self.duplicate_window_s,  # seconds; nats-py sends nanoseconds
            max_msg_size=self.max_msg_size,
            max_msgs=-1,
            max_bytes=-1,
            max_msgs_per_subject=-1,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            allow_direct=self.allow_direct,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer (no deliver subject), explicit acks, from the stream's start."""

    stream: str
    durable_name: str
    description: str
    filter_subject: str | None = None
    ack_wait_s: int = 30
    max_deliver: int = 10
    max_ack_pending: int = 1000

    def config(self, replicas: int) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable_name,
            durable_name=self.durable_name,
            description=self.description,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            replay_policy=ReplayPolicy.INSTANT,
            ack_wait=self.ack_wait_s,  # seconds; nats-py sends nanoseconds
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
            num_replicas=replicas,
        )


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        name="COVENANT",
        subjects=("covenant.countries.*", "covenant.projects.*"),
        retention="limits",
        max_age_s=30 * DAY_S,
        description="Domain events of countries and projects (CloudEvents), from the outbox",
    ),
    StreamSpec(
        name="AUDIT",
        subjects=("audit.>",),
        retention="limits",
        max_age_s=AUDIT_RETENTION_S,
        description="Audit events: one per mutation, naming the actor; kept seven years",
    ),
    StreamSpec(
        name="ALERTS",
        subjects=("alerts.>",),
        retention="limits",
        max_age_s=1 * DAY_S,
        description="Operational alerts; kept one day",
    ),
    StreamSpec(
        name="NOTIFICATIONS",
        subjects=("notifications.>",),
        retention="workqueue",
        max_age_s=7 * DAY_S,
        description="Notifications to send: a work queue, each removed once acknowledged",
    ),
)

CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec("COVENANT", "ANALYTICS", "Analytics: every country and project event"),
    # No CACHE_INVALIDATOR: there is no cache to invalidate, and the one worth having (short
    # max-age on anonymous GraphQL GETs) needs none (docs/deploy.md, "CACHE_INVALIDATOR").
    ConsumerSpec("COVENANT", "MOBILE_PUSH", "Pushes country and project changes to devices"),
    # One per region: the fan-out of that region's GraphQL subscribers (functions/realtime).
    # One batch in flight (max_ack_pending = the fan-out's batch) and an ack wait longer than
    # a run lives (60 s): a run that overlaps the next one of its region cannot be handed
    # later events than the batch it holds, so subscribers see the stream in order.
    *(
        ConsumerSpec(
            "COVENANT",
            f"REALTIME_{region.code.upper()}",
            f"Real-time fan-out to {region.code}",
            ack_wait_s=65,
            max_ack_pending=100,
        )
        for region in load_regions()
    ),
    ConsumerSpec("AUDIT", "AUDIT_LOGGER", "Records every audit event"),
    ConsumerSpec("ALERTS", "ALERT_ROUTER", "Routes alerts to whoever must act on them"),
    # A work-queue stream allows one unfiltered consumer: NOTIFIER is it.
    ConsumerSpec("NOTIFICATIONS", "NOTIFIER", "Sends notifications; the work queue's consumer"),
)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` matches one token, a final `>` one or more."""
    tokens = subject.split(".")
    if not subject or "" in tokens:
        return False
    parts = pattern.split(".")
    for index, part in enumerate(parts):
        if part == ">":
            return len(tokens) > index
        if index >= len(tokens) or (part != "*" and part != tokens[index]):
            return False
    return len(parts) == len(tokens)


# The bridge's reply inboxes (JetStream's publish acknowledgements): the bridge connects with
# this inbox prefix and its NATS user may subscribe under it only, so it can read no other
# client's replies (e.g. the admin's JetStream API answers under the default `_INBOX.`).
BRIDGE_INBOX_PREFIX = "_INBOX_BRIDGE"


def stream_for_subject(subject: str) -> StreamSpec | None:
    """The stream that captures a published subject, or None if none does."""
    for stream in STREAMS:
        if any(subject_matches(pattern, subject) for pattern in stream.subjects):
            return stream
    return None


@dataclass(frozen=True)
class Change:
    kind: Kind
    name: str
    action: Action
    detail: str = ""
    stream: str = ""  # a consumer's stream

    def __str__(self) -> str:
        label = f"{self.kind} {self.name}" + (f" on {self.stream}" if self.stream else "")
        return f"{label}: {self.action}" + (f" ({self.detail})" if self.detail else "")


class TopologyError(RuntimeError):
    """JetStream cannot be reached or used at all (nothing per stream to report)."""


class ConnectError(TopologyError):
    """No connection to the NATS server."""


# -- comparing desired and current configuration ---------------------------------------------


def _value(value: object) -> object:
    """An enum's wire value (nats-py returns plain strings from the server, enums from us)."""
    return getattr(value, "value", value)


def _ns(seconds: float | None) -> int:
    return round((seconds or 0) * NS_PER_S)


def _duration(ns: int) -> str:
    if ns <= 0:
        return "unlimited"
    for unit, size in (("d", DAY_S), ("h", HOUR_S), ("m", MINUTE_S), ("s", 1)):
        if ns % (size * NS_PER_S) == 0:
            return f"{ns // (size * NS_PER_S)}{unit}"
    return f"{ns / NS_PER_S:g}s"


def _size(value: int) -> str:
    if value < 0:
        return "unlimited"
    if value and value % MIB == 0:
        return f"{value // MIB}MiB"
    return f"{value}B"


def _limit(value: int | None) -> float:
    """A JetStream limit for ordering: 0 or -1 (or unset) means no limit."""
    return float("inf") if value is None or value <= 0 else float(value)


@dataclass
class Diff:
    """Differences between the topology and the server: those it refuses to change (each
    with its reason), and those it changes in place."""

    refusals: list[str] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)

    def refused(self) -> str:
        """A refusal's detail: the reasons, then the updates held back with them."""
        held = f"; held back with it: {', '.join(self.updates)}" if self.updates else ""
        return "; ".join(self.refusals) + held


def _fewer_replicas(have: int, want: int) -> str:
    return (
        f"it has {have} replicas, the topology was asked for {want}: lowering it drops "
        f"{have - want} copies of every event (a one-node default run against a cluster?); "
        "apply with --scale-down to lower it on purpose"
    )


def diff_stream(
    spec: StreamSpec, replicas: int, current: StreamConfig, *, scale_down: bool = False
) -> Diff:
    """What applying `spec` would change in the stream's `current` configuration. Fewer
    replicas than the stream has is refused unless `scale_down`."""
    diff = Diff()
    storage = _value(current.storage)
    if storage != spec.storage:
        diff.refusals.append(
            f"storage is {storage}, the topology wants {spec.storage}: JetStream cannot change "
            "a stream's storage; move its messages to a new stream (or delete it, losing them) "
            "and apply again"
        )
    retention = _value(current.retention)
    if retention != spec.retention:
        diff.refusals.append(
            f"retention is {retention}, the topology wants {spec.retention}: changing it could "
            "delete messages (or JetStream refuses it); recreate the stream deliberately"
        )
    if current.sealed:
        diff.refusals.append(
            "the stream is sealed (no message can be added or removed, for good): move its "
            "messages to a new stream and apply again"
        )
    have, want = set(current.subjects or ()), set(spec.subjects)
    if have - want:
        diff.refusals.append(
            f"would stop capturing {', '.join(sorted(have - want))}: events published there "
            "would no longer be stored"
        )
    elif want - have:
        diff.updates.append(f"subjects + {', '.join(sorted(want - have))}")
    have_age, want_age = _ns(current.max_age), spec.max_age_s * NS_PER_S
    if _limit(want_age) < _limit(have_age):
        diff.refusals.append(
            f"max_age is {_duration(have_age)}, the topology wants {_duration(want_age)}: "
            f"lowering it deletes the messages older than {_duration(want_age)}"
        )
    elif have_age != want_age:
        diff.updates.append(f"max_age {_duration(have_age)} -> {_duration(want_age)}")
    for name in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        have_limit: int | None = getattr(current, name)
        # The topology sets none of these limits (-1): raising one to "none" loses nothing.
        if _limit(have_limit) != float("inf"):
            diff.updates.append(f"{name} {have_limit} -> unlimited")
    have_dup, want_dup = _ns(current.duplicate_window), spec.duplicate_window_s * NS_PER_S
    if have_dup != want_dup:
        diff.updates.append(f"duplicate_window {_duration(have_dup)} -> {_duration(want_dup)}")
    # A smaller max_msg_size deletes nothing stored; it only rejects larger new events, which
    # the bridge sets aside in the outbox. Both directions are updates.
    have_size = current.max_msg_size if current.max_msg_size is not None else -1
    if _limit(have_size) != _limit(spec.max_msg_size):
        diff.updates.append(f"max_msg_size {_size(have_size)} -> {_size(spec.max_msg_size)}")
    discard = _value(current.discard)
    if discard != DiscardPolicy.OLD.value:
        diff.updates.append(f"discard {discard} -> old")
    have_replicas = current.num_replicas or 1
    if have_replicas > replicas and not scale_down:
        diff.refusals.append(_fewer_replicas(have_replicas, replicas))
    elif have_replicas != replicas:
        diff.updates.append(f"replicas {have_replicas} -> {replicas}")
    if current.no_ack:  # the stream stores but never acknowledges: every publish would time out
        diff.updates.append("no_ack true -> false")
    if bool(current.allow_direct) != spec.allow_direct:
        diff.updates.append(f"allow_direct {bool(current.allow_direct)} -> {spec.allow_direct}")
    if (current.description or "") != spec.description:
        diff.updates.append("description")
    return diff


def _filters(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return sorted(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


def diff_consumer(
    spec: ConsumerSpec, replicas: int, current: ConsumerConfig, *, scale_down: bool = False
) -> Diff:
    """What applying `spec` would change in the consumer's `current` configuration. JetStream
    itself rejects changes of delivery mode, policies and filter; they are reported first,
    with what to do. Fewer replicas than the consumer has is refused unless `scale_down`."""
    diff = Diff()
    recreate = (
        "delete the consumer and apply again (it then starts over from the stream's first message)"
    )
    if current.deliver_subject:
        diff.refusals.append(
            f"it is a push consumer (deliver subject {current.deliver_subject}), the topology "
            f"wants a pull consumer: {recreate}"
        )
    checks: tuple[tuple[str, object, object], ...] = (
        ("ack_policy", _value(current.ack_policy), AckPolicy.EXPLICIT.value),
        ("deliver_policy", _value(current.deliver_policy), DeliverPolicy.ALL.value),
        ("replay_policy", _value(current.replay_policy), ReplayPolicy.INSTANT.value),
    )
    for name, have, want in checks:
        if have != want:
            diff.refusals.append(f"{name} is {have}, the topology wants {want}: {recreate}")
    have_filters = _filters(current)
    want_filters = [spec.filter_subject] if spec.filter_subject else []
    if have_filters != want_filters:
        diff.refusals.append(
            f"filter is {', '.join(have_filters) or 'none'}, the topology wants "
            f"{', '.join(want_filters) or 'none'}: {recreate}"
        )
    have_wait, want_wait = _ns(current.ack_wait), spec.ack_wait_s * NS_PER_S
    if have_wait != want_wait:
        diff.updates.append(f"ack_wait {_duration(have_wait)} -> {_duration(want_wait)}")
    if current.max_deliver != spec.max_deliver:
        diff.updates.append(f"max_deliver {current.max_deliver} -> {spec.max_deliver}")
    if current.backoff:  # the server would derive ack_wait from it, not take the topology's
        diff.updates.append(f"backoff {current.backoff} -> none")
    if current.headers_only:  # the consumer would get every event without its payload
        diff.updates.append("headers_only true -> false")
    if current.inactive_threshold:  # JetStream would delete the durable after that idle time
        diff.updates.append(f"inactive_threshold {current.inactive_threshold} s -> none")
    if current.max_ack_pending != spec.max_ack_pending:
        diff.updates.append(f"max_ack_pending {current.max_ack_pending} -> {spec.max_ack_pending}")
    if (current.num_replicas or 0) > replicas and not scale_down:
        diff.refusals.append(_fewer_replicas(current.num_replicas or 0, replicas))
    elif (current.num_replicas or 0) != replicas:
        diff.updates.append(f"replicas {current.num_replicas or 'stream'} -> {replicas}")
    if (current.description or "") != spec.description:
        diff.updates.append("description")
    return diff


# -- applying ----------------------------------------------------------------------------------


def _not_kept(kept: Diff) -> str:
    return f"the server accepted the update but kept: {'; '.join(kept.refusals + kept.updates)}"


def _rejected(exc: APIError) -> str:
    return f"the server rejected it: {exc.description or exc} (code {exc.err_code})"


async def _jetstream_call(
    call: Callable[[], Awaitable[T]], delays: Sequence[float] | None = None
) -> T:
    """A JetStream API call. A timeout or a 503 (JetStream busy moving replicas, electing a
    leader) is asked again after each of `delays` (RETRY_DELAYS_S); still late after the last,
    or JetStream missing, ends the whole run. Every call here is idempotent (an info, or the
    create or update of one configuration), so asking again after a late answer is safe."""
    waits = list(RETRY_DELAYS_S if delays is None else delays)
    while True:
        try:
            return await call()
        except ServiceUnavailableError as exc:
            if exc.code is None:  # no responders: nothing serves the JetStream API at all
                raise TopologyError(
                    "JetStream is not enabled on this server (nothing answers its API); start "
                    "nats-server with JetStream (--jetstream)"
                ) from None
            if not waits:
                raise TopologyError(f"JetStream is not available: {exc.description}") from None
            reason = f"503 {exc.description}"
        except nats.errors.TimeoutError:
            if not waits:
                raise TopologyError("JetStream did not answer in time") from None
            reason = "no answer in time"
        except APIError as exc:
            if exc.code != 503:
                raise
            if not waits:
                raise TopologyError(f"JetStream is not available: {exc.description}") from None
            reason = f"503 {exc.description}"
        delay = waits.pop(0)
        print(f"JetStream answered late ({reason}); asking again in {delay:g} s", file=sys.stderr)
        await asyncio.sleep(delay)


async def _apply_stream(
    js: JetStreamManager, spec: StreamSpec, replicas: int, scale_down: bool = False
) -> tuple[Change, bool]:
    """The stream's Change, and whether the stream exists afterwards."""
    desired = spec.config(replicas)
    try:
        info = await _jetstream_call(lambda: js.stream_info(spec.name))
    except NotFoundError:
        try:
            await _jetstream_call(lambda: js.add_stream(desired))
        except APIError as exc:
            return Change("stream", spec.name, "refused", _rejected(exc)), False
        return Change(
            "stream",
            spec.name,
            "created",
            f"subjects {', '.join(spec.subjects)}; {spec.retention}; {spec.storage}; "
            f"max_age {_duration(spec.max_age_s * NS_PER_S)}; "
            f"duplicate_window {_duration(spec.duplicate_window_s * NS_PER_S)}; "
            f"max_msg_size {_size(spec.max_msg_size)}; replicas {replicas}",
        ), True
    diff = diff_stream(spec, replicas, info.config, scale_down=scale_down)
    if diff.refusals:
        return Change("stream", spec.name, "refused", diff.refused()), True
    if not diff.updates:
        return Change("stream", spec.name, "unchanged"), True
    # Start from the server's configuration so settings the topology does not manage (and the
    # server's own metadata) are kept, and set every one it does manage.
    updated = info.config.evolve(
        description=desired.description,
        subjects=desired.subjects,
        max_age=desired.max_age,
        duplicate_window=desired.duplicate_window,
        max_msg_size=desired.max_msg_size,
        max_msgs=desired.max_msgs,
        max_bytes=desired.max_bytes,
        max_msgs_per_subject=desired.max_msgs_per_subject,
        discard=desired.discard,
        num_replicas=desired.num_replicas,
        allow_direct=desired.allow_direct,
        no_ack=False,
    )
    try:
        result = await _jetstream_call(lambda: js.update_stream(updated))
    except APIError as exc:
        return Change("stream", spec.name, "refused", _rejected(exc)), True
    kept = diff_stream(spec, replicas, result.config)
    if kept.refusals or kept.updates:
        return Change("stream", spec.name, "refused", _not_kept(kept)), True
    return Change("stream", spec.name, "updated", "; ".join(diff.updates)), True


async def _apply_consumer(
    js: JetStreamManager,
    spec: ConsumerSpec,
    replicas: int,
    stream_exists: bool,
    scale_down: bool = False,
) -> Change:
    def change(action: Action, detail: str = "") -> Change:
        return Change("consumer", spec.durable_name, action, detail, spec.stream)

    if not stream_exists:
        return change("refused", f"stream {spec.stream} does not exist")
    desired = spec.config(replicas)
    try:
        info = await _jetstream_call(lambda: js.consumer_info(spec.stream, spec.durable_name))
    except NotFoundError:
        try:
            await _jetstream_call(lambda: js.add_consumer(spec.stream, desired))
        except APIError as exc:
            return change("refused", _rejected(exc))
        return change(
            "created",
            f"pull; ack explicit; deliver all; "
            f"ack_wait {_duration(spec.ack_wait_s * NS_PER_S)}; max_deliver {spec.max_deliver}; "
            f"max_ack_pending {spec.max_ack_pending}",
        )
    diff = diff_consumer(spec, replicas, info.config, scale_down=scale_down)
    if diff.refusals:
        return change("refused", diff.refused())
    if not diff.updates:
        return change("unchanged")
    updated = info.config.evolve(
        description=desired.description,
        ack_wait=desired.ack_wait,
        max_deliver=desired.max_deliver,
        max_ack_pending=desired.max_ack_pending,
        num_replicas=desired.num_replicas,
        backoff=None,
        headers_only=None,
        inactive_threshold=None,
    )
    try:
        # Creating an existing durable with an updatable difference updates it.
        result = await _jetstream_call(lambda: js.add_consumer(spec.stream, updated))
    except APIError as exc:
        return change("refused", _rejected(exc))
    kept = diff_consumer(spec, replicas, result.config)
    if kept.refusals or kept.updates:
        return change("refused", _not_kept(kept))
    return change("updated", "; ".join(diff.updates))


async def apply_topology(
    js: JetStreamManager, replicas: int, *, scale_down: bool = False
) -> list[Change]:
    """Makes the server's streams and consumers those of STREAMS and CONSUMERS, as far as it
    can without losing data; one Change per stream and consumer, in definition order. Fewer
    replicas than a stream or consumer has are refused unless `scale_down`.

    Raises TopologyError when JetStream cannot be used at all.
    """
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be between 1 and {MAX_REPLICAS}, got {replicas}")
    changes: list[Change] = []
    existing: set[str] = set()
    for stream in STREAMS:
        change, exists = await _apply_stream(js, stream, replicas, scale_down)
        changes.append(change)
        if exists:
            existing.add(stream.name)
    for consumer in CONSUMERS:
        exists = consumer.stream in existing
        changes.append(await _apply_consumer(js, consumer, replicas, exists, scale_down))
    return changes


# -- connecting ----------------------------------------------------------------------------------


def server_urls(url: str | Sequence[str]) -> list[str]:
    """The servers of a NATS URL: one, or several of one cluster separated by commas
    (`nats://a:4222,nats://b:4222`), as NATS_URL and the NATS secret's `url` give them; a
    list is taken as it is. Blanks are dropped."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    return [part.strip() for part in parts if part.strip()]


def redact(url: str | Sequence[str]) -> str:
    """The URL (or server list) without its credentials, for messages."""
    return ",".join(_redact_one(server) for server in server_urls(url))


def _redact_one(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    text = str(exc).removeprefix("nats: ")
    return text or type(exc).__name__


async def connect(
    url: str | Sequence[str],
    *,
    user: str | None = None,
    password: str | None = None,
    creds_file: str | None = None,
    tls_ca: str | None = None,
    connect_timeout: float = 5,
) -> Client:
    """A NATS connection for a one-off command: two attempts per server of `url` (one, or
    several of a cluster, comma-separated), then ConnectError."""
    servers = server_urls(url)
    if not servers:
        raise ConnectError("no server in the NATS URL")
    for server in servers:
        scheme = urlsplit(server).scheme if "://" in server else "nats"
        if scheme not in ("nats", "tls", "ws", "wss"):
            raise ConnectError(f"unsupported URL scheme {scheme!r} (use nats:// or tls://)")
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    options: dict[str, Any] = {}
    if user is not None:
        options["user"] = user
    if password is not None:
        options["password"] = password
    if creds_file is not None:
        options["user_credentials"] = creds_file
    if tls_ca is not None:
        try:
            options["tls"] = ssl.create_default_context(cafile=tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot read the TLS CA file {tls_ca}: {exc}") from None
    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name="covenant-streams",
                connect_timeout=connect_timeout,
                # nats-py bounds its initial attempts only with allow_reconnect=False and a
                # positive max_reconnect_attempts (0 means "try forever").
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=on_error,
                **options,
            ),
            timeout=2 * len(servers) * connect_timeout + 1,
        )
    except Exception as exc:
        raise ConnectError(_reason(errors[-1] if errors else exc)) from None


async def _apply_at(
    url: str | Sequence[str], replicas: int, scale_down: bool, options: dict[str, Any]
) -> list[Change]:
    client = await connect(url, **options)
    try:
        changes = await apply_topology(client.jsm(), replicas, scale_down=scale_down)
        await client.drain()
        return changes
    finally:
        if not client.is_closed:
            await client.close()


def apply(
    url: str | Sequence[str],
    replicas: int,
    *,
    scale_down: bool = False,
    user: str | None = None,
    password: str | None = None,
    creds_file: str | None = None,
    tls_ca: str | None = None,
    connect_timeout: float = 5,
) -> list[Change]:
    """Connects to `url` (any live server of a comma-separated list), applies the topology
    with `replicas` replicas (never fewer than a stream has unless `scale_down`), disconnects.

    Raises ConnectError when the server cannot be reached, TopologyError when JetStream
    cannot be used there.
    """
    options: dict[str, Any] = {
        "user": user,
        "password": password,
        "creds_file": creds_file,
        "tls_ca": tls_ca,
        "connect_timeout": connect_timeout,
    }
    return asyncio.run(_apply_at(url, replicas, scale_down, options))


# -- command line --------------------------------------------------------------------------------


def _replicas_arg(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 1 <= value <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_REPLICAS}, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m covenant.streams",
        description="Apply Covenant's JetStream streams and consumers (idempotent).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    apply_cmd = commands.add_parser(
        "apply",
        help="create what is missing, update what changed, report what would lose data",
        description="Exit status: 0 applied, 1 some change refused (see its line), "
        "2 cannot connect or JetStream unavailable.",
    )
    apply_cmd.add_argument(
        "--url",
        default=env("NATS_URL") or DEFAULT_URL,
        help=f"one server, or a cluster's as a comma-separated list (default: $NATS_URL, "
        f"else {DEFAULT_URL})",
    )
    apply_cmd.add_argument(
        "--replicas",
        type=_replicas_arg,
        default=env("NATS_REPLICAS") or "1",
        help="stream and consumer replicas: 1 locally, 3 in AWS (default: $NATS_REPLICAS or 1)",
    )
    apply_cmd.add_argument(
        "--scale-down",
        action="store_true",
        help="allow fewer replicas than a stream or consumer has (refused otherwise)",
    )
    apply_cmd.add_argument("--user", default=env("NATS_USER"), help="default: $NATS_USER")
    apply_cmd.add_argument(
        "--password", default=env("NATS_PASSWORD"), help="default: $NATS_PASSWORD (prefer it)"
    )
    apply_cmd.add_argument("--creds", default=env("NATS_CREDS"), help="a .creds file")
    apply_cmd.add_argument("--tls-ca", default=env("NATS_TLS_CA"), help="CA bundle (PEM) file")
    apply_cmd.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
    args = parser.parse_args(argv)

    try:
        changes = apply(
            args.url,
            args.replicas,
            scale_down=args.scale_down,
            user=args.user,
            password=args.password,
            creds_file=args.creds,
            tls_ca=args.tls_ca,
            connect_timeout=args.connect_timeout,
        )
    except ConnectError as exc:
        print(f"cannot connect to NATS at {redact(args.url)}: {exc}", file=sys.stderr)
        return 2
    except TopologyError as exc:
        print(f"cannot apply the topology at {redact(args.url)}: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(change)
    refused = [change for change in changes if change.action == "refused"]
    if refused:
        print(
            f"{len(refused)} refused: those streams and consumers were left as they are",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Subscriptions end to end: `.venv/bin/python -m bench.realtime_e2e 2>/dev/null` from the
repository root.

It starts the local stack as `make dev` does (PostgreSQL primary + replica, nats-server with
JetStream, moto, the gateway with its WebSocket APIs, the bridge's wake-up queue and schedule,
the fan-out of every region) in a temporary folder on free ports. For 1, 100 and 1 000
subscribers, spread round-robin over the six regions' `ws://.../<region>/graphql`, each a
graphql-transport-ws client subscribed to `projectChanged` (filtered to the benchmark's
project), it measures, message after message, alternating:

- commit → delivered: an editor's `updateProject` through the primary region's GraphQL HTTP
  API (keep-alive), timed from the moment the request is sent (the commit is inside it) to the
  moment each subscriber's socket hands the `next` message to the client; the whole path:
  outbox, SQS wake-up, bridge, JetStream, fan-out Lambda, `@connections`, the WebSocket
  emulation;
- the floor: the same message (the same bytes) pushed to the same already-open sockets through
  `POST /<region>/@connections/{id}`, all at once from this process, timed from the first post
  to each arrival: the last hop alone, without the stream and the fan-out.

(bench.realtime measures the fan-out alone, published -> `@connections`, without the sockets or
the outbox; this one is the path a user sees.) p50 and p99 over every delivery, and messages
delivered per second (deliveries divided by the time from the first send to the last arrival,
summed over the messages). The clients, the gateway and the stack share this process and the
machine's cores; the figures are for comparing, on one machine, in one run. Nothing here
asserts on time.
"""

from __future__ import annotations

import os

os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("COVENANT_HOP_RTT", "off")  # the mutation is sent to the primary anyway

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import boto3
from botocore.config import Config

from bench.bridge import BenchStack, local_stack
from covenant.config import env
from covenant.regions import load_regions, primary_region
from devstack.cognito import SEEDED_USERS
from devstack.realtime import fanout_loops
from devstack.runtime import thread_invoker
from devstack.stack import DevStack
from realtime import store

SUBSCRIBERS = (1, 100, 1000)
MESSAGES = 20
# Clients connecting at once: one per region keeps each region's realtime function at one or
# two warm environments; more make the local runtime start (and evict) environments, whose
# cold starts under load pass Lambda's 10 s init limit.
PARALLEL = 6
SUBPROTOCOL = "graphql-transport-ws"
SUBSCRIPTION = (
    "subscription ($filter: ProjectFilter) { projectChanged(filter: $filter) {"
    " eventId position action project { id name progress } } }"
)
CREATE = "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id } }"
UPDATE = (
    "mutation ($id: ID!, $input: UpdateProjectInput!) { updateProject(id: $id, input: $input) "
    "{ id } }"
)


def say(message: str = "") -> None:
    print(message, flush=True)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Round:
    """Arrivals of one message (the one whose text contains `key`) at every subscriber, each
    counted once: a late message of an earlier round is not this round's."""

    expected: int
    key: str
    started: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, at: float, text: str, subscriber: int) -> None:
        if self.key not in text or subscriber in self.seen:
            return
        self.seen.add(subscriber)
        self.arrivals.append(at)
        if not self.texts:
            self.texts.append(text)
        if len(self.arrivals) >= self.expected:
            self.done.set()


@dataclass
class Figures:
    latencies_ms: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    deliveries: int = 0
    missing: int = 0

    def add(self, round_: Round) -> None:
        self.latencies_ms += [(at - round_.started) * 1000 for at in round_.arrivals]
        if round_.arrivals:
            self.busy_s += max(round_.arrivals) - round_.started
        self.deliveries += len(round_.arrivals)
        self.missing += round_.expected - len(round_.arrivals)

    def line(self, name: str) -> str:
        if not self.latencies_ms:
            return f"  {name:<26} nothing delivered"
        ordered = sorted(self.latencies_ms)
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        rate = self.deliveries / self.busy_s if self.busy_s else 0.0
        lost = f", {self.missing} not delivered" if self.missing else ""
        return f"  {name:<26} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   {rate:9.0f} messages/s{lost}"


class Subscribers:
    """N graphql-transport-ws clients; every `next` message goes to the current round."""

    def __init__(self, session: aiohttp.ClientSession, base_ws: str) -> None:
        self.session = session
        self.base_ws = base_ws
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.current: Round | None = None
        self.retries = 0
        # What the server answered instead of serving: graphql-transport-ws `error`s, and
        # API Gateway's integration errors ({"message": "Internal server error"}, a timeout).
        self.errors: list[str] = []

    async def open(self, count: int, mark: str, parallel: int) -> None:
        """`parallel` clients at a time, each connecting, initialising and subscribing in
        turn as a graphql-ws client does: the realtime function's environments are busy
        with at most that many conversations (a connection_init queued past 10 s behind
        a thousand others would be closed, 4408)."""
        regions = [r.code for r in load_regions()]
        slots = asyncio.Semaphore(parallel)

        async def one(n: int) -> aiohttp.ClientWebSocketResponse:
            url = f"{self.base_ws}/{regions[n % len(regions)]}/graphql"
            async with slots:
                for _attempt in range(5):
                    try:
                        socket = await self.session.ws_connect(url, protocols=(SUBPROTOCOL,))
                    except aiohttp.WSServerHandshakeError:
                        # $connect failed (a cold start past Lambda's init limit under load).
                        self.retries += 1
                        await asyncio.sleep(1)
                        continue
                    await socket.send_str(json.dumps({"type": "connection_init", "payload": {}}))
                    ack = await socket.receive(timeout=120)
                    if ack.type == aiohttp.WSMsgType.TEXT and json.loads(ack.data).get("type") == (
                        "connection_ack"
                    ):
                        break
                    # Closed before the ack, or an integration error: connect again, as
                    # graphql-ws clients retry.
                    self.retries += 1
                    await socket.close()
                else:
                    raise RuntimeError(f"subscriber {n} was never acknowledged")
                await self.subscribe(socket, "1", mark)
                return socket

        self.sockets = list(await asyncio.gather(*(one(n) for n in range(count))))
        self.readers = [asyncio.create_task(self._read(s)) for s in self.sockets]

    @staticmethod
    async def subscribe(socket: aiohttp.ClientWebSocketResponse, sub_id: str, mark: str) -> None:
        await socket.send_json(
            {
                "id": sub_id,
                "type": "subscribe",
                "payload": {"query": SUBSCRIPTION, "variables": {"filter": {"nameContains": mark}}},
            }
        )

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            at = time.perf_counter()
            if '"next"' not in message.data:
                self.errors.append(message.data[:200])
            elif self.current is not None:
                self.current.arrived(at, message.data, id(socket))

    def open_count(self) -> int:
        """Subscribers still connected (the server may close one: docs/realtime.md)."""
        return sum(not socket.closed for socket in self.sockets)

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)
        self.sockets, self.readers = [], []


class Bench:
    def __init__(self, stack: DevStack, session: aiohttp.ClientSession, token: str) -> None:
        assert stack.gateway is not None
        self.stack = stack
        self.gateway = stack.gateway
        self.session = session
        self.token = token
        self.primary = primary_region().code

    async def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(
            f"{self.gateway.url}/{self.primary}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            body: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200 or body.get("errors"):
            raise RuntimeError(f"GraphQL {response.status}: {body}")
        return body

    async def full(
        self, subscribers: Subscribers, project: str, progress: int, timeout_s: float = 60
    ) -> Round:
        # Each message of a run has a progress of its own: its key.
        round_ = Round(subscribers.open_count(), f'"progress":{progress}}}')
        subscribers.current = round_
        round_.started = time.perf_counter()
        await self.graphql(UPDATE, {"id": project, "input": {"progress": progress}})
        await _wait(round_, timeout_s)
        return round_

    async def floor(self, subscribers: Subscribers, text: str) -> Round:
        """The same bytes to every open connection through `@connections`, at once."""
        # The same bytes, but for a fresh event id (as long as the other): this round's key.
        event_id = json.loads(text)["payload"]["data"]["projectChanged"]["eventId"]
        key = str(uuid.uuid4())[: len(event_id)].ljust(len(event_id), "0")
        round_ = Round(subscribers.open_count(), key)
        subscribers.current = round_
        connections = list(self.gateway.websockets.connections.values())
        data = text.replace(event_id, key).encode()
        round_.started = time.perf_counter()

        async def post(region: str, connection_id: str) -> None:
            url = f"{self.gateway.url}/{region}/@connections/{connection_id}"
            async with self.session.post(url, data=data) as response:
                await response.read()

        await asyncio.gather(*(post(c.region.code, c.id) for c in connections))
        await _wait(round_)
        return round_


async def _wait(round_: Round, timeout_s: float = 60) -> None:
    with contextlib.suppress(TimeoutError):  # what did not arrive is counted as not delivered
        await asyncio.wait_for(round_.done.wait(), timeout_s)


async def stored_subscriptions(expected: int, settle_s: float = 30) -> int:
    """Subscriptions in the six regions' stores (moto) once the last subscribes were handled
    (a `subscribe` is answered only by its first `next`): did every subscribe land?"""

    def count() -> int:
        # Its own clients: moto, busy with a thousand subscribers, may answer a scan slowly.
        return sum(
            item["item"]["S"].startswith("sub#")
            for region in load_regions()
            for item in store.Store(
                boto3.client(
                    "dynamodb",
                    region_name=region.aws_region,
                    endpoint_url=env("DYNAMODB_ENDPOINT_URL"),
                    aws_access_key_id="local",
                    aws_secret_access_key="local",
                    config=Config(read_timeout=120, retries={"max_attempts": 5}),
                )
            ).all_items()
        )

    deadline = time.monotonic() + settle_s
    found = await asyncio.to_thread(count)
    while found < expected and time.monotonic() < deadline:
        await asyncio.sleep(1)
        found = await asyncio.to_thread(count)
    return found


async def measure(
    stack: DevStack, counts: tuple[int, ...], messages: int, parallel: int = PARALLEL
) -> None:
    editor = next(u for u in SEEDED_USERS if u.group == "editor")
    assert stack.cognito is not None and stack.gateway is not None
    token = str(stack.cognito.login(editor.email, editor.password)["AccessToken"])
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        bench = Bench(stack, session, token)
        base_ws = stack.gateway.url.replace("http://", "ws://")
        for count in counts:
            mark = f"Realtime bench {uuid.uuid4().hex[:8]}"
            created = await bench.graphql(
                CREATE,
                {
                    "input": {
                        "name": mark,
                        "sectorId": "energy",
                        "countryCode": "KEN",
                        "budgetUsd": 1_000_000,
                    }
                },
            )
            project = created["data"]["createProject"]["id"]
            subscribers = Subscribers(session, base_ws)
            started = time.perf_counter()
            progress(f"{count}: connecting")
            await subscribers.open(count, mark, parallel)
            opened_s = time.perf_counter() - started
            stored = await stored_subscriptions(count)
            progress(f"{count}: subscribed in {opened_s:.1f} s, {stored} stored")
            # Until every subscription is served (the fan-out sees a new one on its next
            # batch); a subscriber still silent after a few changes subscribes once more (its
            # subscribe was lost: an integration error), as an application would.
            resubscribed = 0
            for attempt in range(30):
                warm = await bench.full(subscribers, project, attempt % 100, timeout_s=5)
                if len(warm.arrivals) == subscribers.open_count():
                    break
                if attempt == 3:
                    silent = [s for s in subscribers.sockets if id(s) not in warm.seen]
                    for socket in silent:
                        if not socket.closed:
                            await subscribers.subscribe(socket, "2", mark)
                    resubscribed = len(silent)
            full, floor = Figures(), Figures()
            for n in range(messages):
                progress(f"{count}: message {n + 1}/{messages}")
                delivered = await bench.full(subscribers, project, (n + 31) % 100)
                full.add(delivered)
                if delivered.texts:
                    floor.add(await bench.floor(subscribers, delivered.texts[0]))
            closed = len(subscribers.sockets) - subscribers.open_count()
            await subscribers.close()
            say(
                f"{count} subscriber(s) over six regions ({messages} messages; connected and "
                f"subscribed in {opened_s:.1f} s, {parallel} at a time: {subscribers.retries} "
                f"reconnect(s), {stored} of {count} subscriptions stored, {resubscribed} "
                f"subscribed again, {len(subscribers.errors)} error message(s); {closed} closed "
                "by the server during the run)"
            )
            for text in sorted(set(subscribers.errors))[:5]:
                progress(f"  server said: {text}")
            say(full.line("commit -> delivered"))
            say(floor.line("floor: @connections push"))


class FanOutStack(BenchStack):
    """The bench's stack with the real-time fan-out running, as `make dev` runs it (the other
    JetStream consumers stay off: they would take the cores from the path measured)."""

    def _start_consumers(self) -> None:
        assert self.runtime is not None
        self.fanouts = fanout_loops(thread_invoker(self.runtime))
        for loop in self.fanouts:
            loop.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime_e2e", description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+", default=list(SUBSCRIBERS))
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument(
        "--parallel", type=int, default=PARALLEL, help="clients connecting at a time"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    say(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    with local_stack(stack_class=FanOutStack) as stack:
        asyncio.run(measure(stack, tuple(args.subscribers), args.messages, args.parallel))


if __name__ == "__main__":
    main()

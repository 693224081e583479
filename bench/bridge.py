"""The event bridge benchmark: `.venv/bin/python -m bench.bridge` from the repository root.

It starts the local stack as `make dev` does (PostgreSQL primary + streaming replica, nats-server
with the JetStream topology, moto for SQS and Cognito, the gateway, the bridge's SQS event
source and schedule) in a temporary folder on free ports, then measures:

1. Throughput. 50 000 outbox events (25 000 mutations' covenant + audit events over 5 000
   projects, interleaved, payloads shaped like the GraphQL function's) forwarded end to end by
   the bridge Lambda's handler invoked as the schedule invokes it: read from the outbox,
   published with acknowledgements, marked published. Side by side, on the same payloads:
   - the ceiling: nats-py `publish_async` of every event, then waiting for every ack, and
     nothing else (no database);
   - the naive path: one awaited `js.publish` per event.
   Rounds alternate the three; every round uses fresh event ids (JetStream's duplicate window
   would drop a repeated id) and purged streams. Events per second, median of the rounds.
2. Latency. A steady load of `updateProject` mutations through the local gateway (an editor's
   token from the local user pool), the bridge woken through SQS as in `make dev`: for every
   event, from the moment it was written to the outbox (its transaction's last statement, the
   commit follows) to the moment JetStream stored it (the stream's own timestamp, taken before
   the acknowledgement), p50 and p99.

With `--cluster` it then does the same against a three-node JetStream cluster with R3 streams
(`COVENANT_NATS_NODES=3 make dev`'s, NATS_URL listing the three nodes) and prints the two side
by side: every store there is replicated to a second node before it is acknowledged.

`--batch-sizes 500,10000` also runs the bridge with each of those BRIDGE_BATCH_SIZE values in
every round (fresh events each), so settings compare in the same rounds; every round prints
each path's ratio to that round's ceiling. The JetStream consumers and the real-time fan-out do
not run (they would pull what each path publishes, on the same cores).

It measures only; nothing here asserts on time. The relay settings are the bridge's defaults
unless BRIDGE_* variables say otherwise.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script, this folder would be sys.path[0] and this file would shadow `bridge`.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# Before Powertools is imported: no EMF metric blobs or INFO lines between the figures.
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

import nats
from nats.js import JetStreamContext

from bridge import connection, relay
from bridge.publisher import JetStreamPublisher
from bridge.service import BridgeSettings
from covenant import db
from covenant.config import environment
from covenant.events import CloudEvent, event_source
from covenant.regions import primary_region
from covenant.streams import STREAMS, server_urls
from devstack.cognito import SEEDED_USERS
from devstack.event_sources import BackgroundTriggers, scheduled_event
from devstack.functions import get_function, invoke
from devstack.nats import NatsCluster
from devstack.processes import free_port
from devstack.stack import DevStack, StackOptions

EVENTS = 50_000
PROJECTS = 5_000
ROUNDS = 3
TARGET_OF_CEILING = 0.9
TARGET_OVER_NAIVE = 4.0
REGION = "ams"
STREAM_NAMES = tuple(spec.name for spec in STREAMS)

CREATE = "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id version } }"
UPDATE = (
    "mutation ($id: ID!, $input: UpdateProjectInput!) { updateProject(id: $id, input: $input) "
    "{ id version } }"
)

Message = tuple[str, bytes, str]  # subject, payload, Nats-Msg-Id


_OUT = sys.stdout  # the figures; the functions' own prints go elsewhere (see main)


def say(message: str = "") -> None:
    print(message, file=_OUT, flush=True)


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


class BenchStack(DevStack):
    """`make dev`'s stack, without the GraphiQL assets (nothing here opens the explorer) and
    without the JetStream consumers and the real-time fan-out: they pull what each path
    publishes, so they took the two cores from whichever path ran next (bench.consumers
    measures them); a cluster's nodes on free ports (make dev's are consecutive from 4222)."""

    def _explorer_assets(self) -> Path | None:
        return None

    def _start_consumers(self) -> None:
        pass

    def _nats_cluster(self, nodes: int) -> NatsCluster:
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        return NatsCluster(self.options.data_dir / "nats-cluster", nodes, 0, 0, 0, ports=ports)


@contextlib.contextmanager
def local_stack(
    nats_nodes: int = 1, stack_class: type[BenchStack] = BenchStack
) -> Iterator[BenchStack]:
    """A stack of `stack_class` (BenchStack, or a subclass that starts what its bench needs)."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-bench-bridge-"))
    data_dir.chmod(0o755)  # the servers run as an unprivileged user when this runs as root
    options = StackOptions.isolated(data_dir, nats_nodes=nats_nodes)
    stack = stack_class(options)
    try:
        stack.start()
        with environment(stack.endpoints):
            yield stack
    finally:
        # The bridge's connection lives on the bridge's own loop, as in Lambda.
        loop = connection.event_loop()
        loop.run_until_complete(connection.reset())
        loop.close()
        db.close_all()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def pause_triggers(stack: DevStack) -> BackgroundTriggers:
    """Stops the bridge's SQS event source and schedule; returns them for resume_triggers."""
    triggers = stack.triggers
    assert triggers is not None
    triggers.stop()
    return triggers


def resume_triggers(stack: DevStack, paused: BackgroundTriggers) -> None:
    stack.triggers = BackgroundTriggers(paused.source, paused.schedule_every_s)
    stack.triggers.start()


@dataclass
class Gateway:
    url: str
    token: str

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/{REGION}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/graphql-response+json",
                "Authorization": f"Bearer {self.token}",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    def create_project(self, name: str) -> str:
        data = self.graphql(
            CREATE,
            {
                "input": {
                    "name": name,
                    "sectorId": "energy",
                    "countryCode": "KEN",
                    "budgetUsd": 5_000_000,
                }
            },
        )
        project_id: str = data["createProject"]["id"]
        return project_id

    def update_project(self, project_id: str, progress: int) -> None:
        self.graphql(UPDATE, {"id": project_id, "input": {"progress": progress}})


def editor_gateway(stack: DevStack) -> Gateway:
    assert stack.gateway is not None and stack.cognito is not None
    editor = next(user for user in SEEDED_USERS if user.group == "editor")
    token = str(stack.cognito.login(editor.email, editor.password)["AccessToken"])
    return Gateway(stack.gateway.url, token)


# --------------------------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------------------------


def mark_everything_published() -> None:
    with db.writer().session() as session:
        seqs = [int(row[0]) for row in session.run("SELECT seq FROM outbox_pending")]
    relay.mark_published(db.writer(), seqs)


def event_templates(gateway: Gateway) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data of a real updateProject's covenant and audit events."""
    project = gateway.create_project("Bridge Bench Template Grid")
    gateway.update_project(project, 42)
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT subject, payload::text AS payload FROM outbox "
            "WHERE aggregate_id = :id AND subject LIKE '%.updated' ORDER BY seq",
            id=project,
        )
    data = {row["subject"].split(".")[0]: json.loads(row["payload"])["data"] for row in rows}
    return data["covenant"], data["audit"]


_INSERT = """
INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload)
SELECT u.id, u.subject, 'project', u.aggregate, CAST(u.payload AS jsonb)
FROM unnest(CAST(:ids AS uuid[]), CAST(:subjects AS text[]), CAST(:aggregates AS text[]),
            CAST(:payloads AS text[])) WITH ORDINALITY AS u(id, subject, aggregate, payload, n)
ORDER BY u.n
"""


def fill_outbox(count: int, templates: tuple[dict[str, Any], dict[str, Any]]) -> list[str]:
    """`count` events of count/2 updateProject mutations over PROJECTS projects, interleaved
    as concurrent users would commit them; returns the event ids in commit order."""
    covenant, audit = templates
    projects = [str(uuid.uuid4()) for _ in range(PROJECTS)]
    mutations = [projects[n % PROJECTS] for n in range(count // 2)]
    random.Random(7).shuffle(mutations)
    source = event_source(REGION, "graphql")
    rows: list[tuple[str, str, str, str]] = []
    for project in mutations:
        for kind, data in (("covenant", covenant), ("audit", audit)):
            if kind == "covenant":
                data = {"project": {**data["project"], "id": project}}
            event = CloudEvent(
                type=f"{kind}.projects.updated",
                source=source,
                subject=f"projects/{project}",
                data=data,
            )
            rows.append((event.id, event.type, project, event.to_json()))
    with db.writer().session() as session:
        for start in range(0, len(rows), 5000):
            chunk = rows[start : start + 5000]
            session.run(
                _INSERT,
                ids=[r[0] for r in chunk],
                subjects=[r[1] for r in chunk],
                aggregates=[r[2] for r in chunk],
                payloads=[r[3] for r in chunk],
            )
        session.run("VACUUM (ANALYZE) outbox, outbox_pending")
    return [r[0] for r in rows]


def outbox_messages(event_ids: list[str]) -> list[tuple[str, bytes]]:
    """The events as the relay sends them: subject, payload text."""
    with db.writer().session() as session:
        rows = session.run(
            "SELECT subject, payload::text FROM outbox WHERE id = ANY(CAST(:ids AS uuid[])) "
            "ORDER BY seq",
            ids=event_ids,
        )
    return [(subject, payload.encode("utf-8")) for subject, payload in rows]


def with_fresh_ids(messages: list[tuple[str, bytes]]) -> list[Message]:
    """The messages under new ids: the stream's duplicate window remembers every id it saw."""
    return [(subject, payload, str(uuid.uuid4())) for subject, payload in messages]


def outbox_order(event_ids: list[str]) -> dict[str, tuple[int, str]]:
    with db.writer().session() as session:
        rows = session.run(
            "SELECT o.id::text, o.seq, o.aggregate_id, p.seq IS NULL FROM outbox AS o "
            "LEFT JOIN outbox_pending AS p ON p.seq = o.seq "
            "WHERE o.id = ANY(CAST(:ids AS uuid[]))",
            ids=event_ids,
        )
    unpublished = [row[0] for row in rows if not row[3]]
    if unpublished:
        raise RuntimeError(f"{len(unpublished)} events left unpublished")
    return {row[0]: (row[1], row[2]) for row in rows}


# --------------------------------------------------------------------------------------------
# JetStream
# --------------------------------------------------------------------------------------------


async def _purge(url: str) -> None:
    client = await nats.connect(server_urls(url))
    try:
        js = client.jetstream()
        for name in STREAM_NAMES:
            await js.purge_stream(name)
    finally:
        await client.close()


async def _stored_count(url: str) -> int:
    client = await nats.connect(server_urls(url))
    try:
        js = client.jetstream()
        return sum([(await js.stream_info(name)).state.messages for name in STREAM_NAMES])
    finally:
        await client.close()


@dataclass(frozen=True)
class Stored:
    stream: str
    seq: int
    msg_id: str
    time: datetime


async def _stored_messages(url: str, first_seqs: dict[str, int]) -> list[Stored]:
    """Every message stored after `first_seqs` (per stream), read in stream order."""
    client = await nats.connect(server_urls(url))
    try:
        js = client.jetstream()
        found: list[Stored] = []
        for name in STREAM_NAMES:
            state = (await js.stream_info(name)).state
            start = max(first_seqs.get(name, 1), state.first_seq)
            if not state.messages or start > state.last_seq:
                continue
            found.extend(await _read_stream(js, name, start, state.last_seq))
        return found
    finally:
        await client.close()


async def _read_stream(js: JetStreamContext, stream: str, first: int, last: int) -> list[Stored]:
    """Gets from the stream's leader (a replica answering a direct get may not have stored the
    last messages yet), a thousand in flight at a time."""
    found: list[Stored] = []
    for start in range(first, last + 1, 1000):
        seqs = range(start, min(last, start + 999) + 1)
        replies = await asyncio.gather(*(js.get_msg(stream, seq) for seq in seqs))
        for reply in replies:
            assert reply.seq is not None and reply.time is not None
            found.append(
                Stored(stream, reply.seq, (reply.headers or {}).get("Nats-Msg-Id", ""), reply.time)
            )
    return found


async def _last_seqs(url: str) -> dict[str, int]:
    client = await nats.connect(server_urls(url))
    try:
        js = client.jetstream()
        return {name: (await js.stream_info(name)).state.last_seq for name in STREAM_NAMES}
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# Throughput: the three ways to forward the same events
# --------------------------------------------------------------------------------------------


async def _ceiling(url: str, messages: list[Message]) -> float:
    # The bridge's client settings (connection.py): no client-side subject validation.
    client = await nats.connect(server_urls(url), skip_subject_validation=True)
    try:
        js = client.jetstream(publish_async_max_pending=len(messages))
        started = time.perf_counter()
        futures = [
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            for subject, payload, msg_id in messages
        ]
        await js.publish_async_completed()
        elapsed = time.perf_counter() - started
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"ceiling: {len(failed)} publishes failed, e.g. {failed[0]}")
        return elapsed
    finally:
        await client.close()


async def _publisher_only(url: str, messages: list[Message]) -> float:
    """The bridge's own publisher (bridge.publisher.JetStreamPublisher), nothing else."""
    client = await nats.connect(server_urls(url), skip_subject_validation=True)
    try:
        publisher = JetStreamPublisher(client)
        await publisher.start()
        failures: list[BaseException] = []
        waiting = len(messages)
        done = asyncio.Event()

        def on_settled(error: BaseException | None) -> None:
            nonlocal waiting
            if error is not None:
                failures.append(error)
            waiting -= 1
            if not waiting:
                done.set()

        started = time.perf_counter()
        for subject, payload, msg_id in messages:
            await publisher.publish(subject, payload, msg_id, on_settled)
        await done.wait()
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"publisher: {len(failures)} publishes failed, e.g. {failures[0]}")
        return elapsed
    finally:
        await client.close()


async def _naive(url: str, messages: list[Message]) -> float:
    client = await nats.connect(server_urls(url), skip_subject_validation=True)
    try:
        js = client.jetstream()
        started = time.perf_counter()
        for subject, payload, msg_id in messages:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        return time.perf_counter() - started
    finally:
        await client.close()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s(stack: DevStack) -> float:
    """CPU seconds used so far by the PostgreSQL primary and its replica: each postmaster and
    its children (backends, WAL writer, walsender, the replica's startup process replaying the
    WAL, ...), from /proc."""
    assert stack.postgres is not None
    postmasters = {
        int((stack.postgres.data_dir / server / "postmaster.pid").read_text().split()[0])
        for server in ("primary", "replica")
    }
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(entry.name) in postmasters or int(fields[1]) in postmasters:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _CLOCK_TICKS


def _relay(endpoints: dict[str, str], expected: int, batch_size: int | None = None) -> float:
    """The bridge handler, invoked as the schedule invokes it, until the outbox is drained."""
    bridge = get_function("bridge")
    settings = {**endpoints, "BRIDGE_SWEEP_MIN_AGE_S": "0"}
    if batch_size is not None:
        settings["BRIDGE_BATCH_SIZE"] = str(batch_size)
    published = 0
    started = time.perf_counter()
    while published < expected:
        response = invoke(
            bridge, primary_region(), scheduled_event(primary_region().aws_region), settings
        )
        if not response["published"]:
            raise RuntimeError(f"the bridge stopped after {published} events: {response}")
        published += response["published"]
    elapsed = time.perf_counter() - started
    if published != expected:
        raise RuntimeError(f"the bridge published {published} events, {expected} expected")
    return elapsed


def _check_relayed(url: str, event_ids: list[str]) -> None:
    """Every event in the stream exactly once, each project's in commit order."""
    stored = asyncio.run(_stored_messages(url, {}))
    counts = Counter(s.msg_id for s in stored)
    if counts != Counter(event_ids):
        raise RuntimeError("the stream does not hold exactly the relayed events")
    order = outbox_order(event_ids)
    last: dict[tuple[str, str], int] = {}
    for message in sorted(stored, key=lambda s: (s.stream, s.seq)):
        seq, aggregate = order[message.msg_id]
        key = (message.stream, aggregate)
        if last.get(key, 0) > seq:
            raise RuntimeError(f"events of project {aggregate} out of commit order")
        last[key] = seq


@dataclass
class Rates:
    ceiling: list[float]
    relay: list[float]
    naive: list[float]
    publisher: list[float]
    # PostgreSQL's CPU seconds (primary and replica) while the bridge ran, and until the
    # replica had replayed its WAL, per 50 000 events
    postgres_cpu: list[float] = field(default_factory=list)
    # --batch-sizes: the bridge with each other batch size, in the same rounds
    other_batches: dict[int, list[float]] = field(default_factory=dict)


def throughput(
    stack: DevStack, gateway: Gateway, count: int, rounds: int, other_batches: list[int]
) -> Rates:
    nats_url = stack.endpoints["NATS_URL"]
    templates = event_templates(gateway)
    mark_everything_published()
    # A warm bridge (its connection open), as it is between wake-ups.
    _relay_warmup(stack.endpoints)
    rates = Rates([], [], [], [], other_batches={size: [] for size in other_batches})
    for n in range(1, rounds + 1):
        asyncio.run(_purge(nats_url))
        event_ids = fill_outbox(count, templates)
        messages = outbox_messages(event_ids)
        size = sum(len(payload) for _, payload in messages) / len(messages)
        say(f"  round {n}: {count:,} events, {size:.0f} bytes on average")

        elapsed = asyncio.run(_ceiling(nats_url, with_fresh_ids(messages)))
        _expect_stored(nats_url, count, "ceiling")
        rates.ceiling.append(count / elapsed)
        asyncio.run(_purge(nats_url))

        cpu = postgres_cpu_s(stack)
        elapsed = _relay(stack.endpoints, count)
        _wait_for_replay()
        rates.postgres_cpu.append((postgres_cpu_s(stack) - cpu) * EVENTS / count)
        _expect_stored(nats_url, count, "bridge")
        _check_relayed(nats_url, event_ids)
        rates.relay.append(count / elapsed)
        asyncio.run(_purge(nats_url))

        for size, runs in rates.other_batches.items():
            event_ids = fill_outbox(count, templates)
            elapsed = _relay(stack.endpoints, count, size)
            _expect_stored(nats_url, count, f"bridge, batches of {size}")
            _check_relayed(nats_url, event_ids)
            runs.append(count / elapsed)
            asyncio.run(_purge(nats_url))

        elapsed = asyncio.run(_naive(nats_url, with_fresh_ids(messages)))
        _expect_stored(nats_url, count, "naive")
        rates.naive.append(count / elapsed)
        asyncio.run(_purge(nats_url))

        elapsed = asyncio.run(_publisher_only(nats_url, with_fresh_ids(messages)))
        _expect_stored(nats_url, count, "bridge publisher")
        rates.publisher.append(count / elapsed)
        ceiling = rates.ceiling[-1]
        say(
            f"    ceiling {ceiling:>7,.0f}/s   bridge {rates.relay[-1]:>7,.0f}/s "
            f"({rates.relay[-1] / ceiling:.2f}x)   naive {rates.naive[-1]:>7,.0f}/s   "
            f"bridge publisher alone {rates.publisher[-1]:>7,.0f}/s   "
            f"PostgreSQL during the bridge {rates.postgres_cpu[-1]:.2f} CPU-s per {EVENTS:,}"
            + "".join(
                f"   bridge, batches of {size}: {runs[-1]:>7,.0f}/s ({runs[-1] / ceiling:.2f}x)"
                for size, runs in rates.other_batches.items()
            )
        )
    return rates


def _wait_for_replay(timeout_s: float = 30.0) -> None:
    """Until the replica has replayed everything the primary wrote (its share of the marks)."""
    deadline = time.monotonic() + timeout_s
    with db.writer().session() as session:
        while not session.scalar(
            "SELECT COALESCE(bool_and(replay_lsn >= pg_current_wal_lsn()), true) "
            "FROM pg_stat_replication"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica is still replaying after {timeout_s:g} s")
            time.sleep(0.05)


def _relay_warmup(endpoints: dict[str, str]) -> None:
    bridge = get_function("bridge")
    invoke(bridge, primary_region(), scheduled_event(primary_region().aws_region), endpoints)


def _expect_stored(url: str, count: int, what: str) -> None:
    stored = asyncio.run(_stored_count(url))
    if stored != count:
        raise RuntimeError(f"{what}: {stored} messages stored, {count} expected")


# --------------------------------------------------------------------------------------------
# Latency: mutation commit to the event stored in its stream
# --------------------------------------------------------------------------------------------


def inserted_since(since: float) -> dict[str, float]:
    """When each outbox event written since `since` (epoch seconds) was inserted: the outbox's
    created_at is clock_timestamp() at the INSERT, the transaction's last statement, so its
    commit follows within a millisecond or two. (The functions run in processes of their own
    behind the local runtime: a hook on the unit of work here would see none of their
    commits.)"""
    with db.writer().session() as session:
        rows = session.run(
            "SELECT id::text, EXTRACT(EPOCH FROM created_at)::float8 FROM outbox "
            "WHERE created_at >= to_timestamp(:since)",
            since=since,
        )
    return {row[0]: float(row[1]) for row in rows}


@dataclass
class Latency:
    mutations: int
    events: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(stack: DevStack, gateway: Gateway, rate: float, duration_s: float) -> Latency:
    nats_url = stack.endpoints["NATS_URL"]
    projects = [gateway.create_project(f"Bridge Bench Grid {n}") for n in range(50)]
    _wait_until_published(30)
    first_seqs = {name: seq + 1 for name, seq in asyncio.run(_last_seqs(nats_url)).items()}
    total = int(rate * duration_s)
    interval = 1.0 / rate
    load_started = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        started = time.perf_counter()
        futures = []
        for n in range(total):
            # Open loop: requests leave on schedule whatever the previous ones are doing.
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            # Each update of a project moves its progress on: no update is a no-op.
            project, step = projects[n % len(projects)], n // len(projects)
            futures.append(pool.submit(gateway.update_project, project, 1 + step % 99))
        for future in futures:
            future.result()
        achieved = total / (time.perf_counter() - started)
        _wait_until_published(30)
    stored = asyncio.run(_stored_messages(nats_url, first_seqs))
    committed = inserted_since(load_started)
    counts = Counter(s.msg_id for s in stored)
    if counts != Counter(committed.keys()):
        missing = len(committed.keys() - counts.keys())
        unexpected = len(counts.keys() - committed.keys())
        twice = sum(1 for n in counts.values() if n > 1)
        raise RuntimeError(
            f"the streams do not hold exactly the events of the load: {missing} missing, "
            f"{unexpected} unexpected, {twice} twice"
        )
    delays = sorted((s.time.timestamp() - committed[s.msg_id]) * 1000 for s in stored)
    return Latency(
        mutations=total,
        events=len(delays),
        rate=achieved,
        p50_ms=statistics.median(delays),
        p99_ms=delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))],
        max_ms=delays[-1],
    )


def _wait_until_published(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with db.writer().session() as session:
            waiting = session.scalar(
                "SELECT count(*) FROM outbox_pending AS p JOIN outbox AS o ON o.seq = p.seq "
                "WHERE o.dead_at IS NULL"
            )
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{waiting} events still unpublished after {timeout_s:g} s")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    rates: Rates
    latency: Latency | None


def measure(nodes: int, args: argparse.Namespace) -> Section:
    title = "one nats-server, R1" if nodes == 1 else f"{nodes}-node cluster, R{nodes}"
    say(f"Starting the local stack (as make dev, {title}) ...")
    # Powertools prints EMF blobs even with POWERTOOLS_METRICS_DISABLED (the cold-start metric,
    # and every 100th value, since a disabled flush never clears them): not between the figures.
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        local_stack(nodes) as stack,
    ):
        gateway = editor_gateway(stack)
        paused = pause_triggers(stack)
        settings = BridgeSettings.load().relay
        say(
            f"\nThroughput ({title}): outbox -> JetStream with acks -> marked published "
            f"(batches of {settings.batch_size}, {settings.batches_per_pass} per pass)"
        )
        rates = throughput(stack, gateway, args.events, args.rounds, args.batch_sizes)
        resume_triggers(stack, paused)
        measured = None
        if args.duration > 0:
            say(
                f"\nLatency ({title}): {args.rate:g} mutations/s through the gateway for "
                f"{args.duration:g} s"
            )
            measured = latency(stack, gateway, args.rate, args.duration)
    return Section(title, rates, measured)


def _medians(rates: Rates) -> tuple[float, float, float, float]:
    ceiling, relay, naive, publisher = (
        statistics.median(runs)
        for runs in (rates.ceiling, rates.relay, rates.naive, rates.publisher)
    )
    return ceiling, relay, naive, publisher


def report(section: Section) -> None:
    rates = section.rates
    ceiling, relay, naive, publisher = _medians(rates)
    say("")
    say(f"{section.title}:")
    say(f"{'path':<50}{'events/s (median)':>18}{'runs':>28}")
    for name, median, runs in (
        ("ceiling: nats-py publish_async only", ceiling, rates.ceiling),
        ("bridge: outbox -> acks -> marked published", relay, rates.relay),
        ("naive: one awaited js.publish per event", naive, rates.naive),
        ("(the bridge's JetStreamPublisher alone, no db)", publisher, rates.publisher),
    ):
        say(f"{name:<50}{median:>18,.0f}{', '.join(f'{r:,.0f}' for r in runs):>28}")
    for size, runs in rates.other_batches.items():
        name = f"bridge, batches of {size}"
        say(
            f"{name:<50}{statistics.median(runs):>18,.0f}{', '.join(f'{r:,.0f}' for r in runs):>28}"
        )
    say("")
    ratios = [r / c for r, c in zip(rates.relay, rates.ceiling, strict=True)]
    say(
        f"bridge / ceiling per round: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f})"
    )
    for size, runs in rates.other_batches.items():
        per_round = ", ".join(f"{r / c:.2f}" for r, c in zip(runs, rates.ceiling, strict=True))
        median = statistics.median(r / c for r, c in zip(runs, rates.ceiling, strict=True))
        say(f"bridge, batches of {size} / ceiling per round: {per_round} (median {median:.2f})")
    say(
        f"PostgreSQL CPU-s per {EVENTS:,} events relayed (primary + replica) per round: "
        f"{', '.join(f'{c:.2f}' for c in rates.postgres_cpu)} "
        f"(median {statistics.median(rates.postgres_cpu):.2f})"
    )
    say(
        f"bridge / ceiling = {relay / ceiling:.2f} (target >= {TARGET_OF_CEILING}): "
        f"{'met' if relay / ceiling >= TARGET_OF_CEILING else 'NOT met'}"
    )
    say(
        f"bridge / naive   = {relay / naive:.2f} (target >= {TARGET_OVER_NAIVE}): "
        f"{'met' if relay / naive >= TARGET_OVER_NAIVE else 'NOT met'}"
    )
    measured = section.latency
    if measured is not None:
        say("")
        say(
            f"written -> stored in stream: p50 {measured.p50_ms:.1f} ms, "
            f"p99 {measured.p99_ms:.1f} ms, max {measured.max_ms:.1f} ms ({measured.events} "
            f"events of {measured.mutations} mutations at {measured.rate:.1f}/s)"
        )


def compare(single: Section, cluster: Section) -> None:
    """The two side by side: events/s (median) on one node and on the cluster."""
    say("")
    say(f"{'path (events/s, median)':<50}{single.title:>22}{cluster.title:>22}")
    names = (
        "ceiling: nats-py publish_async only",
        "bridge: outbox -> acks -> marked published",
        "naive: one awaited js.publish per event",
        "(the bridge's JetStreamPublisher alone, no db)",
    )
    for name, one, three in zip(
        names, _medians(single.rates), _medians(cluster.rates), strict=True
    ):
        say(f"{name:<50}{one:>22,.0f}{three:>22,.0f}")
    ratios = [
        relay / ceiling for ceiling, relay, *_ in (_medians(single.rates), _medians(cluster.rates))
    ]
    say(f"{'bridge / ceiling':<50}{ratios[0]:>22.2f}{ratios[1]:>22.2f}")
    if single.latency is not None and cluster.latency is not None:
        say(
            f"{'written -> stored, p50 / p99 (ms)':<50}"
            f"{f'{single.latency.p50_ms:.1f} / {single.latency.p99_ms:.1f}':>22}"
            f"{f'{cluster.latency.p50_ms:.1f} / {cluster.latency.p99_ms:.1f}':>22}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--rate", type=float, default=20.0, help="mutations per second")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of steady load (0: no latency)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[],
        help="comma-separated BRIDGE_BATCH_SIZE values the bridge also runs with, every round",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="then the same against a three-node JetStream cluster (R3), side by side",
    )
    args = parser.parse_args(argv)

    # A Lambda invocation that adds no metric makes Powertools warn; not between the figures.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    single = measure(1, args)
    report(single)
    if args.cluster:
        say("")
        cluster = measure(3, args)
        report(cluster)
        compare(single, cluster)


if __name__ == "__main__":
    main()

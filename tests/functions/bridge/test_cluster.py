"""The bridge against a real three-node JetStream cluster with R3 streams, as production runs
it (one cluster for the module, `nats_cluster`; NATS_URL lists its three nodes):

- the leader of COVENANT killed with SIGKILL while mutations commit and the bridge relays;
- quorum lost: two of the three nodes stopped (a follower cleanly, the leader killed), then
  restarted;
- the topology on the cluster: R1 -> R3 in place, never R3 -> R1 unasked (as `make dev`
  applies it, through the jetstream function).

Every committed event ends in its stream exactly once, each project's in commit order, no
mutation sees an error, nothing counts an attempt, and a leaderless stream is reported as one
(`StreamLeaderless`), not as a missing one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import ServiceUnavailableError

from covenant.config import environment
from devstack.nats import NatsServer
from devstack.processes import wait_until
from jetstream import handler as jetstream

UPDATE_PROJECT = """
mutation ($id: ID!, $input: UpdateProjectInput!) {
  updateProject(id: $id, input: $input) { id version }
}
"""
RATE_PER_S = 20  # mutations per second, as the outside run drove it
PRIMARY = "iad"


class _Schedule:
    """The bridge's schedule, every 0.1 s, in the background (one invocation at a time, on
    the bridge's own event loop, as one warm execution environment runs them)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.results: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-schedule", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(self.env.sweep())
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
                return
            self._stop.wait(0.1)

    @contextmanager
    def running(self) -> Iterator[_Schedule]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "the bridge's schedule did not stop"


def _mutate(gql: Any, projects: list[str], seconds: float, faults: dict[float, Callable[[], None]]):
    """updateProject at RATE_PER_S for `seconds` on the primary, each asserted to succeed (gql
    fails the test on any error), with each fault run once at its second; returns the count."""
    due = sorted(faults.items())
    started = time.monotonic()
    count = 0
    while (elapsed := time.monotonic() - started) < seconds:
        while due and due[0][0] <= elapsed:
            due.pop(0)[1]()
        gql(
            UPDATE_PROJECT,
            {"id": projects[count % len(projects)], "input": {"budgetUsd": 1_000_000 + count}},
            region=PRIMARY,
        )
        count += 1
        pause = started + count / RATE_PER_S - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    for _, fault in due:
        fault()
    return count


def _leader(env: Any, stream: str = "COVENANT", timeout_s: float = 30) -> str:
    """The server name of the stream's leader, once it has one."""

    async def leader(js: Any) -> str:
        info = await asyncio.wait_for(js.stream_info(stream), 2)
        return str(info.cluster.leader or "") if info.cluster else ""

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            name = env.jetstream(leader)
        except Exception:
            name = ""
        if name:
            return name
        assert time.monotonic() < deadline, f"{stream} elected no leader in {timeout_s:g} s"
        time.sleep(0.2)


def _drain(env: Any, projects: list[str], timeout_s: float = 45) -> list[dict[str, Any]]:
    """Sweeps until every event of these projects is published; their outbox rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = env.events_of(projects)
        if all(e["published_at"] is not None for e in events):
            return events
        assert time.monotonic() < deadline, "events still unpublished after the fault"
        env.sweep()
        time.sleep(0.2)


def _node_states(env: Any) -> list[str]:
    """Each node's own view of each stream (its monitoring endpoint): for a failure's message."""
    states: list[str] = []
    for node in env.nats_server.nodes:
        url = f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                data = json.loads(answer.read())
        except OSError as exc:
            states.append(f"{node.name}: {exc}")
            continue
        for account in data.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                state, cluster = stream["state"], stream.get("cluster") or {}
                states.append(
                    f"{node.name} {stream['name']}: {state['messages']} messages, seq "
                    f"{state['first_seq']}..{state['last_seq']}, leader {cluster.get('leader')}"
                )
    return states


def _stored_ids(env: Any, stream: str, expected: Counter[str], events: list[dict[str, Any]]):
    """The stream's ids once they match `expected`, reading again for up to 10 s (a leader
    elected a moment ago may still be applying what was committed); a mismatch that lasts
    fails with the missing events' outbox rows and every node's view of the stream."""

    def read() -> Counter[str] | None:  # this test's events only: the streams are not purged
        try:
            return Counter({i: n for i, n in env.stream_ids(stream).items() if i in expected})
        except ServiceUnavailableError:  # 503: the cluster is still electing its meta leader
            return None

    deadline = time.monotonic() + 10
    while (stored := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored is not None, f"{stream}: JetStream still unavailable 10 s after the drain"
    if stored != expected:
        rows = {e["id"]: e for e in events}
        missing = [
            (rows[i]["seq"], str(rows[i]["published_at"])) for i in expected if i not in stored
        ]
        twice = [i for i in stored if stored[i] > 1]
        raise AssertionError(
            f"{stream}: {len(missing)} committed events missing, {len(twice)} twice; missing (outbox seq, published_at): {sorted(missing)[:20]}; nodes: "
            f"{_node_states(env)}"
        )
    return stored


def _assert_each_event_once_in_order(env: Any, events: list[dict[str, Any]]) -> None:
    assert all(e["dead_at"] is None and e["attempts"] == 0 for e in events), [
        e for e in events if e["dead_at"] is not None or e["attempts"]
    ]
    covenant = Counter(e["id"] for e in events if e["subject"].startswith("covenant."))
    audit = Counter(e["id"] for e in events if e["subject"].startswith("audit."))
    _stored_ids(env, "COVENANT", covenant, events)
    _stored_ids(env, "AUDIT", audit, events)
    assert env.order_violations(events) == []


def _wait_cluster_whole(env: Any) -> None:
    for node in env.nats_server.nodes:
        if not node.running:
            node.start(wait=False)
    for node in env.nats_server.nodes:
        node.wait_healthy(30, cluster=True)


def _context() -> SimpleNamespace:
    return SimpleNamespace(
        function_name="covenant-iad-jetstream",
        memory_limit_in_mb=256,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:jetstream",
        aws_request_id="request-1",
        get_remaining_time_in_millis=lambda: 60_000,
    )


def test_the_topology_goes_r1_to_r3_in_place_and_never_back_unasked(cluster_env) -> None:
    """`make dev` applies through the jetstream function: with one replica against this R3
    cluster (the old hard-coded default) it must refuse, not scale down."""

    async def drop_alerts(js: Any) -> None:
        await js.delete_stream("ALERTS")

    cluster_env.jetstream(drop_alerts)
    with environment(cluster_env.admin_endpoints(NATS_REPLICAS="1")):
        event = {"RequestType": "Create", "ResourceProperties": {}}
        with pytest.raises(jetstream.TopologyRefused) as refused:
            jetstream.handler(event, _context())
    assert "stream COVENANT: refused (it has 3 replicas" in str(refused.value)
    assert "consumer ANALYTICS on COVENANT: refused (it has 3 replicas" in str(refused.value)

    async def replicas(js: Any) -> dict[str, int]:
        return {
            name: (await js.stream_info(name)).config.num_replicas
            for name in ("COVENANT", "AUDIT", "ALERTS")
        }

    # Only the missing stream was created, with the one replica asked for.
    assert cluster_env.jetstream(replicas) == {"COVENANT": 3, "AUDIT": 3, "ALERTS": 1}
    with environment(cluster_env.admin_endpoints()):
        result = jetstream.handler(event, _context())
    assert "stream ALERTS: updated (replicas 1 -> 3)" in result["Data"]["Changes"]
    assert cluster_env.jetstream(replicas) == {"COVENANT": 3, "AUDIT": 3, "ALERTS": 3}
    with environment(cluster_env.admin_endpoints()):  # ALERTS elects a leader among its three
        wait_until(lambda: jetstream.probe()["healthy"], 15, "the probe to see R3 healthy")


def test_killing_the_covenant_leader_under_load_loses_and_duplicates_nothing(
    cluster_env, gql
) -> None:
    projects = [gql.create_project(f"Cluster Grid {n}") for n in range(4)]
    leader = _leader(cluster_env)
    victim: NatsServer = cluster_env.nats_server.node(leader)

    with _Schedule(cluster_env).running() as schedule:
        mutations = _mutate(gql, projects, 12.0, {2.0: victim.kill})
        successor = _leader(cluster_env)
    assert successor != leader
    assert schedule.errors == []
    assert sum(r["published"] for r in schedule.results) > 0
    victim.start(wait=False)  # back, as a follower

    events = _drain(cluster_env, projects)
    assert len(events) == 2 * (len(projects) + mutations)
    _assert_each_event_once_in_order(cluster_env, events)
    _wait_cluster_whole(cluster_env)


def test_quorum_lost_briefly_then_every_event_once_in_order(cluster_env, gql, capsys) -> None:
    projects = [gql.create_project(f"Quorum Grid {n}") for n in range(4)]
    leader = cluster_env.nats_server.node(_leader(cluster_env))
    survivor, other = (n for n in cluster_env.nats_server.nodes if n is not leader)
    # The survivor stays a follower, so COVENANT has no leader at all: the follower stops
    # first, then the leader is killed (stopped cleanly, it would hand its leadership to the
    # survivor, which would take publishes it cannot commit until it notices the lost quorum).
    stopped = [other, leader]
    probes: list[dict[str, Any]] = []

    def lose_quorum() -> None:
        other.stop()
        leader.kill()

    def probe_in_background() -> None:
        def run() -> None:
            with environment(cluster_env.admin_endpoints()):
                probes.append(jetstream.probe())

        threading.Thread(target=run, daemon=True).start()

    def restore_quorum() -> None:
        for node in stopped:
            node.start(wait=False)

    capsys.readouterr()
    with _Schedule(cluster_env).running() as schedule:
        mutations = _mutate(
            gql, projects, 14.0, {2.0: lose_quorum, 3.0: probe_in_background, 8.0: restore_quorum}
        )
    assert schedule.errors == []
    events = _drain(cluster_env, projects)
    assert len(events) == 2 * (len(projects) + mutations)
    _assert_each_event_once_in_order(cluster_env, events)

    output = capsys.readouterr().out
    # The bridge's own report (the probe, called directly here, flushes no metrics).
    assert sum(cluster_env.metric_values(output, "StreamLeaderless")) > 0
    assert sum(cluster_env.metric_values(output, "StreamMissing")) == 0
    wait_until(lambda: bool(probes), 15, "the probe during the outage")
    assert probes[0]["healthy"] is False  # reported, not raised
    _wait_cluster_whole(cluster_env)
    with environment(cluster_env.admin_endpoints()):
        wait_until(lambda: jetstream.probe()["healthy"], 30, "the probe to see the cluster whole")
    assert survivor.running


def _drain_ids(env: Any, event_ids: list[str], timeout_s: float = 45) -> None:
    """Sweeps until every one of these events is published."""
    deadline = time.monotonic() + timeout_s
    while any(r["published_at"] is None for r in env.outbox_rows(event_ids).values()):
        assert time.monotonic() < deadline, "events still unpublished"
        env.sweep()
        time.sleep(0.2)


def test_a_fresh_bridge_tells_a_leaderless_stream_from_a_missing_one(cluster_env, capsys) -> None:
    """Asked of JetStream with the bridge's own NATS user (STREAM.INFO, its one API call), not
    guessed from what the execution environment saw: a bridge that has published nothing yet
    reports a quorum loss as StreamLeaderless, and a stream deleted from the healthy cluster
    as StreamMissing."""
    leaders = {_leader(cluster_env, stream) for stream in ("COVENANT", "AUDIT")}
    # The survivor leads neither stream (a leader cut off from its quorum would take publishes
    # it cannot commit, until it notices), and the others die without handing anything over.
    survivor = next(n for n in cluster_env.nats_server.nodes if n.name not in leaders)
    killed = [n for n in cluster_env.nats_server.nodes if n is not survivor]
    event_ids = cluster_env.write_events(4, per_aggregate=1)  # covenant, audit, covenant, ...
    for node in killed:
        node.kill()
    try:
        capsys.readouterr()
        result = cluster_env.sweep()  # a cold environment: the fixture dropped the connection
        output = capsys.readouterr().out
    finally:
        for node in killed:
            node.start(wait=False)
    assert result["published"] == 0 and result["failed"] == 4
    # (Any 0 is the previous test's probe, flushing late.)
    assert max(cluster_env.metric_values(output, "StreamLeaderless")) == 2  # COVENANT, AUDIT
    assert sum(cluster_env.metric_values(output, "StreamMissing")) == 0
    _wait_cluster_whole(cluster_env)
    _leader(cluster_env)
    _leader(cluster_env, "AUDIT")
    _drain_ids(cluster_env, event_ids)
    rows = cluster_env.outbox_rows(event_ids).values()
    assert all(r["attempts"] == 0 and r["dead_at"] is None for r in rows)

    async def drop_audit(js: Any) -> None:
        await js.delete_stream("AUDIT")

    cluster_env.jetstream(drop_audit)
    missing = cluster_env.write_events(2, per_aggregate=1)
    capsys.readouterr()
    result = cluster_env.sweep()
    output = capsys.readouterr().out
    assert result == {"published": 1, "failed": 1, "pruned": 0}
    assert max(cluster_env.metric_values(output, "StreamMissing")) == 1
    assert sum(cluster_env.metric_values(output, "StreamLeaderless")) == 0
    cluster_env.reset_topology(purge=False)
    _leader(cluster_env, "AUDIT")
    _drain_ids(cluster_env, missing)

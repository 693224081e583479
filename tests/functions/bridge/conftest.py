"""The bridge under test: a nats-server of the module's own (so a test can stop and restart
it), the JetStream topology applied by `covenant.streams`, outbox rows written by real GraphQL
mutations or by the unit of work, and the bridge invoked in-process the way Lambda invokes it.

Every test starts with an empty outbox backlog (whatever other tests left pending is marked
published) and empty streams, so it sees only its own events."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import nats
import pytest
from nats.js.errors import NotFoundError

import bridge.connection
from bridge import relay
from covenant import db
from covenant.events import CloudEvent, event_source
from covenant.regions import get_region, primary_region
from covenant.streams import STREAMS, apply_topology, server_urls
from covenant.uow import UnitOfWork
from devstack.event_sources import scheduled_event
from devstack.functions import get_function, invoke
from devstack.nats import NatsCluster, NatsServer
from devstack.processes import free_port
from stacks.events import nats_config_merge, render_nats_config

from ...handoff_fixture import PrimaryLambda, secondary_environment

REPO_ROOT = Path(__file__).resolve().parents[3]
STREAM_NAMES = tuple(spec.name for spec in STREAMS)
# Where the outbox's events go; ALERTS holds the bridge's own alerts (test_alerts.py reads it).
RELAYED_STREAMS = tuple(name for name in STREAM_NAMES if name != "ALERTS")
GRAPHQL_EVENT = json.loads((REPO_ROOT / "events" / "graphql_query.json").read_text())
EDITOR = {"sub": "sub-bridge-editor", "cognito:groups": "[editor]"}

CREATE_PROJECT = """
mutation ($input: CreateProjectInput!) { createProject(input: $input) { id version } }
"""
UPDATE_PROJECT = """
mutation ($id: ID!, $input: UpdateProjectInput!) {
  updateProject(id: $id, input: $input) { id version }
}
"""


def reset_bridge_connection() -> None:
    """Drops the bridge's module-level NATS connection (it lives on the bridge's own loop):
    each test starts as a fresh execution environment."""
    bridge.connection.event_loop().run_until_complete(bridge.connection.reset())


@dataclass(frozen=True)
class StoredMessage:
    stream: str
    seq: int
    subject: str
    msg_id: str
    data: bytes
    content_type: str | None = None


async def _stream_messages(url: str, stream: str) -> list[StoredMessage]:
    client = await nats.connect(server_urls(url), connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        first, last = info.state.first_seq, info.state.last_seq
        found: list[StoredMessage] = []
        for seq in range(first, last + 1) if info.state.messages else ():
            try:
                message = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            found.append(
                StoredMessage(
                    stream,
                    seq,
                    message.subject or "",
                    (message.headers or {}).get("Nats-Msg-Id", ""),
                    message.data or b"",
                    (message.headers or {}).get("Content-Type"),
                )
            )
        return found
    finally:
        await client.close()


async def _reset_topology(url: str, replicas: int = 1, purge: bool = True) -> None:
    """Applies the topology (restoring whatever a test changed or deleted), then empties
    every stream (`purge`)."""
    client = await nats.connect(server_urls(url), connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = client.jetstream()
        changes = await apply_topology(js, replicas)
        refused = [str(change) for change in changes if change.action == "refused"]
        assert not refused, refused
        for name in STREAM_NAMES if purge else ():
            await js.purge_stream(name)
    finally:
        await client.close()


async def _with_jetstream(url: str, action: Callable[[Any], Any]) -> Any:
    client = await nats.connect(server_urls(url), connect_timeout=3, max_reconnect_attempts=1)
    try:
        return await action(client.jetstream())
    finally:
        await client.close()


def mark_everything_published() -> None:
    with db.writer().session() as session:
        seqs = [int(row[0]) for row in session.run("SELECT seq FROM outbox_pending")]
    relay.mark_published(db.writer(), seqs)


def published_ago(event_ids: list[str], age_s: float) -> None:
    """Marks the events published as one batch, `age_s` seconds ago."""
    seqs = [row["seq"] for row in outbox_rows(event_ids).values()]
    relay.mark_published(db.writer(), seqs)
    with db.writer().session() as session:
        session.run(
            "UPDATE outbox_published SET published_at = now() - make_interval(secs => "
            "CAST(:age AS float8)) WHERE seqs && CAST(:seqs AS int8multirange)",
            age=age_s,
            seqs=relay.seq_ranges(seqs),
        )


# An outbox row with its publish state (migration 0013): `published_at` is its batch's in
# outbox_published, `pending` whether outbox_pending still holds it; exactly one of the two.
_ROWS = """
SELECT o.id::text AS id, o.seq, o.subject, o.aggregate_id, o.dead_at, o.attempts, o.last_error,
       (SELECT b.published_at FROM outbox_published AS b WHERE o.seq <@ b.seqs) AS published_at,
       EXISTS (SELECT 1 FROM outbox_pending AS p WHERE p.seq = o.seq) AS pending
FROM outbox AS o
"""


def _with_state(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        assert row.pop("pending") == (row["published_at"] is None), row
    return rows


def outbox_rows(event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The outbox rows of these events, by id."""
    with db.writer().session() as session:
        rows = session.rows(
            _ROWS + "WHERE o.id = ANY(CAST(:ids AS uuid[])) ORDER BY o.seq", ids=list(event_ids)
        )
    return {row["id"]: row for row in _with_state(rows)}


def events_of(aggregate_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The outbox rows of these aggregates, in seq (commit) order."""
    with db.writer().session() as session:
        rows = session.rows(
            _ROWS + "WHERE o.aggregate_id = ANY(CAST(:ids AS text[])) ORDER BY o.seq",
            ids=list(aggregate_ids),
        )
    return _with_state(rows)


def order_violations(
    stored: Iterable[StoredMessage], events: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Where a stream holds two events of one aggregate out of commit (seq) order; `events`
    are outbox rows (id, seq, aggregate_id). Messages of other events are ignored."""
    rows = {e["id"]: e for e in events}
    last: dict[tuple[str, str], Mapping[str, Any]] = {}
    violations: list[str] = []
    for message in sorted(stored, key=lambda m: (m.stream, m.seq)):
        row = rows.get(message.msg_id)
        if row is None:
            continue
        key = (message.stream, str(row["aggregate_id"]))
        before = last.get(key)
        if before is not None and before["seq"] > row["seq"]:
            violations.append(
                f"{message.stream}: event seq {row['seq']} stored after seq {before['seq']} "
                f"of aggregate {row['aggregate_id']}"
            )
        last[key] = row
    return violations


def write_events(
    count: int,
    *,
    subjects: Sequence[str] = ("covenant.projects.updated", "audit.projects.updated"),
    per_aggregate: int = 2,
    aggregate_id: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> list[str]:
    """`count` outbox rows written in one unit of work: subjects taken in turn, a new
    aggregate every `per_aggregate` events (unless `aggregate_id` is given); returns the event
    ids in seq order."""
    ids: list[str] = []
    aggregate = aggregate_id or str(uuid.uuid4())
    with UnitOfWork(db.writer()) as uow:
        for n in range(count):
            if n and n % per_aggregate == 0 and aggregate_id is None:
                aggregate = str(uuid.uuid4())
            event = CloudEvent(
                type=subjects[n % len(subjects)],
                source=event_source("iad", "bridge-tests"),
                subject=f"projects/{aggregate}",
                data=data if data is not None else {"project": {"id": aggregate, "n": n}},
            )
            uow.add_event(event, aggregate_type="project", aggregate_id=aggregate)
            ids.append(event.id)
    return ids


def moto_client(service: str) -> Any:
    """A boto3 client for the in-process moto mock (use inside `mock_aws()`)."""
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # placeholders: moto accepts any
    )


def sqs_record(event_ids: list[str], message_id: str | None = None) -> dict[str, Any]:
    """One wake-up message as the SQS event source hands it to Lambda."""
    body = json.dumps({"reason": "committed", "region": "ams", "eventIds": event_ids})
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": f"AQEB{uuid.uuid4().hex}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795862521000",
            "SenderId": "AROAEXAMPLEID:covenant-ams-graphql",
            "ApproximateFirstReceiveTimestamp": "1795862521050",
        },
        "messageAttributes": {},
        "md5OfBody": "0e7a1f3d5c2b4a69788796a5b4c3d2e1",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:covenant-outbox-wakeup",
        "awsRegion": "us-east-1",
    }


def sqs_batch(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def failed_message_ids(response: Mapping[str, Any]) -> set[str]:
    return {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}


def emf_metrics(stdout: str) -> list[dict[str, Any]]:
    """Every metric the Powertools Metrics printed as CloudWatch EMF JSON: name, value."""
    found: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        for directive in blob["_aws"].get("CloudWatchMetrics", []):
            for metric in directive.get("Metrics", []):
                found.append(
                    {
                        "name": metric["Name"],
                        "value": blob.get(metric["Name"]),
                        "namespace": directive.get("Namespace"),
                    }
                )
    return found


def metric_values(stdout: str, name: str) -> list[float]:
    values: list[float] = []
    for metric in emf_metrics(stdout):
        if metric["name"] == name:
            value = metric["value"]
            values.extend(value if isinstance(value, list) else [value])
    return values


@dataclass
class Bridge:
    """The bridge and its surroundings for one test."""

    servers: Any
    nats_server: NatsServer | NatsCluster
    environment: dict[str, str] = field(default_factory=dict)
    replicas: int = 1  # the topology's: 3 on the three-node cluster
    # The URL the tests and the jetstream function manage JetStream through (the cluster's,
    # with the admin user); the bridge's is in `environment`.
    admin_url: str | None = None

    @property
    def nats_url(self) -> str:
        return self.admin_url or self.nats_server.url

    def endpoints(self, **overrides: str) -> dict[str, str]:
        return {**self.environment, **overrides}

    def admin_endpoints(self, **overrides: str) -> dict[str, str]:
        """The environment of the jetstream function: the admin user's URL."""
        return {**self.environment, "NATS_URL": self.nats_url, **overrides}

    def invoke(self, event: dict[str, Any], **overrides: str) -> Any:
        return invoke(get_function("bridge"), primary_region(), event, self.endpoints(**overrides))

    def sweep(self, **overrides: str) -> dict[str, Any]:
        response: dict[str, Any] = self.invoke(scheduled_event("us-east-1"), **overrides)
        return response

    def wakeup(self, *event_id_lists: list[str], **overrides: str) -> dict[str, Any]:
        response: dict[str, Any] = self.invoke(
            sqs_batch(*(sqs_record(ids) for ids in event_id_lists)), **overrides
        )
        return response

    # -- JetStream ---------------------------------------------------------------------------

    def messages(self, stream: str) -> list[StoredMessage]:
        return asyncio.run(_stream_messages(self.nats_url, stream))

    def all_messages(self) -> list[StoredMessage]:
        """Every event relayed from the outbox, in every stream it goes to."""
        return [m for name in RELAYED_STREAMS for m in self.messages(name)]

    def order_violations(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Events of one aggregate stored out of commit order, in any stream."""
        return order_violations(self.all_messages(), events)

    def stream_ids(self, stream: str | None = None) -> Counter[str]:
        """The multiset of Nats-Msg-Id headers stored in one stream, or in all of them."""
        stored = self.messages(stream) if stream else self.all_messages()
        return Counter(m.msg_id for m in stored)

    def jetstream(self, action: Callable[[Any], Any]) -> Any:
        """Runs `await action(js)` on a fresh connection to the test's server."""
        return asyncio.run(_with_jetstream(self.nats_url, action))

    def reset_topology(self, purge: bool = True) -> None:
        asyncio.run(_reset_topology(self.nats_url, self.replicas, purge))

    def restart_nats(self) -> None:
        assert isinstance(self.nats_server, NatsServer)
        self.nats_server.stop()
        self.nats_server.start()

    # -- helpers the test modules use (conftest is not importable from them) ----------------

    write_events = staticmethod(write_events)
    moto_client = staticmethod(moto_client)
    outbox_rows = staticmethod(outbox_rows)
    events_of = staticmethod(events_of)
    mark_everything_published = staticmethod(mark_everything_published)
    published_ago = staticmethod(published_ago)
    sqs_record = staticmethod(sqs_record)
    sqs_batch = staticmethod(sqs_batch)
    failed_message_ids = staticmethod(failed_message_ids)
    emf_metrics = staticmethod(emf_metrics)
    metric_values = staticmethod(metric_values)


@pytest.fixture(scope="module")
def nats_server(servers: Any) -> Iterator[NatsServer]:
    """A nats-server for this module alone: tests stop and restart it (same data folder and
    port, so JetStream state persists across a restart)."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-bridge-nats-"))
    data_dir.chmod(0o755)
    server = NatsServer(data_dir, free_port(), free_port())
    server.start()
    try:
        yield server
    finally:
        reset_bridge_connection()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# The users of the chart's nats.conf (stacks.events.nats_config_merge), from the environment
# its pods get from the nats-auth secret.
CLUSTER_USERS = {
    "BRIDGE_USER": "bridge",
    "BRIDGE_PASSWORD": "bridgeClusterPassword1",
    "ADMIN_USER": "admin",
    "ADMIN_PASSWORD": "adminClusterPassword1",
    "CONSUMERS_USER": "consumers",
    "CONSUMERS_PASSWORD": "consumersClusterPassword1",
}


def _as_user(cluster: NatsCluster, who: str) -> str:
    """The cluster's server list with the credentials of one of CLUSTER_USERS."""
    user, password = CLUSTER_USERS[f"{who}_USER"], CLUSTER_USERS[f"{who}_PASSWORD"]
    return ",".join(f"nats://{user}:{password}@127.0.0.1:{n.port}" for n in cluster.nodes)


@pytest.fixture(scope="module")
def nats_cluster(servers: Any) -> Iterator[NatsCluster]:
    """A three-node JetStream cluster on loopback for this module alone (node i's own store
    and ports), with the users and permissions the chart gives production's; tests kill and
    restart its nodes."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-bridge-cluster-"))
    data_dir.chmod(0o755)
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    cluster = NatsCluster(
        data_dir,
        3,
        0,
        0,
        0,
        ports=ports,
        config=render_nats_config(nats_config_merge()),
        environment=CLUSTER_USERS,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        reset_bridge_connection()
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def cluster_env(servers: Any, nats_cluster: NatsCluster) -> Iterator[Bridge]:
    """The bridge against the three-node cluster as its NATS user (NATS_URL lists every node),
    R3 topology applied by the admin user."""
    for node in nats_cluster.nodes:
        if not node.running:  # a test failed with the node down
            node.start(wait=False)
    for node in nats_cluster.nodes:
        node.wait_healthy(30, cluster=True)
    reset_bridge_connection()
    harness = Bridge(
        servers,
        nats_cluster,
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
            "NATS_URL": _as_user(nats_cluster, "BRIDGE"),
            "NATS_REPLICAS": "3",
            "NATS_CONNECT_TIMEOUT_S": "1",
            "BRIDGE_SWEEP_MIN_AGE_S": "0",
            "BRIDGE_ACK_TIMEOUT_S": "2",
        },
        replicas=3,
        admin_url=_as_user(nats_cluster, "ADMIN"),
    )
    # No purge: nats-server 2.14 re-applies a purge from its log when a node killed with
    # SIGKILL restarts, deleting the messages stored after it on that node (seen here: the
    # restarted leader of AUDIT lost the 42 messages that followed the purge). The tests
    # compare their own events' ids instead.
    harness.reset_topology(purge=False)
    mark_everything_published()
    yield harness
    reset_bridge_connection()


@pytest.fixture
def bridge_env(servers: Any, nats_server: NatsServer) -> Iterator[Bridge]:
    if nats_server._process is None:  # a test stopped it and failed before restarting it
        nats_server.start()
    reset_bridge_connection()
    harness = Bridge(
        servers,
        nats_server,
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
            "NATS_URL": nats_server.url,
            "NATS_CONNECT_TIMEOUT_S": "1",
            "BRIDGE_SWEEP_MIN_AGE_S": "0",
            "BRIDGE_ACK_TIMEOUT_S": "5",
            # A loaded machine's replica can lag past the default 5 s: only the tests of the
            # replica-lag alert (test_replica_lag.py, their own thresholds) expect one.
            "BRIDGE_ALERT_REPLICA_LAG_WARNING_S": "3600",
            "BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S": "7200",
        },
    )
    harness.reset_topology()
    mark_everything_published()
    yield harness
    reset_bridge_connection()


# -- GraphQL mutations, through the deployed handler -------------------------------------------


def graphql_event(query: str, variables: dict[str, Any], region: str = "ams") -> dict[str, Any]:
    event = copy.deepcopy(GRAPHQL_EVENT)
    event["rawPath"] = f"/{region}/graphql"
    context = event["requestContext"]
    context["stage"] = region
    context["http"]["path"] = f"/{region}/graphql"
    context["authorizer"] = {"jwt": {"claims": dict(EDITOR), "scopes": None}}
    event["headers"] = {
        "accept": "application/graphql-response+json",
        "content-type": "application/json",
    }
    event["body"] = json.dumps({"query": query, "variables": variables})
    return event


@dataclass
class GraphQL:
    servers: Any
    primary: PrimaryLambda
    created: list[str] = field(default_factory=list)

    def __call__(
        self,
        query: str,
        variables: dict[str, Any],
        region: str = "ams",
        **environment: str,
    ) -> dict[str, Any]:
        endpoints = {
            "DATABASE_URL": self.servers.writer_url,
            "DATABASE_READER_URL": self.servers.reader_url,
            **environment,
        }
        hop = {} if get_region(region).primary else secondary_environment("graphql")
        # From a secondary the mutation runs in the primary's function (the hop), with the
        # same settings (the wake-up queue, ...): both regions deploy the same configuration.
        with self.primary.configured(endpoints):
            response = invoke(
                get_function("graphql"),
                get_region(region),
                graphql_event(query, variables, region),
                {**endpoints, **hop},
            )
        raw = response.get("body") or ""
        if response.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        body: dict[str, Any] = json.loads(raw)
        assert response["statusCode"] == 200 and not body.get("errors"), body
        return body["data"]  # type: ignore[no-any-return]

    def create_project(self, name: str = "Bridge Test Grid", **environment: str) -> str:
        data = self(
            CREATE_PROJECT,
            {
                "input": {
                    "name": name,
                    "sectorId": "energy",
                    "countryCode": "KEN",
                    "budgetUsd": 5_000_000,
                }
            },
            **environment,
        )
        project_id: str = data["createProject"]["id"]
        self.created.append(project_id)
        return project_id

    def update_project(self, project_id: str, **changes: Any) -> int:
        data = self(UPDATE_PROJECT, {"id": project_id, "input": changes})
        version: int = data["updateProject"]["version"]
        return version


@pytest.fixture
def gql(servers: Any, primary_lambda: PrimaryLambda) -> Iterator[GraphQL]:
    """Runs mutations as an editor; deletes the projects it created afterwards."""
    client = GraphQL(servers, primary_lambda)
    yield client
    if client.created:
        with db.writer().session() as session:
            session.run(
                "DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=client.created
            )
            # Tombstones stay: deleting them would move the change cursor backwards
            # under a device that already pulled past them (pruning advances sync_horizon).

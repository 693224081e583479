"""Subscriptions end to end with the clients apps use: the `graphql-ws` npm client (in Node, with
`ws`; tests/realtime_client) and gql's WebSocket transport in Python, against the whole local
stack as `make dev` runs it: the gateway's WebSocket APIs, the realtime function, the bridge,
JetStream and the fan-out, with changes made through GraphQL and WatermelonDB sync in other
regions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from devstack.cognito import SEEDED_USERS
from devstack.stack import DevStack, StackOptions

from ...node_client import npm_ci
from ..mobile.watermelon import Device

CLIENT = Path(__file__).resolve().parents[2] / "realtime_client"
PROJECT_CHANGED = (
    "subscription ($filter: ProjectFilter, $since: String) {"
    " projectChanged(filter: $filter, since: $since) {"
    " eventId position action project { id name sector { id } region { code } } } }"
)
CREATE = "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id name } }"

pytestmark = pytest.mark.e2e


def install_client() -> Path:
    npm_ci(CLIENT)
    return CLIENT / "subscribe.mjs"


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-realtime-"))
    data_dir.chmod(0o755)  # the servers run as an unprivileged user when this runs as root
    previous = os.environ.get("COVENANT_HOP_RTT")
    os.environ["COVENANT_HOP_RTT"] = "off"
    options = StackOptions.isolated(data_dir)
    running = DevStack(options)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        if previous is None:
            os.environ.pop("COVENANT_HOP_RTT", None)
        else:
            os.environ["COVENANT_HOP_RTT"] = previous
        shutil.rmtree(data_dir, ignore_errors=True)


def token(stack: DevStack, group: str) -> str:
    assert stack.cognito is not None
    user = next(u for u in SEEDED_USERS if u.group == group)
    return str(stack.cognito.login(user.email, user.password)["AccessToken"])


def ws_url(stack: DevStack, region: str) -> str:
    assert stack.gateway is not None
    return stack.gateway.url.replace("http://", "ws://") + f"/{region}/graphql"


def call(stack: DevStack, method: str, path: str, bearer: str, body: Any = None) -> tuple[int, Any]:
    assert stack.gateway is not None
    request = urllib.request.Request(
        stack.gateway.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def create_project(stack: DevStack, region: str, bearer: str, **fields: Any) -> dict[str, Any]:
    project = {
        "name": f"Realtime {uuid.uuid4().hex[:8]}",
        "sectorId": "energy",
        "countryCode": "KEN",
        "budgetUsd": 1_000_000,
        **fields,
    }
    status, body = call(
        stack,
        "POST",
        f"/{region}/graphql",
        bearer,
        {"query": CREATE, "variables": {"input": project}},
    )
    assert status == 200 and not body.get("errors"), body
    created: dict[str, Any] = body["data"]["createProject"]
    return created


def sync_push_project(stack: DevStack, region: str, bearer: str, name: str) -> None:
    """A new project pushed by WatermelonDB's synchronize() from a device in `region`."""
    assert stack.gateway is not None
    device = Device(f"{stack.gateway.url}/{region}", bearer)
    device.pull()
    device.create(
        "projects",
        name=name,
        description="",
        sector_id="health",
        country_code="NZL",
        region="",
        status="planning",
        budget_usd=2_500_000,
        impact_score=4.25,
        progress=0,
        version=0,
        created_at=0,
        updated_at=0,
    )
    device.push()


class NodeSubscriber:
    """`node subscribe.mjs`: the graphql-ws client; its JSON lines as they arrive."""

    def __init__(self, url: str, subscriptions: list[dict[str, Any]], bearer: str | None) -> None:
        node = shutil.which("node")
        assert node is not None
        arguments = [node, str(install_client()), url, json.dumps(subscriptions)]
        self.process = subprocess.Popen(
            arguments + ([bearer] if bearer else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 45) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(list(self.lines)):
                return
            time.sleep(0.05)
        stderr = ""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read()
        raise AssertionError(f"not seen in time; lines: {self.lines}\n{stderr}")

    def changes(self, subscription: int = 0) -> list[dict[str, Any]]:
        return [
            line["payload"]
            for line in list(self.lines)
            if line["event"] == "next" and line["id"] == subscription
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class GqlSubscriber:
    """gql's WebSocket transport (graphql-transport-ws) on an event loop of its own thread."""

    def __init__(self, url: str, query: str, variables: dict[str, Any], bearer: str | None) -> None:
        self.results: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        transport = WebsocketsTransport(
            url=url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload={"authorization": f"Bearer {bearer}"} if bearer else {},
        )
        request = gql(query)
        request.variable_values = variables
        self._task: asyncio.Task[None] | None = None

        async def run() -> None:
            async with Client(transport=transport) as session:
                self.ready.set()
                async for result in session.subscribe(request):
                    self.results.append(result)

        def thread() -> None:
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(run())
            try:
                self._loop.run_until_complete(self._task)
            except BaseException as exc:  # reported to the test
                self.error = exc
            finally:
                self.ready.set()

        self._thread = threading.Thread(target=thread, daemon=True)
        self._thread.start()
        assert self.ready.wait(30), "gql did not connect"

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 45) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(list(self.results)):
                return
            time.sleep(0.05)
        raise AssertionError(f"not seen in time; results: {self.results}, error: {self.error!r}")

    def changes(self) -> list[dict[str, Any]]:
        """The results as the graphql-ws client prints them (`{"data": ...}`)."""
        return [{"data": result} for result in list(self.results)]

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=15)


@contextlib.contextmanager
def node_subscriber(
    stack: DevStack, region: str, subscriptions: list[dict[str, Any]], bearer: str | None
) -> Iterator[NodeSubscriber]:
    subscriber = NodeSubscriber(ws_url(stack, region), subscriptions, bearer)
    try:
        subscriber.wait_for(lambda lines: any(line["event"] == "connected" for line in lines))
        yield subscriber
    finally:
        subscriber.stop()


def names(changes: list[dict[str, Any]], field: str = "projectChanged") -> list[str]:
    return [c["data"][field]["project"]["name"] for c in changes if c.get("data")]


def live(
    stack: DevStack,
    bearer: str,
    subscribers: list[NodeSubscriber | GqlSubscriber],
    prefix: str = "Warm-up",
    **fields: Any,
) -> None:
    """Changes a project until every subscriber got it: their subscriptions are stored and
    the fan-out serves them (a subscription without `since` starts with the changes after the
    fan-out first sees it, and a cold start of the region's function may come first)."""
    for attempt in range(20):
        name = create_project(stack, "iad", bearer, name=f"{prefix} {attempt}", **fields)["name"]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if all(name in names(s.changes()) for s in subscribers):
                return
            time.sleep(0.05)
    raise AssertionError("the subscriptions never went live")


def test_a_mutation_and_a_sync_push_in_other_regions_reach_both_clients(stack: DevStack) -> None:
    editor = token(stack, "editor")
    subscription = {"query": PROJECT_CHANGED, "variables": {}}
    with node_subscriber(stack, "ams", [subscription], token(stack, "viewer")) as node:
        python = GqlSubscriber(ws_url(stack, "sin"), PROJECT_CHANGED, {}, None)
        try:
            live(stack, editor, [node, python])
            created = create_project(stack, "syd", editor)
            pushed = f"Realtime sync {uuid.uuid4().hex[:8]}"
            sync_push_project(stack, "jnb", editor, pushed)
            wanted = {created["name"], pushed}
            node.wait_for(lambda _: wanted <= set(names(node.changes())))
            python.wait_for(
                lambda results: wanted <= {r["projectChanged"]["project"]["name"] for r in results}
            )
        finally:
            python.stop()
    seen = [c["data"]["projectChanged"] for c in node.changes()]
    mine = [c for c in seen if c["project"]["name"] in wanted]
    assert [c["action"] for c in mine] == ["CREATED", "CREATED"]
    assert all(c["eventId"] and c["position"] for c in mine)
    assert int(mine[0]["position"]) < int(mine[1]["position"])  # stream order


def test_filters_hold(stack: DevStack) -> None:
    editor = token(stack, "editor")
    health = {"query": PROJECT_CHANGED, "variables": {"filter": {"sectorId": "health"}}}
    with node_subscriber(stack, "iad", [health], None) as node:
        live(stack, editor, [node], "Health warm-up", sectorId="health")
        energy = create_project(stack, "ams", editor, sectorId="energy")
        healthy = create_project(stack, "ams", editor, sectorId="health")
        node.wait_for(lambda _: healthy["name"] in names(node.changes()))
        time.sleep(2)  # what the filter kept out would have come by now, in stream order
    got = names(node.changes())
    assert healthy["name"] in got and energy["name"] not in got
    sectors = {c["data"]["projectChanged"]["project"]["sector"]["id"] for c in node.changes()}
    assert sectors == {"health"}


def test_a_viewer_does_not_receive_what_a_viewer_may_not_read(stack: DevStack) -> None:
    query = "subscription { projectChanged { eventId project { name } changedBy { sub roles } } }"
    subscription = {"query": query, "variables": {}}
    editor = token(stack, "editor")
    with (
        node_subscriber(stack, "sfo", [subscription], token(stack, "viewer")) as viewer,
        node_subscriber(stack, "sfo", [subscription], token(stack, "admin")) as admin,
    ):
        live(stack, editor, [viewer, admin])
        created = create_project(stack, "iad", editor)

        def arrived(subscriber: NodeSubscriber) -> Callable[[Any], bool]:
            return lambda _: any(
                (c.get("data") or {}).get("projectChanged", {}).get("project", {}).get("name")
                == created["name"]
                for c in subscriber.changes()
            )

        viewer.wait_for(arrived(viewer))
        admin.wait_for(arrived(admin))

    def message(subscriber: NodeSubscriber) -> dict[str, Any]:
        return next(
            c
            for c in subscriber.changes()
            if (c.get("data") or {}).get("projectChanged", {}).get("project", {}).get("name")
            == created["name"]
        )

    seen_by_viewer, seen_by_admin = message(viewer), message(admin)
    assert seen_by_viewer["data"]["projectChanged"]["changedBy"] is None
    assert [e["extensions"]["code"] for e in seen_by_viewer["errors"]] == ["FORBIDDEN"]
    assert seen_by_admin["data"]["projectChanged"]["changedBy"]["roles"] == ["editor"]
    assert not seen_by_admin.get("errors")


def test_a_reconnect_with_the_last_position_misses_nothing(stack: DevStack) -> None:
    editor = token(stack, "editor")
    mark = f"Resume {uuid.uuid4().hex[:6]}"
    only_mine = {"filter": {"nameContains": mark}}
    first = {"query": PROJECT_CHANGED, "variables": only_mine}
    with node_subscriber(stack, "syd", [first], None) as node:
        live(stack, editor, [node], f"{mark} warm-up")
        create_project(stack, "sin", editor, name=f"{mark} 1")
        node.wait_for(lambda _: f"{mark} 1" in names(node.changes()))
    last = node.changes()[-1]["data"]["projectChanged"]["position"]
    # While no one listens: two more changes.
    for n in (2, 3):
        create_project(stack, "sin", editor, name=f"{mark} {n}")
    resumed = {"query": PROJECT_CHANGED, "variables": {**only_mine, "since": last}}
    with node_subscriber(stack, "syd", [resumed], None) as again:
        again.wait_for(lambda _: len(again.changes()) >= 2)
        create_project(stack, "sin", editor, name=f"{mark} 4")
        again.wait_for(lambda _: len(again.changes()) >= 3)
        time.sleep(1)
    assert names(again.changes()) == [f"{mark} 2", f"{mark} 3", f"{mark} 4"]


def test_a_signed_out_session_is_closed(stack: DevStack) -> None:
    editor = token(stack, "editor")
    with node_subscriber(
        stack, "ams", [{"query": PROJECT_CHANGED, "variables": {}}], editor
    ) as node:
        status, body = call(stack, "POST", "/ams/auth/logout", editor)
        assert status in (200, 204), body
        # The fan-out checks sessions every 30 s (docs/realtime.md, "Close codes").
        node.wait_for(lambda lines: any(line["event"] == "closed" for line in lines), 75)
    closed = next(line for line in node.lines if line["event"] == "closed")
    assert closed["code"] == 1000  # API Gateway closes a deleted connection with 1000


def kill_fanout_environments(stack: DevStack) -> int:
    """SIGKILL to the fan-out's execution environments, as an operator's `kill -9` would: the
    next run is a cold start."""
    assert stack.runtime is not None
    killed = 0
    for pid in stack.runtime.environment_pids("fanout"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def test_the_fan_out_killed_mid_stream_delivers_each_change_once_in_order(stack: DevStack) -> None:
    editor = token(stack, "editor")
    mark = f"Killed {uuid.uuid4().hex[:6]}"
    subscription = {"query": PROJECT_CHANGED, "variables": {"filter": {"nameContains": mark}}}
    expected = [f"{mark} {n:02d}" for n in range(40)]
    kills = 0
    with node_subscriber(stack, "ams", [subscription], None) as node:
        live(stack, editor, [node], f"{mark} warm-up")
        for n, name in enumerate(expected):
            create_project(stack, "iad", editor, name=name)
            if n in (10, 25):
                kills += kill_fanout_environments(stack)
        node.wait_for(lambda _: expected[-1] in names(node.changes()), 120)
        time.sleep(3)  # anything doubled would follow within a redelivery
    assert kills >= 1
    changes = [
        c["data"]["projectChanged"]
        for c in node.changes()
        if "warm-up" not in c["data"]["projectChanged"]["project"]["name"]
    ]
    # docs/realtime.md, "What is guaranteed": nothing lost, stream order, and a message posted
    # again only when the kill fell between its post and its cursor write, with the same
    # position, which a client that keeps its last position drops, as this one does.
    kept, doubled, last = [], 0, -1
    for change in changes:
        if int(change["position"]) <= last:
            doubled += 1
            continue
        last = int(change["position"])
        kept.append(change["project"]["name"])
    assert kept == expected
    assert doubled <= kills

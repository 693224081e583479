"""The realtime functions under test: the deployed handlers invoked with API Gateway
WebSocket-shaped events, the session's PostgreSQL and nats-server, moto in server mode for
DynamoDB and Cognito, and a real HTTP server standing in for each region's `@connections` API
(it records what is posted, answers 410 for connections marked gone, and can hold a post)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import nats
import pytest

from covenant.domain_events import change_events
from covenant.regions import get_region, load_regions, primary_region
from covenant.streams import CONSUMERS, apply_topology
from devstack.cognito import SEEDED_USERS, LocalCognito, MotoServer, start_local_cognito
from devstack.functions import get_function, invoke
from devstack.processes import free_port
from devstack.realtime import provision
from realtime import store

REGIONS = [r.code for r in load_regions()]
ACK_WAIT_S = 1.5


@dataclass
class Posted:
    region: str
    connection_id: str
    message: dict[str, Any]


@dataclass
class ConnectionsApi:
    """What the `@connections` server saw; `gone` answers 410; `hold_after` holds the
    n-th post (unrecorded) until `release` is set."""

    posted: list[Posted] = field(default_factory=list)
    closed: list[tuple[str, str]] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    hold_after: int | None = None
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self, connection_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                p.message
                for p in self.posted
                if p.connection_id == connection_id and kind in (None, p.message.get("type"))
            ]

    def reset(self) -> None:
        with self.lock:
            self.posted.clear()
            self.closed.clear()
            self.gone.clear()
            self.hold_after = None
            self.held.clear()
            self.release.clear()


def _serve(api: ConnectionsApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _target(self) -> tuple[str, str] | None:
            parts = self.path.split("/")  # /<region>/@connections/<id>
            if len(parts) != 4 or parts[2] != "@connections":
                return None
            from urllib.parse import unquote

            return parts[1], unquote(parts[3])

        def _answer(self, status: int, error: str | None = None) -> None:
            body = json.dumps({"message": error}).encode() if error else b""
            self.send_response(status)
            if error:
                self.send_header("x-amzn-ErrorType", error)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            target = self._target()
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if target is None:
                return self._answer(404, "NotFoundException")
            if target[1] in api.gone:
                return self._answer(410, "GoneException")
            with api.lock:
                hold = api.hold_after is not None and len(api.posted) >= api.hold_after
            if hold:
                api.held.set()
                api.release.wait(30)
                with contextlib.suppress(OSError):  # its sender is dead by now
                    self._answer(410, "GoneException")
                return None
            with api.lock:
                api.posted.append(Posted(target[0], target[1], json.loads(data)))
            return self._answer(200)

        def do_DELETE(self) -> None:
            target = self._target()
            if target is None:
                return self._answer(404, "NotFoundException")
            with api.lock:
                api.closed.append(target)
            api.gone.add(target[1])
            return self._answer(204)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def connections_api() -> Iterator[ConnectionsApi]:
    api = ConnectionsApi()
    server = _serve(api)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield api
    api.release.set()
    server.shutdown()


@pytest.fixture(scope="session")
def aws_server() -> Iterator[tuple[MotoServer, LocalCognito]]:
    server, pool = start_local_cognito(free_port())
    yield server, pool
    server.stop()


@pytest.fixture(scope="session")
def endpoints(
    servers: Any, aws_server: tuple[MotoServer, LocalCognito], connections_api: ConnectionsApi
) -> dict[str, str]:
    server, pool = aws_server
    values = {
        "DATABASE_URL": servers.writer_url,
        "DATABASE_READER_URL": servers.reader_url,
        "NATS_URL": servers.nats.url,
        "DYNAMODB_ENDPOINT_URL": server.endpoint_url,
        **pool.environment(),
    }
    values.update(provision(values, connections_api.url))  # type: ignore[attr-defined]
    return values


@pytest.fixture
def fresh(endpoints: dict[str, str], connections_api: ConnectionsApi) -> Iterator[None]:
    """Empty tables, an empty COVENANT stream and fresh REALTIME_* consumers."""
    for code in REGIONS:
        dynamodb = boto3.client(
            "dynamodb",
            region_name=get_region(code).aws_region,
            endpoint_url=endpoints["DYNAMODB_ENDPOINT_URL"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        table = store.Store(dynamodb)
        for item in list(table.all_items()):
            dynamodb.delete_item(
                TableName=table.name,
                Key={"connectionId": item["connectionId"], "item": item["item"]},
            )

    async def reset() -> None:
        client = await nats.connect(endpoints["NATS_URL"])
        try:
            js = client.jetstream()
            await apply_topology(js, 1)
            await js.purge_stream("COVENANT")
            for spec in CONSUMERS:
                if spec.durable_name.startswith("REALTIME_"):
                    await js.delete_consumer("COVENANT", spec.durable_name)
                    config = spec.config(1)
                    config.ack_wait = ACK_WAIT_S  # a killed run's batch back within seconds
                    await js.add_consumer("COVENANT", config)
        finally:
            await client.close()

    asyncio.run(reset())
    connections_api.reset()
    yield


def token(pool: LocalCognito, group: str, kind: str = "AccessToken") -> str:
    user = next(u for u in SEEDED_USERS if u.group == group)
    return str(pool.login(user.email, user.password)[kind])


@dataclass
class Socket:
    """One client connection, as API Gateway invokes the realtime function for it."""

    region: str
    endpoints: dict[str, str]
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12] + "=")
    connected_at: int = field(default_factory=lambda: int(time.time() * 1000))

    def _event(self, route: str, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "requestContext": {
                "routeKey": route,
                "eventType": kind,
                "connectionId": self.connection_id,
                "domainName": "127.0.0.1",
                "stage": self.region,
                "apiId": "local",
                "connectedAt": self.connected_at,
                "requestTimeEpoch": int(time.time() * 1000),
                "requestId": uuid.uuid4().hex,
                "identity": {"sourceIp": "127.0.0.1"},
            },
            "isBase64Encoded": False,
            **extra,
        }

    def _invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        function = get_function("realtime")
        return dict(invoke(function, get_region(self.region), event, self.endpoints))

    def connect(self, protocols: str | None = "graphql-transport-ws") -> dict[str, Any]:
        headers = {"Host": "127.0.0.1"}
        if protocols is not None:
            headers["Sec-WebSocket-Protocol"] = protocols
        return self._invoke(self._event("$connect", "CONNECT", headers=headers))

    def send(self, message: dict[str, Any] | str) -> dict[str, Any]:
        body = message if isinstance(message, str) else json.dumps(message)
        return self._invoke(self._event("$default", "MESSAGE", body=body, messageId="m"))

    def disconnect(self) -> dict[str, Any]:
        return self._invoke(self._event("$disconnect", "DISCONNECT", disconnectStatusCode=1000))

    def open(self, authorization: str | None = None) -> Socket:
        assert self.connect()["statusCode"] == 200
        payload = {"Authorization": f"Bearer {authorization}"} if authorization else {}
        self.send({"type": "connection_init", "payload": payload})
        return self

    def subscribe(self, sub_id: str, query: str, **variables: Any) -> None:
        payload: dict[str, Any] = {"query": query}
        if variables:
            payload["variables"] = variables
        self.send({"id": sub_id, "type": "subscribe", "payload": payload})


def publish_changes(nats_url: str, changes: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Publishes change events as the bridge does (Nats-Msg-Id = event id): (collection,
    action, row) each; returns the event ids in order."""
    ids: list[str] = []

    async def go() -> None:
        client = await nats.connect(nats_url)
        try:
            js = client.jetstream()
            for collection, action, row in changes:
                events = change_events(
                    function="graphql",
                    region="iad",
                    actor={"sub": "sub-editor", "roles": ["editor"], "email": "e@x"},
                    request_id="test",
                    collection=collection,
                    action=action,
                    row=row,
                )
                event = events.change
                await js.publish(
                    event.type, event.to_json().encode(), headers={"Nats-Msg-Id": event.id}
                )
                ids.append(event.id)
        finally:
            await client.close()

    asyncio.run(go())
    return ids


def project_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()),
        "name": "Kenya Grid",
        "description": "",
        "sector_id": "energy",
        "country_code": "KEN",
        "region": "jnb",
        "status": "active",
        "budget_usd": 42_000_000,
        "impact_score": 5.5,
        "progress": 10,
        "version": 1,
        "created_at": "2026-12-06T10:00:00+00:00",
        "updated_at": "2026-12-06T10:00:00+00:00",
    }
    row.update(overrides)
    return row


def run_fanout(endpoints: dict[str, str], region: str, idle_exit_s: float = 1.5) -> dict[str, Any]:
    """One fan-out run serving `region`, in the primary region as deployed, until idle."""
    env = {**endpoints, "CONSUMER_IDLE_EXIT_S": str(idle_exit_s)}
    result = invoke(get_function("fanout"), primary_region(), {"region": region}, env)
    return dict(result)


def token_claims_sub(access_token: str) -> str:
    """The `sub` of a token (its payload, unverified: the test made it)."""
    payload = access_token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])

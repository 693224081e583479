"""The local WebSocket APIs: real WebSocket clients in, API Gateway WebSocket events out, the
`@connections` API through boto3, and API Gateway's limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import boto3
import pytest
from botocore.exceptions import ClientError

from covenant.topology import (
    FunctionSpec,
    Route,
    TopologyError,
    WebSocketSpec,
    parse_functions,
)
from devstack.gateway import Gateway
from devstack.runtime import FunctionConfig
from devstack.websocket import FRAME_LIMIT_BYTES, MESSAGE_LIMIT_BYTES

from .probes import HANDLERS

T = TypeVar("T")
ROUTES = ("$connect", "$default", "$disconnect")


def _functions(routes: tuple[str, ...] = ROUTES) -> dict[str, FunctionConfig]:
    probe = FunctionConfig(
        FunctionSpec(
            "realtime",
            "websocket_probe.handler",
            "the WebSocket API's probe",
            (),
            WebSocketSpec("/graphql", routes, ("$default",)),
        ),
        timeout_s=10,
        code_path=(HANDLERS,),
    )
    health = FunctionConfig(
        FunctionSpec("health", "websocket_probe.health", "", (Route("GET", "/health", "none"),)),
        code_path=(HANDLERS,),
    )
    return {"realtime": probe, "health": health}


def _serve(log: Path) -> Gateway:
    server = Gateway(0, {"WS_PROBE_LOG": str(log)}, functions=_functions())
    server.serve_in_thread()
    return server


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("websocket") / "events.jsonl"


@pytest.fixture(scope="module")
def gateway(log: Path) -> Iterator[Gateway]:
    server = _serve(log)
    yield server
    server.shutdown()


def _ws(gateway: Gateway, region: str = "ams", query: str = "") -> str:
    return gateway.url.replace("http://", "ws://") + f"/{region}/graphql" + query


def _run(work: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def session() -> T:
        # No pool limit: each open WebSocket holds a connection of the session's pool.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            return await work(client)

    return asyncio.run(session())


def _events(log: Path, connection: str) -> list[dict[str, Any]]:
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    events = [json.loads(line) for line in lines]
    return [e for e in events if e["requestContext"]["connectionId"] == connection]


def _wait_for_disconnect(log: Path, connection: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [
            e for e in _events(log, connection) if e["requestContext"]["eventType"] == "DISCONNECT"
        ]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no $disconnect for {connection}")


async def _connection_id(socket: aiohttp.ClientWebSocketResponse) -> str:
    await socket.send_str("id:")
    return str(await socket.receive_str(timeout=15))


def _management(gateway: Gateway, region: str = "ams") -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=f"{gateway.url}/{region}",
        region_name="eu-west-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_events_have_the_websocket_api_shapes(gateway: Gateway, log: Path) -> None:
    async def session(client: aiohttp.ClientSession) -> str:
        async with client.ws_connect(
            _ws(gateway, query="?token=a&token=b&x="), headers={"X-Trace": "t1"}
        ) as socket:
            connection = await _connection_id(socket)
            await socket.close(code=4000, message=b"bye")
        return connection

    connection = _run(session)
    disconnect = _wait_for_disconnect(log, connection)
    connect, message = _events(log, connection)[:2]

    context = connect["requestContext"]
    assert (context["routeKey"], context["eventType"]) == ("$connect", "CONNECT")
    assert context["stage"] == "ams" and context["messageDirection"] == "IN"
    assert len(connection) == 16 and connection.endswith("=")
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert context["connectedAt"] <= context["requestTimeEpoch"]
    for key in ("requestId", "extendedRequestId", "requestTime", "domainName", "apiId"):
        assert context[key], key
    assert connect["headers"]["X-Trace"] == "t1"
    assert connect["headers"]["Sec-WebSocket-Version"] == "13"
    assert connect["multiValueHeaders"]["X-Trace"] == ["t1"]
    assert "Upgrade" not in connect["headers"] and "Connection" not in connect["headers"]
    assert connect["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert connect["queryStringParameters"] == {"token": "b", "x": ""}
    assert connect["multiValueQueryStringParameters"] == {"token": ["a", "b"], "x": [""]}
    assert connect["isBase64Encoded"] is False

    assert set(message) == {"requestContext", "body", "isBase64Encoded"}
    assert message["body"] == "id:"
    assert message["requestContext"]["eventType"] == "MESSAGE"
    assert message["requestContext"]["routeKey"] == "$default"
    assert message["requestContext"]["messageId"]
    assert message["requestContext"]["connectedAt"] == context["connectedAt"]

    closing = disconnect["requestContext"]
    assert (closing["routeKey"], closing["eventType"]) == ("$disconnect", "DISCONNECT")
    assert (closing["disconnectStatusCode"], closing["disconnectReason"]) == (4000, "bye")
    assert set(disconnect["headers"]) == {"Host", "x-api-key", "X-Forwarded-For", "x-restapi"}


def test_the_subprotocol_is_the_one_connect_answers(gateway: Gateway) -> None:
    async def session(client: aiohttp.ClientSession) -> tuple[str | None, str | None]:
        async with client.ws_connect(
            _ws(gateway), protocols=("graphql-ws", "graphql-transport-ws")
        ) as chosen:
            first = chosen.protocol
        async with client.ws_connect(_ws(gateway), protocols=("mqtt",)) as refused:
            second = refused.protocol
        return first, second

    assert _run(session) == ("graphql-transport-ws", None)


def test_connect_refusal_and_failure_refuse_the_upgrade(gateway: Gateway, log: Path) -> None:
    async def status(client: aiohttp.ClientSession, query: str) -> int:
        try:
            async with client.ws_connect(_ws(gateway, query=query)):
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status

    async def session(client: aiohttp.ClientSession) -> list[int]:
        return [await status(client, q) for q in ("?refuse=403", "?refuse=401", "?fail=1")]

    assert _run(session) == [403, 401, 500]


def test_default_route_answers_are_sent_back_and_failures_reported(gateway: Gateway) -> None:
    async def session(client: aiohttp.ClientSession) -> tuple[str, dict[str, Any], str, str]:
        async with client.ws_connect(_ws(gateway, "syd")) as socket:
            connection = await _connection_id(socket)
            await socket.send_str("echo:hello")
            echoed = await socket.receive_str(timeout=15)
            await socket.send_str("fail:")
            failure = json.loads(await socket.receive_str(timeout=15))
            await socket.send_str("post:through @connections")
            posted = await socket.receive_str(timeout=15)
        return (
            echoed,
            {**failure, "mine": failure["connectionId"] == connection},
            posted,
            connection,
        )

    echoed, failure, posted, _ = _run(session)
    assert echoed == "hello"
    assert failure["message"] == "Internal server error" and failure["mine"]
    assert failure["requestId"]
    assert posted == "through @connections"


def test_connections_api_posts_describes_and_deletes(gateway: Gateway, log: Path) -> None:
    management = _management(gateway)

    async def session(client: aiohttp.ClientSession) -> dict[str, Any]:
        async with client.ws_connect(_ws(gateway), headers={"User-Agent": "probe/1"}) as socket:
            connection = await _connection_id(socket)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: management.post_to_connection(ConnectionId=connection, Data=b"hi")
            )
            received = await socket.receive_str(timeout=15)
            described = await loop.run_in_executor(
                None, lambda: management.get_connection(ConnectionId=connection)
            )
            await loop.run_in_executor(
                None, lambda: management.delete_connection(ConnectionId=connection)
            )
            closed = await socket.receive(timeout=15)
            return {
                "connection": connection,
                "received": received,
                "described": described,
                "close": (closed.type, closed.data),
            }

    result = _run(session)
    connection = result["connection"]
    assert result["received"] == "hi"
    described = result["described"]
    assert described["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "probe/1"}
    assert described["ConnectedAt"] <= described["LastActiveAt"]
    assert result["close"] == (aiohttp.WSMsgType.CLOSE, 1000)
    closing = _wait_for_disconnect(log, connection)["requestContext"]
    assert (closing["disconnectStatusCode"], closing["disconnectReason"]) == (
        1000,
        "Connection Closed Normally",
    )
    for call in (
        lambda: management.post_to_connection(ConnectionId=connection, Data=b"late"),
        lambda: management.get_connection(ConnectionId=connection),
        lambda: management.delete_connection(ConnectionId=connection),
    ):
        with pytest.raises(ClientError) as gone:
            call()
        assert gone.value.response["Error"]["Code"] == "GoneException"
        assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


def test_connections_api_refuses_unknown_other_region_and_oversized(gateway: Gateway) -> None:
    with pytest.raises(ClientError) as unknown:
        _management(gateway).post_to_connection(ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
    assert unknown.value.response["Error"]["Code"] == "GoneException"

    async def session(client: aiohttp.ClientSession) -> tuple[str, str]:
        async with client.ws_connect(_ws(gateway, "sin")) as socket:
            connection = await _connection_id(socket)
            loop = asyncio.get_running_loop()

            def elsewhere() -> str:
                try:
                    _management(gateway, "iad").post_to_connection(
                        ConnectionId=connection, Data=b"x"
                    )
                except ClientError as refused:
                    return str(refused.response["Error"]["Code"])
                return "sent"

            def oversized() -> str:
                data = b"x" * (MESSAGE_LIMIT_BYTES + 1)
                try:
                    _management(gateway, "sin").post_to_connection(
                        ConnectionId=connection, Data=data
                    )
                except ClientError as refused:
                    return str(refused.response["Error"]["Code"])
                return "sent"

            return await loop.run_in_executor(None, elsewhere), await loop.run_in_executor(
                None, oversized
            )

    assert _run(session) == ("GoneException", "PayloadTooLargeException")


def test_frames_over_32_kb_and_binary_frames_close_the_connection(
    gateway: Gateway, log: Path
) -> None:
    async def close_after(
        client: aiohttp.ClientSession,
        send: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]],
    ) -> tuple[int | None, str]:
        socket = await client.ws_connect(_ws(gateway))
        connection = await _connection_id(socket)
        await send(socket)
        message = await socket.receive(timeout=15)
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        return message.data, connection

    async def session(client: aiohttp.ClientSession) -> list[tuple[int | None, str]]:
        async with client.ws_connect(_ws(gateway)) as socket:
            await socket.send_str("echo:" + "x" * (FRAME_LIMIT_BYTES - 5))  # exactly 32 KB
            assert len(await socket.receive_str(timeout=15)) == FRAME_LIMIT_BYTES - 5
        big = await close_after(client, lambda s: s.send_str("x" * (FRAME_LIMIT_BYTES + 1)))
        binary = await close_after(client, lambda s: s.send_bytes(b"\x00\x01"))
        return [big, binary]

    (big_code, big), (binary_code, binary) = _run(session)
    assert big_code == 1009
    assert binary_code == 1003
    assert _wait_for_disconnect(log, big)["requestContext"]["disconnectStatusCode"] == 1009
    assert _wait_for_disconnect(log, binary)["requestContext"]["disconnectStatusCode"] == 1003


def _frame(payload: bytes, *, opcode: int, fin: bool) -> bytes:
    """A masked client frame (RFC 6455, 5.2), as a browser that fragments would send it."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def _raw_connection(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection made by hand, for what aiohttp's client will not send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ams/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


async def _raw_connection_id(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    writer.write(_frame(b"id:", opcode=0x1, fin=True))
    head = await asyncio.wait_for(reader.readexactly(2), 15)
    assert head[0] == 0x81 and head[1] == 16, head  # an unmasked text frame of 16 bytes
    return (await reader.readexactly(16)).decode()


def test_closes_without_status_or_without_frame_are_reported(gateway: Gateway, log: Path) -> None:
    async def session() -> tuple[str, str]:
        reader, writer = await _raw_connection(gateway)
        no_status = await _raw_connection_id(reader, writer)
        writer.write(_frame(b"", opcode=0x8, fin=True))  # a close frame without a status
        await writer.drain()
        await asyncio.wait_for(reader.read(), 15)
        writer.close()
        reader, writer = await _raw_connection(gateway)
        dropped = await _raw_connection_id(reader, writer)
        writer.transport.abort()  # TCP gone, no close frame
        return no_status, dropped

    no_status, dropped = asyncio.run(session())
    closing = _wait_for_disconnect(log, no_status)["requestContext"]
    assert (closing["disconnectStatusCode"], closing["disconnectReason"]) == (
        1005,
        "Client-side close frame status not set",
    )
    assert _wait_for_disconnect(log, dropped)["requestContext"]["disconnectStatusCode"] == 1006


def test_a_client_gone_during_connect_gets_its_disconnect(gateway: Gateway, log: Path) -> None:
    marker = uuid.uuid4().hex

    async def leave_early() -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ams/graphql?sleep=1&marker={marker} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # $connect is still running
        writer.transport.abort()

    asyncio.run(leave_early())
    deadline = time.monotonic() + 15
    connection = None
    while connection is None and time.monotonic() < deadline:
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        connection = next(
            (
                event["requestContext"]["connectionId"]
                for event in map(json.loads, lines)
                if (event.get("queryStringParameters") or {}).get("marker") == marker
            ),
            None,
        )
        time.sleep(0.05)
    assert connection is not None
    closing = _wait_for_disconnect(log, connection)["requestContext"]
    assert closing["disconnectStatusCode"] == 1006


async def _raw_fragments(gateway: Gateway, parts: list[bytes]) -> bytes:
    """Sends one text message in `parts` frames over a hand-made connection; what the server
    sends back (until it closes or goes quiet)."""
    reader, writer = await _raw_connection(gateway)
    frames = [
        _frame(part, opcode=0x1 if i == 0 else 0x0, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]

    async def answer() -> bytes:
        # Read while writing: a server that closes mid-message resets the connection, and
        # what it said before must have been read by then.
        received = b""
        with contextlib.suppress(ConnectionError):
            while not (received[:1] == b"\x88" or (received[:1] == b"\x81" and len(received) > 4)):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
        return received

    reading = asyncio.create_task(answer())
    # Chunks cut across frame headers exercise the frame reader's hold-back; the pause after
    # each frame lets the server read it all before it may close (unread bytes would make
    # its close a reset that loses the close frame).
    with contextlib.suppress(ConnectionError):
        for frame in frames:
            for cut in range(0, len(frame), 7000):
                writer.write(frame[cut : cut + 7000])
                await writer.drain()
            await asyncio.sleep(0.1)
    try:
        return await asyncio.wait_for(reading, 15)
    finally:
        writer.close()


def test_fragmented_messages_pass_up_to_128_kb(gateway: Gateway) -> None:
    part = FRAME_LIMIT_BYTES - 100
    accepted = asyncio.run(_raw_fragments(gateway, [b"echo:" + b"y" * part, b"y" * part]))
    assert accepted[0] == 0x81  # a text frame: the echo of the 64 KB message
    # The message crosses 128 KB in its last, small frame: everything sent has been read when
    # the server refuses it, so its close cannot be lost to a reset of unread bytes.
    filled = len(b"echo:") + 4 * part
    over = b"y" * (MESSAGE_LIMIT_BYTES - filled + 100)
    refused = asyncio.run(_raw_fragments(gateway, [b"echo:", *[b"y" * part] * 4, over]))
    assert refused[0] == 0x88 and int.from_bytes(refused[2:4], "big") == 1009


@pytest.fixture
def short_timeouts(log: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv("COVENANT_WS_IDLE_TIMEOUT_S", "1.5")
    monkeypatch.setenv("COVENANT_WS_MAX_DURATION_S", "4")
    server = _serve(log)
    yield server
    server.shutdown()


def test_idle_and_too_long_connections_are_closed_going_away(
    short_timeouts: Gateway, log: Path
) -> None:
    async def idle(client: aiohttp.ClientSession) -> tuple[str, int | None, float]:
        socket = await client.ws_connect(_ws(short_timeouts))
        connection = await _connection_id(socket)
        started = time.monotonic()
        message = await socket.receive(timeout=15)
        assert message.type == aiohttp.WSMsgType.CLOSE
        return connection, message.data, time.monotonic() - started

    async def chatty(client: aiohttp.ClientSession) -> tuple[str, int | None, float]:
        socket = await client.ws_connect(_ws(short_timeouts))
        started = time.monotonic()
        connection = await _connection_id(socket)
        while True:
            with contextlib.suppress(ConnectionError):  # closed while it slept
                await socket.send_str("echo:keep-alive")
            message = await socket.receive(timeout=15)
            if message.type != aiohttp.WSMsgType.TEXT:
                return connection, message.data, time.monotonic() - started
            await asyncio.sleep(0.5)

    idle_id, idle_code, idle_after = _run(idle)
    chatty_id, chatty_code, chatty_after = _run(chatty)
    assert idle_code == 1001 and 1.5 <= idle_after < 4
    assert chatty_code == 1001 and chatty_after >= 3.5  # kept alive past 1.5 s, cut at 4 s
    for connection in (idle_id, chatty_id):
        closing = _wait_for_disconnect(log, connection)["requestContext"]
        assert (closing["disconnectStatusCode"], closing["disconnectReason"]) == (
            1001,
            "Going away",
        )


def test_many_connections_at_once_leave_http_answering(gateway: Gateway) -> None:
    count = 300

    async def session(client: aiohttp.ClientSession) -> tuple[int, list[int]]:
        sockets = await asyncio.gather(
            *(client.ws_connect(_ws(gateway, "jnb")) for _ in range(count))
        )
        statuses = []
        for _ in range(5):
            async with client.get(
                f"{gateway.url}/jnb/health", timeout=aiohttp.ClientTimeout(5)
            ) as r:
                statuses.append(r.status)
        for socket in sockets:
            await socket.send_str("echo:ping")
        answers = await asyncio.gather(*(s.receive_str(timeout=60) for s in sockets))
        await asyncio.gather(*(s.close() for s in sockets))
        return sum(a == "ping" for a in answers), statuses

    answered, statuses = _run(session)
    assert answered == count
    assert statuses == [200] * 5
    with urllib.request.urlopen(f"{gateway.url}/jnb/health", timeout=5) as response:
        assert response.status == 200


def test_only_an_integrated_default_route_can_return_a_response() -> None:
    entry = {"handler": "h.handler", "websocket": {"path": "/graphql", "routes": ["$default"]}}
    two_way = {**entry, "websocket": {**entry["websocket"], "returnResponse": ["$default"]}}
    assert parse_functions({"f": two_way})["f"].websocket == WebSocketSpec(
        "/graphql", ("$default",), ("$default",)
    )
    for wrong in (["$connect"], "$default"):
        bad = {**entry, "websocket": {**entry["websocket"], "returnResponse": wrong}}
        with pytest.raises(TopologyError, match="only an integrated"):
            parse_functions({"f": bad})
    without_default = {
        **entry,
        "websocket": {"path": "/graphql", "routes": ["$connect"], "returnResponse": ["$default"]},
    }
    with pytest.raises(TopologyError, match="only an integrated"):
        parse_functions({"f": without_default})

"""A local stand-in for the six regional API Gateway WebSocket APIs and their `@connections`
management API.

`ws://127.0.0.1:<port>/<region><path>` (the function table's `websocket.path`, `/graphql`: the
same URL as the HTTP API, upgraded) is one region's WebSocket API, stage = region code. Its
function is invoked in its Lambda execution environments (devstack.runtime), as the gateway
invokes HTTP routes, with the events a Lambda proxy integration of a WebSocket API receives.
The function talks back through `http://127.0.0.1:<port>/<region>/@connections/{id}` (boto3's
`apigatewaymanagementapi` client with WEBSOCKET_MANAGEMENT_URL as endpoint_url).

What API Gateway does that is reproduced here:

- `$connect` (headers, multiValueHeaders, query string, requestContext) runs before the
  upgrade completes: a non-2xx status refuses the handshake with that status, a function
  error with 500; the subprotocol is the one the `$connect` response's
  `Sec-WebSocket-Protocol` header names. `@connections` answers 410 for the connection until
  the upgrade is done.
- each text message is one `$default` invocation (concurrent, unordered, as in AWS); with a
  route response (`returnResponse`) a non-empty body of the answer is sent back; a failed or
  timed-out (29 s) integration sends `{"message": "Internal server error", ...}` or
  `{"message": "Endpoint request timed out", ...}` to the client.
- `$disconnect` after every close, with `disconnectStatusCode`/`disconnectReason`.
- limits: a frame over 32 KB or a message over 128 KB closes with 1009 "Message too big"; a
  binary frame closes with 1003; 10 minutes without a message either way, or 2 hours in all,
  close with 1001 "Going away". COVENANT_WS_IDLE_TIMEOUT_S and COVENANT_WS_MAX_DURATION_S
  shorten the two timeouts (for tests).
- `@connections`: POST sends (410 GoneException for an unknown or closed connection, 413
  PayloadTooLargeException over 128 KB), GET describes, DELETE closes with 1000.

Not reproduced: custom routes and route selection expressions (every message is `$default`),
Lambda authorizers, request/response mapping templates, SigV4 on `@connections` (any
signature is accepted), throttling (LimitExceededException, 429), fragmentation of outgoing
messages into 32 KB frames.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

from covenant.regions import Region
from covenant.topology import FunctionSpec
from devstack.runtime import InvokeRejected, LambdaRuntime, positive_env

logger = logging.getLogger("devstack.websocket")

FRAME_LIMIT_BYTES = 32 * 1024
MESSAGE_LIMIT_BYTES = 128 * 1024
IDLE_TIMEOUT_S = 600.0
MAX_DURATION_S = 7200.0
INTEGRATION_TIMEOUT_S = 29.0
CONNECTIONS_PREFIX = "/@connections/"
# Hop-by-hop headers of the upgrade request that API Gateway does not pass to $connect.
_DROPPED_HEADERS = frozenset({"connection", "upgrade"})
_GOING_AWAY = (int(WSCloseCode.GOING_AWAY), "Going away")
_TOO_BIG = (int(WSCloseCode.MESSAGE_TOO_BIG), "Message too big")


def is_upgrade(request: web.BaseRequest) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def connection_id() -> str:
    """API Gateway's connection ids look like "RYGzEcSNvHcCH8A=": 16 characters."""
    return base64.b64encode(os.urandom(11), b"-_").decode()


def _request_id() -> str:
    return base64.b64encode(uuid.uuid4().bytes[:11], b"-_").decode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _request_time(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Connection:
    """One client's WebSocket connection to a region's API."""

    id: str
    region: Region
    function: FunctionSpec
    api_id: str
    domain: str
    source_ip: str
    user_agent: str
    connected_at_ms: int
    socket: web.WebSocketResponse | None = None
    last_active_ms: int = 0
    last_active: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    # Why the gateway closed it (code, reason), for $disconnect; None while open or when
    # the client closed it.
    closed_by_gateway: tuple[int, str] | None = None
    close_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.last_active = time.monotonic()
        self.last_active_ms = _now_ms()

    def request_context(self, route_key: str, event_type: str) -> dict[str, Any]:
        now = _now_ms()
        request_id = _request_id()
        identity = {"sourceIp": self.source_ip}
        if self.user_agent:
            identity["userAgent"] = self.user_agent
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": _request_time(now),
            "messageDirection": "IN",
            "stage": self.region.code,
            "connectedAt": self.connected_at_ms,
            "requestTimeEpoch": now,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain,
            "connectionId": self.id,
            "apiId": self.api_id,
        }


def connect_event(
    connection: Connection, headers: list[tuple[str, str]], query: list[tuple[str, str]]
) -> dict[str, Any]:
    """The `$connect` event: the upgrade request's headers (their case kept, as API Gateway
    passes them, plus the X-Forwarded-* it adds) and query string."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    forwarded = [
        ("X-Forwarded-For", connection.source_ip),
        ("X-Forwarded-Port", connection.domain.rpartition(":")[2] or "80"),
        ("X-Forwarded-Proto", "http"),
    ]
    for name, value in [*headers, *forwarded]:
        if name.lower() in _DROPPED_HEADERS:
            continue
        single[name] = value
        multi.setdefault(name, []).append(value)
    event: dict[str, Any] = {
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": connection.request_context("$connect", "CONNECT"),
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = {k: v for k, v in query}
        multi_query: dict[str, list[str]] = {}
        for name, value in query:
            multi_query.setdefault(name, []).append(value)
        event["multiValueQueryStringParameters"] = multi_query
    return event


def message_event(connection: Connection, body: str) -> dict[str, Any]:
    context = connection.request_context("$default", "MESSAGE")
    context["messageId"] = _request_id()
    return {"requestContext": context, "body": body, "isBase64Encoded": False}


def disconnect_event(connection: Connection, status: int, reason: str) -> dict[str, Any]:
    """The `$disconnect` event; API Gateway sends these four headers, not the client's."""
    context = connection.request_context("$disconnect", "DISCONNECT")
    context["disconnectStatusCode"] = status
    context["disconnectReason"] = reason
    headers = {"Host": connection.domain, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }


class _FrameLimit:
    """Stands between aiohttp's protocol and its WebSocket parser, reading frame headers: a
    data frame over `limit` bytes is kept from the parser and reported to `exceeded` (aiohttp
    bounds a whole message, not a frame). The reach into aiohttp's internals (the protocol's
    `_payload_parser`) lives here only; aiohttp is pinned in pyproject.toml and
    tests/devstack/test_websocket.py fails if the seam stops working."""

    def __init__(self, parser: Any, limit: int, exceeded: Callable[[], None]) -> None:
        self._parser = parser
        self._limit = limit
        self._exceeded = exceeded
        self._pending = b""  # an incomplete frame header, held back
        self._payload_left = 0  # bytes of the current frame still to pass (or skip)
        self._skipping = False

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        data = self._pending + bytes(data)
        self._pending = b""
        forward = bytearray()
        position = 0
        while position < len(data):
            if self._payload_left:
                take = min(self._payload_left, len(data) - position)
                if not self._skipping:
                    forward += data[position : position + take]
                self._payload_left -= take
                position += take
                continue
            header = _frame_header(data, position)
            if header is None:
                self._pending = data[position:]
                break
            header_length, payload_length, opcode = header
            self._skipping = opcode < 0x8 and payload_length > self._limit
            if self._skipping:
                self._exceeded()
            else:
                forward += data[position : position + header_length]
            position += header_length
            self._payload_left = payload_length
        if not forward:
            return False, b""
        result: tuple[bool, bytes] = self._parser.feed_data(bytes(forward))
        return result


def _frame_header(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(header length, payload length, opcode) of the frame starting at `at`, or None when
    the header is not all there yet (RFC 6455, 5.2)."""
    if len(data) - at < 2:
        return None
    opcode = data[at] & 0x0F
    masked = data[at + 1] & 0x80
    length = data[at + 1] & 0x7F
    size = 2
    if length == 126:
        size += 2
    elif length == 127:
        size += 8
    size += 4 if masked else 0
    if len(data) - at < size:
        return None
    if length == 126:
        length = int.from_bytes(data[at + 2 : at + 4], "big")
    elif length == 127:
        length = int.from_bytes(data[at + 2 : at + 10], "big")
    return size, length, opcode


class WebSocketApis:
    """The WebSocket API of every function that has one (FunctionSpec.websocket), in every
    region, and their `@connections` API. Lives on the gateway's event loop."""

    def __init__(
        self,
        functions: Mapping[str, FunctionSpec],
        runtime: LambdaRuntime,
        *,
        integration_timeout_s: float = INTEGRATION_TIMEOUT_S,
    ) -> None:
        self.functions = {f.websocket.path: f for f in functions.values() if f.websocket}
        self.runtime = runtime
        self.integration_timeout_s = integration_timeout_s
        self.idle_timeout_s = positive_env("COVENANT_WS_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S, float)
        self.max_duration_s = positive_env("COVENANT_WS_MAX_DURATION_S", MAX_DURATION_S, float)
        self.connections: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def respond(
        self, request: web.Request, region: Region, route_path: str
    ) -> web.StreamResponse | None:
        """Serves `request` when it is an upgrade to a WebSocket API or a call to
        `@connections`; None when it is the HTTP API's."""
        if route_path.startswith(CONNECTIONS_PREFIX):
            return await self.manage(request, region, route_path[len(CONNECTIONS_PREFIX) :])
        function = self.functions.get(route_path)
        if function is None or not is_upgrade(request):
            return None
        return await self.upgrade(request, region, function)

    async def close(self) -> None:
        """Closes every connection (1001, as a deploy or shutdown would)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        for connection in list(self.connections.values()):
            await self._close(connection, _GOING_AWAY)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # --- the WebSocket API ---------------------------------------------------------------

    async def upgrade(
        self, request: web.Request, region: Region, function: FunctionSpec
    ) -> web.StreamResponse:
        api = function.websocket
        assert api is not None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        connection = Connection(
            id=connection_id(),
            region=region,
            function=function,
            api_id=f"local-{region.code}-ws",
            domain=request.headers.get("Host", "127.0.0.1"),
            source_ip=peer[0] if peer else "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            connected_at_ms=_now_ms(),
        )
        protocol: str | None = None
        if "$connect" in api.routes:
            event = connect_event(
                connection, list(request.headers.items()), list(request.query.items())
            )
            answer = await self._invoke(connection, "$connect", event)
            status, headers, _ = _proxy_answer(answer)
            if not 200 <= status < 300:
                logger.info("%s $connect in %s: %d", function.name, region.code, status)
                return web.Response(status=status)
            protocol = headers.get("Sec-WebSocket-Protocol")
        socket = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            max_msg_size=MESSAGE_LIMIT_BYTES + 1,  # aiohttp refuses a message of max_msg_size
            compress=False,  # API Gateway negotiates no permessage-deflate
            autoping=True,
        )
        try:
            await socket.prepare(request)
        except ConnectionResetError:
            # The client left while $connect ran: the handler may have stored it already.
            logger.info("%s in %s: client gone during $connect", function.name, region.code)
            if "$disconnect" in api.routes:
                gone = disconnect_event(connection, 1006, "Connection was closed abnormally")
                self._spawn(self._invoke(connection, "$disconnect", gone))
            return socket
        protocol_handler = request.protocol
        protocol_handler._payload_parser = _FrameLimit(  # see _FrameLimit
            protocol_handler._payload_parser,
            FRAME_LIMIT_BYTES,
            lambda: self._spawn(self._close(connection, _TOO_BIG)),
        )
        connection.socket = socket
        connection.touch()
        self.connections[connection.id] = connection
        self._ensure_watchdog()
        logger.info("%s in %s: connected %s", function.name, region.code, connection.id)
        try:
            status, reason = await self._receive(connection, socket)
        finally:
            self.connections.pop(connection.id, None)
        if connection.closed_by_gateway is not None:
            status, reason = connection.closed_by_gateway
            # The handler's return ends the TCP connection: the close handshake goes first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.close_sent.wait(), 15)
        logger.info(
            "%s in %s: %s closed %d %s", function.name, region.code, connection.id, status, reason
        )
        if "$disconnect" in api.routes:
            disconnect = disconnect_event(connection, status, reason)
            self._spawn(self._invoke(connection, "$disconnect", disconnect))
        return socket

    async def _receive(
        self, connection: Connection, socket: web.WebSocketResponse
    ) -> tuple[int, str]:
        """Serves the connection's messages until it closes: (status, reason) of the close."""
        while True:
            message = await socket.receive()
            if message.type == WSMsgType.TEXT:
                connection.touch()
                self._spawn(self._message(connection, message.data))
            elif message.type == WSMsgType.BINARY:
                await self._close(
                    connection,
                    (int(WSCloseCode.UNSUPPORTED_DATA), "Binary frames are not supported"),
                )
            elif message.type == WSMsgType.CLOSE:
                code = int(message.data) if message.data else 1005
                if code == 1005:
                    return code, "Client-side close frame status not set"
                return code, message.extra or ""
            elif message.type == WSMsgType.ERROR:
                # aiohttp closed it already: a message over max_msg_size (1009), text that is
                # not UTF-8 (1007), a protocol error (1002).
                code = socket.close_code or int(WSCloseCode.PROTOCOL_ERROR)
                return code, _TOO_BIG[1] if code == _TOO_BIG[0] else str(message.data)
            else:  # CLOSING / CLOSED: closed by the gateway, or the client vanished
                return socket.close_code or 1006, "Connection was closed abnormally"

    async def _message(self, connection: Connection, body: str) -> None:
        api = connection.function.websocket
        assert api is not None and connection.socket is not None
        if "$default" not in api.routes:
            await self._reply(connection, "Forbidden", _request_id())
            return
        event = message_event(connection, body)
        request_id = event["requestContext"]["requestId"]
        try:
            answer = await self._invoke(connection, "$default", event)
        except TimeoutError:
            await self._reply(connection, "Endpoint request timed out", request_id)
            return
        if answer is None:
            await self._reply(connection, "Internal server error", request_id)
            return
        if "$default" in api.return_response:
            _, _, reply = _proxy_answer(answer)
            if reply:
                await self._send(connection, reply)

    async def _reply(self, connection: Connection, message: str, request_id: str) -> None:
        body = {"message": message, "connectionId": connection.id, "requestId": request_id}
        await self._send(connection, json.dumps(body).encode())

    async def _invoke(
        self, connection: Connection, route: str, event: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The Lambda proxy integration: the function's answer, None when it failed (a
        function error, an answer that is not JSON, Lambda refused the invocation);
        TimeoutError past the integration timeout (the invocation runs on)."""
        name, region = connection.function.name, connection.region.code
        invocation = asyncio.ensure_future(
            self.runtime.invoke(name, region, json.dumps(event).encode())
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(invocation), self.integration_timeout_s)
        except TimeoutError:
            invocation.add_done_callback(_consume)
            logger.info("%s %s in %s: integration timeout", name, route, region)
            if route == "$connect":
                return None
            raise
        except InvokeRejected as rejected:
            logger.info("%s %s in %s: rejected, %s", name, route, region, rejected.error_type)
            return None
        if result.function_error is not None:
            document = result.error_document
            logger.info(
                "%s %s in %s: function error %s: %s",
                name,
                route,
                region,
                document.get("errorType", "-"),
                document.get("errorMessage", ""),
            )
            return None
        try:
            answer = json.loads(result.payload)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else {"body": json.dumps(answer)}

    # --- closing -------------------------------------------------------------------------

    async def _close(self, connection: Connection, why: tuple[int, str]) -> None:
        socket = connection.socket
        if socket is None or connection.closed_by_gateway is not None:
            return
        connection.closed_by_gateway = why
        self.connections.pop(connection.id, None)
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.close(code=why[0], message=why[1].encode())
        finally:
            connection.close_sent.set()

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Closes connections idle past the idle timeout or open past the maximum duration."""
        interval = min(1.0, self.idle_timeout_s / 4, self.max_duration_s / 4)
        while self.connections:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.connections.values()):
                if (
                    now - connection.last_active >= self.idle_timeout_s
                    or now - connection.started >= self.max_duration_s
                ):
                    self._spawn(self._close(connection, _GOING_AWAY))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- @connections --------------------------------------------------------------------

    async def manage(
        self, request: web.Request, region: Region, connection_id: str
    ) -> web.Response:
        """`POST|GET|DELETE /<region>/@connections/{connectionId}`: the management API of
        `region`'s WebSocket API."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.region.code != region.code:
            return _management_error(410, "GoneException")
        if request.method == "POST":
            data = await request.read()
            if len(data) > MESSAGE_LIMIT_BYTES:
                return _management_error(
                    413,
                    "PayloadTooLargeException",
                    f"Message payload exceeds the {MESSAGE_LIMIT_BYTES} bytes limit",
                )
            if not await self._send(connection, data):
                return _management_error(410, "GoneException")
            return web.Response(status=200)
        if request.method == "GET":
            body = {
                "connectedAt": _iso(connection.connected_at_ms),
                "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
                "lastActiveAt": _iso(connection.last_active_ms),
            }
            return web.json_response(body)
        if request.method == "DELETE":
            self._spawn(
                self._close(connection, (int(WSCloseCode.OK), "Connection Closed Normally"))
            )
            return web.Response(status=204)
        return _management_error(403, "ForbiddenException", "Forbidden")

    async def _send(self, connection: Connection, data: bytes) -> bool:
        """Sends a message as a text frame (a binary one when it is not UTF-8)."""
        socket = connection.socket
        if socket is None or socket.closed or connection.closed_by_gateway is not None:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        try:
            if text is not None:
                await socket.send_str(text)
            else:
                await socket.send_bytes(data)
        except (ConnectionError, RuntimeError):
            return False
        connection.touch()
        return True


def _proxy_answer(answer: dict[str, Any] | None) -> tuple[int, CIMultiDict[str], bytes]:
    """(status, headers, body) of a WebSocket route's Lambda proxy answer; a failed
    integration is a 500."""
    if answer is None:
        return 500, CIMultiDict(), b""
    status = answer.get("statusCode", 200)
    if not isinstance(status, int) or isinstance(status, bool):
        return 500, CIMultiDict(), b""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in (answer.get("headers") or {}).items():
        headers[str(name)] = str(value)
    raw = answer.get("body")
    if raw is None:
        return status, headers, b""
    if not isinstance(raw, str):
        raw = json.dumps(raw)
    body = base64.b64decode(raw) if answer.get("isBase64Encoded") else raw.encode()
    return status, headers, body


def _management_error(status: int, error_type: str, message: str | None = None) -> web.Response:
    """An error of the management API as AWS answers it: the type in x-amzn-ErrorType (what
    botocore reads), a GoneException without a body."""
    body = b"" if message is None else json.dumps({"message": message}).encode()
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": error_type},
    )


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()

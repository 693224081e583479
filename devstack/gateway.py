"""A local stand-in for the six regional API Gateway HTTP APIs.

`http://127.0.0.1:<port>/<region>/<path>` is turned into the payload-format-2.0 event that the
region's HTTP API (stage = region code) would send, and the function that owns the route is
invoked in its Lambda execution environments (devstack.runtime: one process per environment,
one invocation at a time). Its answer is mapped back the way API Gateway maps a Lambda proxy
response.

The server is aiohttp's (asyncio): many keep-alive connections, slow clients and large bodies
wait on the event loop, never on a thread that another request needs, and responses leave with
TCP_NODELAY in one write. What API Gateway does that is reproduced here:

- routes and JWT authorizers from the function table (401 `{"message":"Unauthorized"}`
  before the function runs), unmatched routes 404 `{"message":"Not Found"}`;
- bodies over 10 MB: 413; a body that is not text, or text that is not UTF-8, reaches the
  function base64-encoded (`isBase64Encoded: true`);
- integration failures with API Gateway's own bodies: an invocation Lambda rejects
  (throttled, payload over 6 MB) 500 `{"message":"Internal Server Error"}`; a function error
  (unhandled exception, timeout, crash) or a malformed proxy response 502
  `{"message":"Internal Server Error"}`; no answer within the integration timeout (30 s)
  503 `{"message":"Service Unavailable"}` while the invocation runs on;
- an `apigw-requestid` header on every answer.

Not reproduced: API Gateway's stage throttling (429) and its access log format.

A WebSocket upgrade of a path that a function's WebSocket API serves, and `@connections`
calls, are handed to devstack.websocket (the regions' WebSocket APIs, on the same port).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import mimetypes
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvloop
from aiohttp import HttpVersion11, web

from covenant.regions import Region, load_regions
from covenant.topology import FunctionSpec, Route
from devstack import assets, wire
from devstack.assets import ASSETS_PATH
from devstack.functions import region_environment
from devstack.hop import LatencyProxy
from devstack.jwt_auth import JwtVerifier, Unauthorized, authorizer_context
from devstack.runtime import (
    FunctionConfig,
    InvokeRejected,
    LambdaRuntime,
    function_configs,
)
from devstack.websocket import WebSocketApis

logger = logging.getLogger("devstack.gateway")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
INTEGRATION_TIMEOUT_S = 30.0  # an HTTP API's default (and maximum) integration timeout
_TEXT_TYPES = ("application/json", "application/graphql", "text/", "application/x-www-form")
_INTERNAL_ERROR = {"message": "Internal Server Error"}
_UNAVAILABLE = {"message": "Service Unavailable"}
_INVOKE_PREFIX = "/2015-03-31/functions/"  # Lambda's Invoke API: <prefix>{name}/invocations


def build_event(
    *,
    region: Region,
    route: Route,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    path_parameters: Mapping[str, str],
    domain: str,
    authorizer: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The HTTP API (payload format 2.0) event for one request to `region`'s stage.
    `authorizer` is `requestContext.authorizer` when the JWT authorizer let the request in."""
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    query_parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        query_parameters[name] = (
            f"{query_parameters[name]},{value}" if name in query_parameters else value
        )
    content_type = lowered.get("content-type", "")
    text: str | None = None
    if body and content_type.startswith(_TEXT_TYPES):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # API Gateway passes bytes that are not UTF-8 base64-encoded
    epoch_ms = time.time_ns() // 1_000_000
    raw_path = f"/{region.code}{path}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.key,
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": f"local-{region.code}",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": request_id or str(uuid.uuid4()),
            "routeKey": route.key,
            "stage": region.code,
            "time": _request_time(epoch_ms // 1000),
            "timeEpoch": epoch_ms,
        },
        "isBase64Encoded": bool(body) and text is None,
    }
    if authorizer is not None:
        event["requestContext"]["authorizer"] = dict(authorizer)
    if cookies:
        event["cookies"] = cookies
    if query_parameters:
        event["queryStringParameters"] = query_parameters
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        event["body"] = text if text is not None else base64.b64encode(body).decode()
    return event


_clock: tuple[int, str] = (0, "")


def _request_time(second: int) -> str:
    """`requestContext.time` of a request in this second, formatted once a second."""
    global _clock
    if _clock[0] != second:
        _clock = (second, datetime.fromtimestamp(second, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"))
    return _clock[1]


def find_route(
    functions: Mapping[str, FunctionSpec], method: str, path: str
) -> tuple[FunctionSpec, Route, dict[str, str]] | None:
    for function in functions.values():
        for route in function.routes:
            parameters = route.match(method, path)
            if parameters is not None:
                return function, route, parameters
    return None


class MalformedResponse(ValueError):
    """A Lambda proxy response API Gateway cannot map (it answers 502)."""


def proxy_response(payload: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """API Gateway's mapping of a payload-format-2.0 Lambda response: (status, headers, body).
    A JSON value without `statusCode` is a 200 JSON body, as API Gateway infers it."""
    try:
        result = wire.loads(payload)
    except ValueError as exc:
        raise MalformedResponse("the response is not JSON") from exc
    if not (isinstance(result, dict) and "statusCode" in result):
        return 200, [("Content-Type", "application/json")], payload
    status = result["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode {status!r} is not an HTTP status")
    raw = result.get("body")
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise MalformedResponse("body must be a string")
    try:
        body = base64.b64decode(raw, validate=True) if result.get("isBase64Encoded") else None
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponse("body is not base64 although isBase64Encoded is true") from exc
    if body is None:
        body = raw.encode("utf-8", "surrogatepass")
    headers: dict[str, str] = {}
    given = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(given, dict) or not isinstance(multi, dict):
        raise MalformedResponse("headers must be an object")
    for name, value in given.items():
        if isinstance(value, dict | list):
            raise MalformedResponse(f"header {name!r} must be a string")
        headers[str(name)] = _header_text(value)
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResponse(f"multiValueHeaders {name!r} must be a list")
        headers[str(name)] = ",".join(_header_text(v) for v in values)
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    pairs = [
        (k, v) for k, v in headers.items() if k.lower() not in ("content-length", "connection")
    ]
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        raise MalformedResponse("cookies must be a list")
    pairs += [("Set-Cookie", str(cookie)) for cookie in cookies]
    return status, pairs, body


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Gateway:
    """The six regional HTTP APIs on one port, served on an asyncio event loop.

    Routes with auth "jwt" or "jwt-optional" (covenant.topology.Route) are authorized by
    `verifier`, as API Gateway's JWT authorizer does; without a verifier every token is
    refused (fail closed). Functions run in `runtime` (one is made from the function table
    and `endpoints` when none is given). `port=0` takes a free port (see `url`)."""

    def __init__(
        self,
        port: int,
        endpoints: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        verifier: JwtVerifier | None = None,
        assets: Path | None = None,
        *,
        runtime: LambdaRuntime | None = None,
        functions: Mapping[str, FunctionConfig] | None = None,
        integration_timeout_s: float = INTEGRATION_TIMEOUT_S,
        hops: Mapping[str, float] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.verifier = verifier
        self.assets = assets  # node_modules with the explorer's browser assets, if installed
        self.regions = {r.code: r for r in load_regions()}
        configs = dict(functions) if functions is not None else function_configs()
        self.functions = {name: config.spec for name, config in configs.items()}
        shared = dict(endpoints or {})
        # Every secondary region has no writer and hands writes to the primary through a hop
        # of its own (devstack.hop; docs/deploy.md), with `hops[code]` ms of round-trip time
        # (0 unless given: the tests' default; `make dev` gives the table's).
        self.hop_rtts = {
            code: float((hops or {}).get(code, 0.0))
            for code, region in self.regions.items()
            if not region.primary
        }
        self.hops: dict[str, LatencyProxy] = {}
        self.runtime = runtime or LambdaRuntime(
            configs,
            lambda config, region: region_environment(
                config.spec, region, shared, self.hop_url(region.code), self.url
            ),
        )
        # The WebSocket APIs (devstack.websocket) share the port, the paths and the runtime.
        self.websockets = WebSocketApis(self.functions, self.runtime)
        self.integration_timeout_s = integration_timeout_s
        self._runner: web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Serves on the running event loop."""
        self._loop = asyncio.get_running_loop()
        # aiohttp's low-level server: the routing here is a path split, and web.Application's
        # router, middleware chain and signals cost a quarter of aiohttp's time per request.
        runner = web.ServerRunner(
            web.Server(self._serve, request_factory=self._make_request, access_log=None),
            handle_signals=False,
        )
        self._runner = runner
        await runner.setup()
        await self.runtime.start()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024, reuse_address=True)
        await site.start()
        listening = getattr(site, "_server", None)
        if self.port == 0 and listening is not None and listening.sockets:
            self.port = int(listening.sockets[0].getsockname()[1])
        for code, rtt_ms in self.hop_rtts.items():
            proxy = LatencyProxy(f"hop {code}", (self.host, self.port), rtt_ms)
            await proxy.start()
            self.hops[code] = proxy

    def hop_url(self, region_code: str) -> str | None:
        """The Lambda endpoint a secondary region reaches the primary through, if any."""
        proxy = self.hops.get(region_code)
        return proxy.url if proxy is not None else None

    async def stop(self) -> None:
        await self.websockets.close()
        for proxy in self.hops.values():
            await proxy.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.runtime.close()

    def serve_in_thread(self) -> threading.Thread:
        """Runs the gateway on an event loop of its own thread; returns once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="gateway", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self._thread

    def shutdown(self) -> None:
        """Stops a gateway started by serve_in_thread, and its environments."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)

    def server_close(self) -> None:
        """Kept for callers of the former threaded server: shutdown() did it all."""

    # --- requests ------------------------------------------------------------------------

    def authorize(self, route: Route, authorization: str | None) -> dict[str, Any] | None:
        """`requestContext.authorizer` for a request to `route` (None: no claims), or raises
        Unauthorized: the JWT authorizer's answer."""
        if route.auth == "none" or (route.auth == "jwt-optional" and authorization is None):
            return None
        if self.verifier is None:
            raise Unauthorized("no JWT verifier: the local Cognito is off (COVENANT_COGNITO)")
        return authorizer_context(self.verifier.verify(authorization))

    def _make_request(
        self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        assert self._loop is not None
        return web.Request(
            message, payload, protocol, writer, task, self._loop, client_max_size=MAX_BODY_BYTES
        )

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11:
            if expect.lower() != "100-continue":
                return _json(417, {"message": "Expectation Failed"})
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.method == "POST" and request.path.startswith(_INVOKE_PREFIX):
            name, _, action = request.path[len(_INVOKE_PREFIX) :].partition("/")
            if name and action == "invocations":
                return await self._lambda_invoke(request, name)
        return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _apigw_request_id()
        try:
            response = await self._respond(request, request_id)
        except web.HTTPRequestEntityTooLarge:
            response = _json(413, {"message": "Request Entity Too Large"})
        response.headers["apigw-requestid"] = request_id
        logger.info(
            "%s %s -> %d (%.1f ms)",
            request.method,
            request.path_qs,
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return response

    async def _respond(self, request: web.Request, request_id: str) -> web.StreamResponse:
        path = request.path
        if path.startswith(ASSETS_PATH + "/") and request.method in ("GET", "HEAD"):
            return self._asset(path)
        _, region_code, rest = (path + "/").split("/", 2) if path != "/" else ("", "", "")
        region = self.regions.get(region_code)
        if region is None:
            return _json(
                404,
                {
                    "message": "Not Found",
                    "regions": {code: f"{self.url}/{code}/" for code in self.regions},
                },
            )
        route_path = "/" + rest.rstrip("/") if rest.strip("/") else "/"
        websocket = await self.websockets.respond(request, region, route_path)
        if websocket is not None:
            return websocket
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _json(413, {"message": "Request Entity Too Large"})
        body = await request.read()
        matched = find_route(self.functions, request.method, route_path)
        if matched is None:
            return _json(404, {"message": "Not Found"})
        function, route, parameters = matched
        try:
            authorizer = self.authorize(route, request.headers.get("Authorization"))
        except Unauthorized as refused:
            logger.info("%s %s: 401, %s", request.method, path, refused)
            return _json(401, {"message": "Unauthorized"})
        peer = request.transport.get_extra_info("peername") if request.transport else None
        event = build_event(
            region=region,
            route=route,
            method=request.method,
            path=route_path,
            query=request.query_string,
            headers=list(request.headers.items()),
            body=body,
            source_ip=peer[0] if peer else "127.0.0.1",
            path_parameters=parameters,
            domain=request.headers.get("Host", "127.0.0.1"),
            authorizer=authorizer,
            request_id=request_id,
        )
        return await self._integrate(function.name, region, wire.dumps_built(event))

    async def _integrate(self, function: str, region: Region, payload: bytes) -> web.Response:
        """The Lambda proxy integration: invoke, then map the answer or the failure."""
        invocation = asyncio.get_running_loop().create_task(
            self.runtime.invoke(function, region.code, payload)
        )
        # The invocation runs on past the integration timeout, as in AWS.
        if not await _settles_within(invocation, self.integration_timeout_s):
            invocation.add_done_callback(_consume)
            logger.info("%s in %s: integration timeout, 503", function, region.code)
            return _json(503, _UNAVAILABLE)
        try:
            result = invocation.result()
        except InvokeRejected as rejected:
            logger.info(
                "%s in %s: invocation rejected, %s: %s",
                function,
                region.code,
                rejected.error_type,
                rejected,
            )
            return _json(500, _INTERNAL_ERROR)
        if result.function_error is not None:
            document = result.error_document
            logger.info(
                "%s in %s: function error %s: %s",
                function,
                region.code,
                document.get("errorType", "-"),
                document.get("errorMessage", ""),
            )
            return _json(502, _INTERNAL_ERROR)
        try:
            status, headers, body = proxy_response(result.payload)
        except MalformedResponse as exc:
            logger.info("%s in %s: malformed Lambda proxy response: %s", function, region.code, exc)
            return _json(502, _INTERNAL_ERROR)
        response = web.Response(status=status, body=body)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    async def _lambda_invoke(self, request: web.Request, name: str) -> web.Response:
        """Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`), the way a
        function in one region calls a function in another (boto3's `lambda` client with
        AWS_ENDPOINT_URL_LAMBDA). RequestResponse and Event invocations; requests are not
        signature-checked (moto does not either)."""
        try:
            function, region = self._lambda_target(name)
        except LookupError as exc:
            return _lambda_error(404, "ResourceNotFoundException", str(exc))
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        payload = await request.read()
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            return _lambda_error(
                400, "InvalidParameterValueException", f"bad InvocationType {invocation_type}"
            )
        if invocation_type == "DryRun":
            return web.Response(status=204)
        task = asyncio.ensure_future(self.runtime.invoke(function, region.code, payload or b"{}"))
        if invocation_type == "Event":
            task.add_done_callback(_consume)
            return web.Response(status=202)
        try:
            result = await task
        except InvokeRejected as rejected:
            return _lambda_error(rejected.status, rejected.error_type, str(rejected))
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": "$LATEST",
            "x-amzn-RequestId": result.request_id,
        }
        if result.function_error is not None:
            headers["X-Amz-Function-Error"] = result.function_error
        return web.Response(status=200, body=result.payload, headers=headers)

    def _lambda_target(self, name: str) -> tuple[str, Region]:
        """(function, region) of a function name or ARN: `covenant-<region>-<function>`, or
        `arn:aws:lambda:<aws region>:<account>:function:covenant-<region>-<function>[:alias]`."""
        plain = name.split(":")[6] if name.startswith("arn:") and name.count(":") >= 6 else name
        prefix, _, rest = plain.partition("-")
        code, _, function = rest.partition("-")
        region = self.regions.get(code)
        if prefix != "covenant" or region is None or function not in self.functions:
            raise LookupError(f"Function not found: {name}")
        if name.startswith("arn:") and name.split(":")[3] != region.aws_region:
            raise LookupError(f"Function not found: {name}")
        return function, region

    def _asset(self, path: str) -> web.Response:
        modules = self.assets
        found = assets.resolve(modules, path) if modules is not None else None
        if found is None:
            return _json(404, {"message": "Not Found"})
        content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        return web.Response(
            body=found.read_bytes(),
            headers={
                "Content-Type": content_type,
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )


async def _settles_within(future: asyncio.Future[Any], timeout_s: float) -> bool:
    """Whether `future` is done within `timeout_s`; unlike wait_for, it is never cancelled."""
    if not future.done():
        waiter = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        future.add_done_callback(wake)
        timer = asyncio.get_running_loop().call_later(timeout_s, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
    return future.done()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )


def _lambda_error(status: int, error_type: str, message: str) -> web.Response:
    """An error of the Lambda API, as botocore reads it (x-amzn-ErrorType)."""
    return web.Response(
        status=status,
        body=json.dumps({"Type": "User", "message": message}).encode(),
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": error_type},
    )


def _apigw_request_id() -> str:
    # API Gateway's request ids look like "Ab1cDeFgIAMEcJw=": 16 characters.
    return base64.b64encode(os.urandom(10), b"-_").decode()[:14] + "="


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    logging.getLogger("devstack").addHandler(handler)
    logging.getLogger("devstack").setLevel(logging.INFO)

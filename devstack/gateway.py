"""A local stand-in for the six regional API Gateway HTTP APIs.

`http://127.0.0.1:<port>/<region>/<path>` is turned into the payload-format-2.0 event that the
region's HTTP API (stage = region code) would send, and the function that owns the route is
invoked in-process, in the environment it has in that region. Its answer is sent back the way
API Gateway maps a Lambda proxy response.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from covenant.regions import Region, load_regions
from covenant.topology import FunctionSpec, Route, load_functions
from devstack import assets
from devstack.assets import ASSETS_PATH
from devstack.functions import invoke
from devstack.jwt_auth import JwtVerifier, Unauthorized, authorizer_context

logger = logging.getLogger("devstack.gateway")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
_TEXT_TYPES = ("application/json", "application/graphql", "text/", "application/x-www-form")


def build_event(
    *,
    region: Region,
    route: Route,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    source_ip: str,
    path_parameters: Mapping[str, str],
    domain: str,
    authorizer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The HTTP API (payload format 2.0) event for one request to `region`'s stage.
    `authorizer` is `requestContext.authorizer` when the JWT authorizer let the request in."""
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers.items():
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
    is_text = not body or content_type.startswith(_TEXT_TYPES)
    now = datetime.now(UTC)
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
            "requestId": str(uuid.uuid4()),
            "routeKey": route.key,
            "stage": region.code,
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": not is_text,
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
        event["body"] = body.decode("utf-8") if is_text else base64.b64encode(body).decode()
    return event


def find_route(
    functions: Mapping[str, FunctionSpec], method: str, path: str
) -> tuple[FunctionSpec, Route, dict[str, str]] | None:
    for function in functions.values():
        for route in function.routes:
            parameters = route.match(method, path)
            if parameters is not None:
                return function, route, parameters
    return None


class Gateway(ThreadingHTTPServer):
    """Requests run on a fixed pool of long-lived threads, the local picture of warm Lambda
    execution environments: each keeps its database connections between invocations.

    Routes with auth "jwt" or "jwt-optional" (covenant.topology.Route) are authorized by
    `verifier`, as API Gateway's JWT authorizer does; without a verifier every token is
    refused (fail closed)."""

    allow_reuse_address = True

    def __init__(
        self,
        port: int,
        endpoints: Mapping[str, str],
        host: str = "127.0.0.1",
        workers: int = 8,
        verifier: JwtVerifier | None = None,
        assets: Path | None = None,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.verifier = verifier
        self.assets = assets  # node_modules with the explorer's browser assets, if installed
        self.regions = {r.code: r for r in load_regions()}
        self.functions = load_functions()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda")
        super().__init__((host, port), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def authorize(self, route: Route, authorization: str | None) -> dict[str, Any] | None:
        """`requestContext.authorizer` for a request to `route` (None: no claims), or raises
        Unauthorized: the JWT authorizer's answer."""
        if route.auth == "none" or (route.auth == "jwt-optional" and authorization is None):
            return None
        if self.verifier is None:
            raise Unauthorized("no JWT verifier: the local Cognito is off (COVENANT_COGNITO)")
        return authorizer_context(self.verifier.verify(authorization))

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        thread.start()
        return thread


class _RequestHandler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "covenant-local-gateway"

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        return  # access lines are written by _dispatch

    def _dispatch(self) -> None:
        started = time.perf_counter()
        status = self._handle()
        logger.info(
            "%s %s -> %d (%.1f ms)",
            self.command,
            self.path,
            status,
            (time.perf_counter() - started) * 1000,
        )

    def _handle(self) -> int:
        url = urlsplit(self.path)
        if url.path.startswith(ASSETS_PATH + "/") and self.command in ("GET", "HEAD"):
            return self._asset(url.path)
        _, region_code, rest = (url.path + "/").split("/", 2) if url.path != "/" else ("", "", "")
        region = self.server.regions.get(region_code)
        if region is None:
            return self._json(
                HTTPStatus.NOT_FOUND,
                {
                    "message": "Not Found",
                    "regions": {code: f"{self.server.url}/{code}/" for code in self.server.regions},
                },
            )
        path = "/" + rest.rstrip("/") if rest.strip("/") else "/"
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"message": "Request Entity Too Large"}
            )
        body = self.rfile.read(length) if length else b""
        matched = find_route(self.server.functions, self.command, path)
        if matched is None:
            return self._json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})
        function, route, parameters = matched
        try:
            authorizer = self.server.authorize(route, self.headers.get("Authorization"))
        except Unauthorized as refused:
            logger.info("%s %s: 401, %s", self.command, url.path, refused)
            return self._json(HTTPStatus.UNAUTHORIZED, {"message": "Unauthorized"})
        event = build_event(
            region=region,
            route=route,
            method=self.command,
            path=path,
            query=url.query,
            headers=dict(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            path_parameters=parameters,
            domain=self.headers.get("Host", "127.0.0.1"),
            authorizer=authorizer,
        )
        try:
            result = invoke(function, region, event, self.server.endpoints)
        except Exception:
            logger.exception("function %s raised in region %s", function.name, region.code)
            return self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"message": "Internal Server Error"}
            )
        return self._send_proxy_response(result)

    def _asset(self, path: str) -> int:
        modules = self.server.assets
        found = assets.resolve(modules, path) if modules is not None else None
        if found is None:
            return self._json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})
        payload = found.read_bytes()
        content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        return int(HTTPStatus.OK)

    def _send_proxy_response(self, result: Any) -> int:
        if not (isinstance(result, dict) and "statusCode" in result):
            # API Gateway infers a 200 JSON response from a bare return value.
            return self._json(HTTPStatus.OK, result)
        status = int(result["statusCode"])
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
        self.send_response(status)
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(name)] = ",".join(str(v) for v in values)
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        for cookie in result.get("cookies") or []:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        return status

    def _json(self, status: int, body: Any) -> int:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        return int(status)


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    logging.getLogger("devstack").addHandler(handler)
    logging.getLogger("devstack").setLevel(logging.INFO)

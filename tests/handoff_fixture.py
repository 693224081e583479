"""A stand-in for the primary region's Lambda service, for the hop (covenant.handoff).

It serves the Lambda Invoke API's wire format on 127.0.0.1
(`POST /2015-03-31/functions/{FunctionName}/invocations`: 200 with the payload; a function
error as 200 with `X-Amz-Function-Error: Unhandled` and `{"errorMessage", "errorType"}`; 429
`TooManyRequestsException` when throttled; 413 `RequestTooLargeException` over 6 MB) and runs
the named primary function's handler in-process, in the primary region's environment. A
secondary's function reaches it through boto3's standard `AWS_ENDPOINT_URL_LAMBDA`, as it will
reach the devstack's Lambda-like runtime once that serves the Invoke API: this one file is then
swapped for it.

Failure modes for the tests: `throttle`, `crash` (the handler ran, then the function failed),
`slow` (the handler ran, then the answer comes after the caller's read timeout), `drop` (the
handler ran, then the connection closes without an answer).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

from covenant.db import record_statements
from covenant.regions import get_region, primary_region
from devstack.functions import get_function, invoke

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
_PATH_PREFIX = "/2015-03-31/functions/"


@dataclass
class Invocation:
    function: str  # covenant-iad-graphql
    event: dict[str, Any]
    statements: list[str] = field(default_factory=list)


class PrimaryLambda:
    """The primary region's functions behind the Invoke API (see the module docstring)."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.environment: dict[str, str] = dict(environment)
        self.mode = "normal"
        self.slow_s = 0.0
        self.invocations: list[Invocation] = []
        self._extra: dict[str, str] = {}
        self._users = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> PrimaryLambda:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @contextmanager
    def configured(self, extra: Mapping[str, str]) -> Iterator[None]:
        """The primary's functions get `extra` too while the block runs (the same settings
        as the calling secondary: both regions deploy the same configuration). Blocks may
        overlap (concurrent callers): the settings stay until the last one ends."""
        with self._lock:
            self._users += 1
            self._extra = {**self._extra, **extra}
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._extra = {}

    @contextmanager
    def failing(self, mode: str, slow_s: float = 0.0) -> Iterator[None]:
        self.mode, self.slow_s = mode, slow_s
        try:
            yield
        finally:
            self.mode, self.slow_s = "normal", 0.0

    @contextmanager
    def recording(self) -> Iterator[list[Invocation]]:
        """The invocations that arrive while the block runs."""
        seen: list[Invocation] = []
        start = len(self.invocations)
        try:
            yield seen
        finally:
            seen.extend(self.invocations[start:])

    def run(self, function_name: str, event: dict[str, Any]) -> dict[str, Any]:
        """Runs the primary function's handler (what a real invocation does)."""
        name = function_name.rsplit(":function:", 1)[-1].split(":")[0]
        _, region_code, function = name.split("-", 2)
        region = get_region(region_code)
        if not region.primary or region.code != primary_region().code:
            raise LookupError(f"{name} is not a function of the primary region")
        invocation = Invocation(name, event)
        with self._lock:
            self.invocations.append(invocation)
            environment = {**self.environment, **self._extra}
        with record_statements() as statements:
            try:
                result: dict[str, Any] = invoke(get_function(function), region, event, environment)
            finally:
                invocation.statements.extend(statements)
        return result

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes: with Nagle's algorithm on, the body
                # waits for the client's delayed ACK (40 ms), which no Lambda endpoint adds.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                return  # the test output stays quiet

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not (self.path.startswith(_PATH_PREFIX) and self.path.endswith("/invocations")):
                    self._send(404, {"message": "unknown path"}, "ResourceNotFoundException")
                    return
                name = unquote(self.path[len(_PATH_PREFIX) : -len("/invocations")])
                if owner.mode == "throttle":
                    self._send(
                        429,
                        {
                            "Type": "User",
                            "message": "Rate Exceeded.",
                            "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                        },
                        "TooManyRequestsException",
                    )
                    return
                if len(raw) > MAX_PAYLOAD_BYTES:
                    self._send(
                        413,
                        {"Type": "User", "message": "Request must be smaller than 6291456 bytes"},
                        "RequestTooLargeException",
                    )
                    return
                try:
                    event = json.loads(raw)
                    payload: Any = owner.run(name, event)
                    function_error = None
                except LookupError as exc:
                    self._send(404, {"message": str(exc)}, "ResourceNotFoundException")
                    return
                except Exception as exc:
                    payload = {
                        "errorMessage": str(exc),
                        "errorType": type(exc).__name__,
                        "stackTrace": traceback.format_exception(exc),
                    }
                    function_error = "Unhandled"
                if owner.mode == "crash":
                    payload = {"errorMessage": "simulated crash", "errorType": "Runtime.ExitError"}
                    function_error = "Unhandled"
                elif owner.mode == "slow":
                    time.sleep(owner.slow_s)
                elif owner.mode == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                body = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("X-Amz-Executed-Version", "$LATEST")
                    if function_error:
                        self.send_header("X-Amz-Function-Error", function_error)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the caller gave up (its read timed out): as Lambda, drop it
                    self.close_connection = True

            def _send(self, status: int, body: dict[str, Any], error_type: str) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("x-amzn-ErrorType", error_type)
                self.end_headers()
                self.wfile.write(raw)

        return Handler


def secondary_environment(function: str) -> dict[str, str]:
    """What a secondary region's function gets for the hop (the devstack's contract): the
    primary function to invoke, and no writer."""
    return {
        "COVENANT_PRIMARY_FUNCTION": f"covenant-{primary_region().code}-{function}",
        "DATABASE_URL": "",
    }


@pytest.fixture(scope="session")
def primary_lambda(servers: Any) -> Iterator[PrimaryLambda]:
    """The primary region's Lambda service on 127.0.0.1; every secondary function of the test
    session reaches it through AWS_ENDPOINT_URL_LAMBDA (boto3 reads it from the process)."""
    server = PrimaryLambda(
        {"DATABASE_URL": servers.writer_url, "DATABASE_READER_URL": servers.reader_url}
    ).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_LAMBDA", server.url)
        patch.setenv("AWS_ACCESS_KEY_ID", "local")  # boto3 signs every request
        patch.setenv("AWS_SECRET_ACCESS_KEY", "local")
        yield server
    server.stop()

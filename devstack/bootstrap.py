"""The inside of one local Lambda execution environment (`python -m devstack.bootstrap`).

devstack.runtime starts this module as a process per environment, with the function's
environment variables already set, as Lambda starts its runtime. It imports the handler once
(the init phase), says how long that took, then serves one invocation at a time until its
parent closes the pipe or kills it.

Frames on the pipe: devstack.wire. Requests come on stdin; answers leave on a duplicate of
the original stdout, and stdout itself is pointed at stderr, so what the function prints (its
JSON logs, EMF metrics) goes to the log stream as in Lambda, never into the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

from devstack import wire

NICE_VARIABLE = "COVENANT_LAMBDA_NICE"


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next request, or None once the runtime has closed the pipe."""
    prefix = stream.read(wire.PREFIX.size)  # a blocking BufferedReader: all of it, or EOF
    if len(prefix) < wire.PREFIX.size:
        return None
    header_size, payload_size = wire.PREFIX.unpack(prefix)
    body = stream.read(header_size + payload_size)
    if len(body) < header_size + payload_size:
        return None
    decoded: dict[str, Any] = wire.loads(body[:header_size])
    return decoded, body[header_size:]


def write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    stream.write(wire.frame(header, payload))
    stream.flush()


class LambdaContext:
    """The context object the managed Python runtime passes to a handler."""

    # The function's configuration does not change during an environment's life: read once.
    _configuration: tuple[str, str, str, str, str, str] | None = None

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        if LambdaContext._configuration is None:
            environ = os.environ
            LambdaContext._configuration = (
                environ["AWS_LAMBDA_FUNCTION_NAME"],
                environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
                environ.get("COVENANT_FUNCTION_ARN", ""),
                environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
                environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
                environ.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
            )
        (
            self.function_name,
            self.function_version,
            self.invoked_function_arn,
            self.memory_limit_in_mb,
            self.log_group_name,
            self.log_stream_name,
        ) = LambdaContext._configuration
        self.aws_request_id = request_id
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def error_payload(exc: BaseException, error_type: str | None = None) -> bytes:
    """The error document the Python runtime returns for an unhandled exception."""
    return json.dumps(
        {
            "errorMessage": str(exc),
            "errorType": error_type or type(exc).__name__,
            "requestId": "",
            "stackTrace": traceback.format_tb(exc.__traceback__),
        }
    ).encode()


def _log_error(exc: BaseException, label: str) -> None:
    # The runtime's own line for an unhandled error, in the log stream.
    print(f"[ERROR] {label}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    traceback.print_exception(exc, file=sys.stderr)


def load_handler(name: str) -> Callable[[Any, Any], Any]:
    module_name, _, attribute = name.rpartition(".")
    module = importlib.import_module(module_name)
    handler: Callable[[Any, Any], Any] = getattr(module, attribute)
    return handler


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    started = time.perf_counter()
    try:
        handler = load_handler(os.environ["_HANDLER"])
    except Exception as exc:
        kind = (
            "Runtime.ImportModuleError"
            if isinstance(exc, ImportError)
            else "Runtime.HandlerNotFound"
        )
        if not isinstance(exc, (ImportError, AttributeError)):
            kind = f"Runtime.Unknown ({type(exc).__name__})"
        _log_error(exc, "init failed")
        write_frame(answers, {"status": "init_error"}, error_payload(exc, kind))
        return
    write_frame(answers, {"status": "ready", "initMs": (time.perf_counter() - started) * 1000})
    while True:
        frame = read_frame(requests)
        if frame is None:
            return
        header, payload = frame
        started = time.perf_counter()
        status = "ok"
        try:
            event = wire.loads(payload)
            result = handler(event, LambdaContext(header["requestId"], header["deadlineMs"]))
            try:
                body = wire.dumps(result)
            except (TypeError, ValueError) as exc:
                status = "error"
                body = error_payload(
                    RuntimeError(f"Unable to marshal response: {exc}"), "Runtime.MarshalError"
                )
        except Exception as exc:
            _log_error(exc, f"RequestId {header['requestId']}")
            status, body = "error", error_payload(exc)
        write_frame(
            answers,
            {
                "status": status,
                "durationMs": (time.perf_counter() - started) * 1000,
                "maxRssKb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },
            body,
        )


def main() -> None:
    # The stack's CPU priority for this environment (devstack.runtime), not a variable of
    # the function's: taken out before its init.
    niceness = os.environ.pop(NICE_VARIABLE, "")
    if niceness:
        os.nice(int(niceness))
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and the function's log lines go to the log stream
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    for path in reversed([p for p in os.environ.get("COVENANT_CODE_PATH", "").split(":") if p]):
        sys.path.insert(0, path)
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()

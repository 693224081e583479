"""One real PostgreSQL (primary + streaming replica) and one real nats-server for the whole
test session, started the way `make dev` starts them, on free ports in a temporary folder."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from covenant import db
from covenant.db import Database, Role
from covenant.migrate import migrate
from covenant.seed import seed
from devstack.nats import NatsServer
from devstack.postgres import PostgresCluster
from devstack.processes import free_port, hand_over, service_user, wait_until

from .handoff_fixture import primary_lambda  # noqa: F401 - the hop's primary, for every test

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Servers:
    postgres: PostgresCluster
    nats: NatsServer
    data_dir: Path

    @property
    def writer_url(self) -> str:
        return self.postgres.primary.url

    @property
    def reader_url(self) -> str:
        return self.postgres.replica.url


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    # Not under pytest's tmp folder: pytest keeps that 0700, and when tests run as root the
    # servers run as an unprivileged user that must reach their data folder.
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-test-"))
    data_dir.chmod(0o755)
    hand_over(data_dir, service_user())
    postgres = PostgresCluster(data_dir / "postgres", free_port(), free_port(), durable=False)
    nats = NatsServer(data_dir / "nats", free_port(), free_port())
    postgres.start()
    try:
        nats.start()
        try:
            os.environ["DATABASE_URL"] = postgres.primary.url
            os.environ["DATABASE_READER_URL"] = postgres.replica.url
            os.environ["NATS_URL"] = nats.url
            migrate()
            seed()
            _wait_for_replica()  # every test starts with the seed data on the reader too
            yield Servers(postgres, nats, data_dir)
        finally:
            db.close_all()
            nats.stop()
    finally:
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def scratch_db(servers) -> Iterator[Database]:
    """A fresh, empty database on the primary, dropped afterwards."""
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = Database(
        Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with admin.session() as session:
        session.run(f"CREATE DATABASE {name}")
    scratch = Database(
        Role.WRITER,
        servers.writer_url.rsplit("/", 1)[0] + f"/{name}",
        statement_timeout_ms=10000,
        connect_timeout_s=3,
    )
    yield scratch
    scratch.close()
    with admin.session() as session:
        session.run(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def writer(servers: Servers) -> Iterator[db.Database]:
    yield db.writer()


@pytest.fixture
def reader(servers: Servers) -> Iterator[db.Database]:
    yield db.reader()


@pytest.fixture(scope="session")
def wait_for_replica(servers: Servers) -> Callable[[], None]:
    """Returns a function that blocks until the replica has replayed all the primary wrote."""
    return _wait_for_replica


def _wait_for_replica() -> None:
    with db.writer().session() as session:
        target = session.scalar("SELECT pg_current_wal_insert_lsn()::text")

    def caught_up() -> bool:
        with db.reader().session() as session:
            return bool(
                session.scalar(
                    "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=target
                )
            )

    wait_until(caught_up, 10, "replica catch-up")

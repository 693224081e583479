"""Holding the streaming replica back, for the tests of what a lagging replica must not hide."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from covenant import db


@contextmanager
def replay_paused(servers: Any) -> Iterator[None]:
    """The replica receives but does not apply: it falls behind the primary for the block."""
    replica = db.Database(
        db.Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    with replica.session() as session:
        session.run("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with replica.session() as session:
            session.run("SELECT pg_wal_replay_resume()")
        replica.close()

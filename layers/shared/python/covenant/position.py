"""Read-your-writes in every region: the position token.

Every write answer carries the primary's WAL position after its commit (`Covenant-Position`,
opaque to clients). A read that sends it back (`Covenant-Min-Position`) is served from the
region's replica once the replica has replayed past it, waiting a bounded time; past that
bound it is served by the primary (covenant.handoff from a secondary, the writer in the
primary region). The token is PostgreSQL's LSN text ("16/B374D848"): clients must not parse
it, only send it back.
"""

from __future__ import annotations

import re
import time

from covenant.config import env_int
from covenant.db import Session, reader

HEADER = "Covenant-Position"
MIN_HEADER = "Covenant-Min-Position"
_TOKEN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_POLL_S = 0.02

# Taken in the session that committed, after its COMMIT returned. The insert position, not
# pg_current_wal_lsn() (what has been written out): with synchronous_commit off a commit
# returns before its record is written, and a token below the record would let a replica
# that has not replayed the commit serve the read. A replica reaches the insert position once
# the WAL writer has sent it (wal_writer_delay, 200 ms by default, at worst).
_AFTER_COMMIT = "SELECT pg_current_wal_insert_lsn()::text"
# A reader in recovery (a replica) has the write once it replayed past the token; a reader
# that is the primary itself (one-node setups) has everything it ever wrote.
_REACHED = """
SELECT CASE WHEN pg_is_in_recovery()
            THEN COALESCE(pg_last_wal_replay_lsn() >= CAST(:position AS pg_lsn), false)
            ELSE pg_current_wal_lsn() >= CAST(:position AS pg_lsn)
       END
"""


class BadPosition(ValueError):
    """The client sent a Covenant-Min-Position this API did not issue."""

    def __init__(self) -> None:
        super().__init__(
            f"{MIN_HEADER} must be a {HEADER} this API returned (e.g. '0/3000060'), sent back "
            "unchanged"
        )


def parse(raw: object) -> str | None:
    """The token a client sent (None when it sent none), or BadPosition."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadPosition
    token = raw.strip()
    if not token:
        return None
    if not _TOKEN.match(token):
        raise BadPosition
    high, _, low = token.partition("/")
    return f"{int(high, 16):X}/{int(low, 16):X}"


def after_commit(session: Session) -> str:
    """The position of everything committed so far on the primary, from the session that
    committed (the caller's writer session)."""
    return str(session.scalar(_AFTER_COMMIT))


def wait_budget_s() -> float:
    return env_int("COVENANT_MIN_POSITION_WAIT_MS", 1000) / 1000


def replica_has(token: str, *, budget_s: float | None = None) -> bool:
    """Whether this region's reader has replayed past `token`, polling every 20 ms for at most
    `budget_s` (COVENANT_MIN_POSITION_WAIT_MS, 1 s by default). False: serve from the primary."""
    give_up = time.monotonic() + (wait_budget_s() if budget_s is None else budget_s)
    with reader().session() as session:
        while True:
            if session.scalar(_REACHED, position=token):
                return True
            if time.monotonic() >= give_up:
                return False
            time.sleep(_POLL_S)

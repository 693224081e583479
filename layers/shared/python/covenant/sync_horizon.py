"""How far back an offline-sync cursor stays valid.

Deletes reach clients as tombstones, kept for a retention period (SYNC_TOMBSTONE_RETENTION_S).
Pruning removes older tombstones and raises `sync_horizon.pruned_through` to the largest change
number it removed, in one transaction. A cursor below that mark may have missed a delete: such
a client gets a full replacement pull (functions/mobile/sync). The push path of the mobile
function prunes now and then; any scheduled job may call `prune_tombstones` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from covenant.db import Database
from covenant.uow import UnitOfWork

_PRUNE = """
WITH pruned AS (
    DELETE FROM tombstones
    WHERE deleted_at < now() - make_interval(secs => CAST(:retention_s AS double precision))
      AND change_seq IS NOT NULL
    RETURNING change_seq
), mark AS (
    UPDATE sync_horizon
    SET pruned_through = GREATEST(pruned_through, (SELECT max(change_seq) FROM pruned)),
        pruned_at = now()
    WHERE EXISTS (SELECT 1 FROM pruned)
    RETURNING pruned_through
)
SELECT (SELECT count(*) FROM pruned) AS pruned,
       COALESCE((SELECT pruned_through FROM mark),
                (SELECT pruned_through FROM sync_horizon)) AS pruned_through
"""


@dataclass(frozen=True)
class PruneResult:
    pruned: int
    pruned_through: int


def prune_tombstones(retention_s: int, database: Database | None = None) -> PruneResult:
    """Deletes the tombstones older than `retention_s` seconds and raises the horizon."""
    with UnitOfWork(database) as uow:
        row = uow.one(_PRUNE, retention_s=retention_s)
    assert row is not None
    return PruneResult(pruned=int(row["pruned"]), pruned_through=int(row["pruned_through"]))

"""How far the database's replicas lag behind the writer, read on the writer.

One function, `replica_lags`, picks the source the database has:

- **Aurora Global Database** (the functions exist): `aurora_global_db_instance_status()`, one
  row per instance of every cluster of the global database, `visibility_lag_in_msec` how far
  that instance is behind the writer, and `aurora_global_db_status()`, one row per region,
  `durability_lag_in_msec` how far that region's storage is behind the primary's (-1 for the
  primary itself). AWS's pages describe the instance figure as lag behind the writer, its
  MySQL twin as lag behind the instance's own (secondary) volume; a replica is taken to be as
  far behind as the larger of the two, so neither reading hides a lagging region.
- **PostgreSQL streaming replication** (locally: devstack's replica): `pg_stat_replication`
  on the primary, `replay_lag` per standby (NULL once it has replayed everything: no lag). A
  stuck replay shows a lag that grows with each of the standby's status messages.

Both need the monitoring privileges the migrator grants the bridge's role
(`migrator.handler._grant_monitoring`, for DATABASE_MONITOR_USERS): without them PostgreSQL
hides the other sessions' replication figures (each column NULL), which is reported as
`MonitoringNotAllowed` rather than read as "no lag".
"""

from __future__ import annotations

from dataclasses import dataclass

from pg8000.exceptions import DatabaseError

from covenant.db import AURORA_LAG_FUNCTIONS, Session, sqlstate

_HAS_AURORA = f"SELECT to_regprocedure('{AURORA_LAG_FUNCTIONS[0]}') IS NOT NULL"

_AURORA = """
SELECT i.server_id AS replica,
       i.aws_region AS region,
       GREATEST(i.visibility_lag_in_msec, NULLIF(g.durability_lag_in_msec, -1))::float8 / 1000
           AS lag_s
FROM aurora_global_db_instance_status() AS i
LEFT JOIN aurora_global_db_status() AS g ON g.aws_region = i.aws_region
WHERE i.session_id <> 'MASTER_SESSION_ID'
ORDER BY i.aws_region, i.server_id
"""

# `state` is NULL on every row for a role that may not read the walsenders' details.
_STREAMING = """
SELECT application_name AS replica,
       state,
       COALESCE(EXTRACT(EPOCH FROM replay_lag)::float8, 0.0) AS lag_s
FROM pg_stat_replication
ORDER BY application_name, pid
"""


_INSUFFICIENT_PRIVILEGE = "42501"


class MonitoringNotAllowed(PermissionError):
    """The database role may not read its replicas' status."""


@dataclass(frozen=True)
class ReplicaLag:
    replica: str  # the Aurora instance, or the standby's application_name
    region: str | None  # the AWS region of an Aurora instance; None for a local standby
    lag_s: float

    @property
    def name(self) -> str:
        return f"{self.region}/{self.replica}" if self.region else self.replica


def replica_lags(session: Session) -> list[ReplicaLag]:
    """Every replica's lag behind the writer, from the source this database has."""
    if session.scalar(_HAS_AURORA):
        try:
            rows = session.rows(_AURORA)
        except DatabaseError as exc:
            if sqlstate(exc) != _INSUFFICIENT_PRIVILEGE:
                raise
            raise MonitoringNotAllowed(
                f"this role may not execute {' or '.join(AURORA_LAG_FUNCTIONS)}: grant it EXECUTE "
                "(the migrator does, for DATABASE_MONITOR_USERS)"
            ) from exc
        return [
            ReplicaLag(str(row["replica"]), str(row["region"]), float(row["lag_s"]))
            for row in rows
            if row["lag_s"] is not None  # an instance that has not reported yet
        ]
    rows = session.rows(_STREAMING)
    if any(row["state"] is None for row in rows):
        raise MonitoringNotAllowed(
            "pg_stat_replication hides the standbys' figures from this role: grant it "
            "pg_read_all_stats (the migrator does, for DATABASE_MONITOR_USERS)"
        )
    return [ReplicaLag(str(row["replica"]), None, float(row["lag_s"])) for row in rows]

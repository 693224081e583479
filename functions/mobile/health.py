"""Health of a region as the app sees it: can its database reader answer, how fast, how stale;
in a secondary region also whether the hop to the primary region's function answers (the
primary's writer is never asked from here: a secondary has none)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from covenant import handoff
from covenant.config import settings
from covenant.db import DatabaseUnavailable, reader
from covenant.handoff import HopFailed

logger = logging.getLogger(__name__)

# On a PostgreSQL standby: seconds since the last replayed commit, or 0 when it streams from
# its primary and has replayed everything it received (an idle primary sends nothing, which is
# not lag). A restarted standby reports as received only the start of the segment it streams
# from, below what it already replayed: that too is caught up. One that is not streaming cannot
# know, so the age of its last commit counts. On a primary: NULL.
_READER_PROBE = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE
           WHEN NOT pg_is_in_recovery() THEN NULL
           WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
                AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0.0
           ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS replica_lag_s
"""


@dataclass(frozen=True)
class HealthReport:
    status: str  # healthy | degraded | unhealthy
    latency_ms: float
    region: str
    replica_lag_s: float | None
    reasons: tuple[str, ...]
    primary: dict[str, Any] | None = None  # the hop's check, in a secondary region

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unhealthy" else 200

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "latency": round(self.latency_ms, 2),
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "region": self.region,
            "checks": {"database": {"replicaLagSeconds": self.replica_lag_s}},
        }
        if self.primary is not None:
            body["checks"]["primary"] = self.primary
        if self.reasons:
            body["reason"] = "; ".join(self.reasons)
        return body


def check_health(event: dict[str, Any]) -> HealthReport:
    """The region's health; `event` (this GET /health) is what a secondary sends the primary
    region's function to check the hop."""
    report = _check_reader()
    if handoff.is_primary() or handoff.handed_off_from(event) is not None:
        return report
    primary, problem = _check_primary(event)
    reasons = (*report.reasons, problem) if problem else report.reasons
    status = "degraded" if report.status == "healthy" and problem else report.status
    return HealthReport(
        status, report.latency_ms, report.region, report.replica_lag_s, reasons, primary
    )


def _check_primary(event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Whether the primary region's function answers through the hop. A hop that fails leaves
    the region degraded, not unhealthy: its reads still work, and failing every secondary over
    because the primary is away would send all traffic to the region that is away."""
    started = time.perf_counter()
    try:
        answer = handoff.hand_off(event, "health")
    except HopFailed as failure:
        logger.warning("health: %s", failure)
        latency = round((time.perf_counter() - started) * 1000, 2)
        return {
            "reachable": False,
            "latency": latency,
        }, f"hop to the primary region failed ({failure.kind})"
    latency = round((time.perf_counter() - started) * 1000, 2)
    try:
        status = json.loads(answer.get("body") or "{}").get("status")
    except (ValueError, AttributeError):
        status = None
    return {"reachable": True, "latency": latency, "status": status}, None


def _check_reader() -> HealthReport:
    config = settings()
    started = time.perf_counter()
    try:
        with reader().session() as session:
            probe = session.one(_READER_PROBE)
    except DatabaseUnavailable as exc:
        logger.warning("health: database reader unavailable: %s", exc)
        return _unhealthy(started, config.region, "database reader unreachable")
    except Exception:
        logger.exception("health: database probe failed")
        return _unhealthy(started, config.region, "database reader probe failed")
    latency_ms = (time.perf_counter() - started) * 1000
    lag = probe["replica_lag_s"] if probe else None
    reasons: list[str] = []
    if latency_ms > config.health_latency_budget_ms:
        reasons.append(
            f"database latency {latency_ms:.0f} ms over {config.health_latency_budget_ms} ms"
        )
    if lag is not None and lag > config.health_max_replica_lag_s:
        reasons.append(f"replica lag {lag:.1f} s over {config.health_max_replica_lag_s} s")
    return HealthReport(
        status="degraded" if reasons else "healthy",
        latency_ms=latency_ms,
        region=config.region,
        replica_lag_s=None if lag is None else round(float(lag), 3),
        reasons=tuple(reasons),
    )


def _unhealthy(started: float, region: str, reason: str) -> HealthReport:
    return HealthReport(
        status="unhealthy",
        latency_ms=(time.perf_counter() - started) * 1000,
        region=region,
        replica_lag_s=None,
        reasons=(reason,),
    )

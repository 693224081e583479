"""Health of a region as the app sees it, one check per dependency:

- the database reader (every region): can it answer, how fast, how stale; down is unhealthy;
- in the primary region, the writer (down, or read-only: writes fail everywhere) and NATS
  (unreachable: events wait in the outbox, subscribers hear nothing); either is degraded, not
  unhealthy: reads still work, and failing the region over would not bring them back;
- in a secondary region, the hop to the primary region's function, and that function's
  writer and NATS checks (what this region's writes need there): either one down, or the
  primary unreachable, leaves this region degraded too (a secondary has no writer and never
  talks to NATS).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from covenant import handoff
from covenant.config import env, settings
from covenant.db import DatabaseUnavailable, reader, writer
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
    dependencies: dict[str, dict[str, Any]] | None = None  # writer and NATS, in the primary

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
        body["checks"].update(self.dependencies or {})
        if self.reasons:
            body["reason"] = "; ".join(self.reasons)
        return body


def check_health(event: dict[str, Any]) -> HealthReport:
    """The region's health; `event` (this GET /health) is what a secondary sends the primary
    region's function to check the hop."""
    report = _check_reader()
    if handoff.is_primary():
        checks = {"writer": _check_writer(), "nats": _check_nats()}
        problems = [check["problem"] for check in checks.values() if "problem" in check]
        return _with_problems(report, problems, dependencies=checks)
    if handoff.handed_off_from(event) is not None:
        return report
    primary, problem = _check_primary(event)
    return _with_problems(report, [problem] if problem else [], primary=primary)


def _with_problems(report: HealthReport, problems: list[str], **checks: Any) -> HealthReport:
    status = "degraded" if report.status == "healthy" and problems else report.status
    return HealthReport(
        status,
        report.latency_ms,
        report.region,
        report.replica_lag_s,
        (*report.reasons, *problems),
        **checks,
    )


def _check_writer() -> dict[str, Any]:
    """The primary's writer: reachable, and writable (a writer that came back as a standby,
    or is still in recovery, refuses every write)."""
    started = time.perf_counter()
    try:
        with writer().session() as session:
            in_recovery = bool(session.scalar("SELECT pg_is_in_recovery()"))
    except Exception as exc:  # unreachable, or it answered with an error: writes fail either way
        logger.warning("health: database writer unavailable: %s", exc)
        return {
            "reachable": False,
            "latency": _since(started),
            "problem": "database writer unreachable",
        }
    check: dict[str, Any] = {
        "reachable": True,
        "latency": _since(started),
        "writable": not in_recovery,
    }
    if in_recovery:
        check["problem"] = "database writer is read-only (in recovery)"
    return check


_NATS_PROBE_TIMEOUT_S = 1.0
# How long a NATS check's answer stands for later requests in this execution environment: a
# storm of health checks (a load balancer's, a dashboard's, an attacker's) opens at most one
# connection to NATS a second per environment instead of one per request, and an answer is
# never more than a second stale. Failures are remembered too, or a storm against a NATS that
# is down would wait out a probe timeout per request.
NATS_CHECK_TTL_S = 1.0
_nats_checks: dict[str, tuple[float, dict[str, Any]]] = {}  # NATS_URL -> (taken at, check)


def _check_nats() -> dict[str, Any]:
    """Whether a NATS server answers with its greeting (INFO, sent before any credentials: this
    function holds none) and has JetStream on, as probed at most NATS_CHECK_TTL_S ago. Without
    NATS_URL (a deployment that gives this function none) the check is absent rather than
    guessed."""
    url = env("NATS_URL")
    if not url:
        return {"configured": False}
    now = time.monotonic()
    taken = _nats_checks.get(url)
    if taken is not None and now - taken[0] < NATS_CHECK_TTL_S:
        return {**taken[1], "ageMs": round((now - taken[0]) * 1000, 2)}
    check = _probe_nats(url)
    _nats_checks.clear()  # one URL per environment: nothing else is worth keeping
    _nats_checks[url] = (time.monotonic(), check)
    return {**check, "ageMs": 0.0}


def _probe_nats(url: str) -> dict[str, Any]:
    """One probe: NATS_URL may list a cluster's servers; the first that answers counts."""
    started = time.perf_counter()
    failures = []
    for server in [part.strip() for part in url.split(",") if part.strip()]:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            info = _nats_info(parts.hostname or "127.0.0.1", parts.port or 4222)
        except (OSError, ValueError) as exc:
            failures.append(f"{parts.hostname}:{parts.port or 4222}: {exc or type(exc).__name__}")
            continue
        check: dict[str, Any] = {
            "reachable": True,
            "latency": _since(started),
            "jetstream": bool(info.get("jetstream")),
        }
        if not check["jetstream"]:
            check["problem"] = "NATS answers without JetStream: events wait in the outbox"
        return check
    logger.warning("health: NATS unreachable: %s", "; ".join(failures))
    return {
        "reachable": False,
        "latency": _since(started),
        "problem": "NATS unreachable: events wait in the outbox",
    }


def _nats_info(host: str, port: int) -> dict[str, Any]:
    """The INFO a NATS server greets every connection with (`INFO {json}\\r\\n`)."""
    with socket.create_connection((host, port), timeout=_NATS_PROBE_TIMEOUT_S) as connection:
        connection.settimeout(_NATS_PROBE_TIMEOUT_S)
        greeting = b""
        while b"\r\n" not in greeting and len(greeting) < 64 * 1024:
            chunk = connection.recv(4096)
            if not chunk:
                raise ConnectionError("closed before its greeting")
            greeting += chunk
    line = greeting.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ValueError("not a NATS server's greeting")
    info = json.loads(line[5:])
    if not isinstance(info, dict):
        raise ValueError("not a NATS server's greeting")
    return info


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


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
        report = json.loads(answer.get("body") or "{}")
        status, checks = report.get("status"), report.get("checks") or {}
        # What this region's writes need there: the writer, and NATS for their events (the
        # primary's own reader, slow or lagging, is not this region's concern).
        problems = [
            str(checks[name]["problem"])
            for name in ("writer", "nats")
            if isinstance(checks.get(name), dict) and checks[name].get("problem")
        ]
    except (ValueError, AttributeError):
        status, problems = None, []
    check = {"reachable": True, "latency": latency, "status": status}
    return check, ("primary region: " + "; ".join(problems)) if problems else None


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

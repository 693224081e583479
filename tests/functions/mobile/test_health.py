"""GET /<region>/health through the deployed handler, with real-format API Gateway events."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from pathlib import Path

import pytest

from covenant import db
from covenant.regions import get_region, region_codes
from devstack.functions import get_function, invoke
from devstack.processes import free_port, wait_until
from mobile import health

from ...handoff_fixture import PrimaryLambda, secondary_environment

EVENT = json.loads((Path(__file__).parents[3] / "events" / "health.json").read_text())


@pytest.fixture(autouse=True)
def _hop(primary_lambda: PrimaryLambda) -> PrimaryLambda:
    return primary_lambda  # a secondary's health asks the primary's function (the hop)


def _health(servers, region: str = "ams", **env: str) -> tuple[int, dict]:
    event = copy.deepcopy(EVENT)
    event["rawPath"] = f"/{region}/health"
    event["requestContext"]["stage"] = region
    endpoints = {
        "DATABASE_URL": servers.writer_url,
        "DATABASE_READER_URL": servers.reader_url,
        **({} if get_region(region).primary else secondary_environment("mobile")),
        **env,
    }
    response = invoke(get_function("mobile"), get_region(region), event, endpoints)
    return response["statusCode"], json.loads(response["body"])


@pytest.mark.parametrize("region", region_codes())
def test_healthy_in_every_region(servers, region: str) -> None:
    status, body = _health(servers, region)
    assert status == 200
    assert body["status"] == "healthy"
    assert body["region"] == region
    assert isinstance(body["latency"], int | float) and body["latency"] >= 0
    assert body["timestamp"].endswith("Z")
    assert 0 <= body["checks"]["database"]["replicaLagSeconds"] < 5
    assert "reason" not in body
    if get_region(region).primary:
        assert "primary" not in body["checks"]  # no hop to check: the writer and NATS instead
        writer, nats = body["checks"]["writer"], body["checks"]["nats"]
        assert writer["reachable"] is True and writer["writable"] is True, writer
        assert nats["reachable"] is True and nats["jetstream"] is True, nats
    else:
        primary = body["checks"]["primary"]
        assert primary["reachable"] is True and primary["status"] == "healthy", primary
        assert primary["latency"] >= 0
        assert "writer" not in body["checks"] and "nats" not in body["checks"]


def test_a_secondary_whose_primary_is_unreachable_is_degraded_not_unhealthy(
    servers, monkeypatch
) -> None:
    """Its reads still work; failing it over would not help while the primary is away."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{free_port()}")
    status, body = _health(servers, "syd")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["reason"] == "hop to the primary region failed (unreachable)"
    assert body["checks"]["primary"]["reachable"] is False
    assert 0 <= body["checks"]["database"]["replicaLagSeconds"] < 5


def _primary_region() -> str:
    return next(code for code in region_codes() if get_region(code).primary)


def test_the_primary_with_nats_down_is_degraded_and_says_so(servers) -> None:
    """Events wait in the outbox and subscribers hear nothing; reads and writes still work, so
    degraded (200), not unhealthy: failing the region over would not bring NATS back."""
    status, body = _health(servers, _primary_region(), NATS_URL=f"nats://127.0.0.1:{free_port()}")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["reason"] == "NATS unreachable: events wait in the outbox"
    assert body["checks"]["nats"]["reachable"] is False
    assert body["checks"]["nats"]["problem"] == body["reason"]
    assert body["checks"]["writer"]["reachable"] is True


def test_nats_counts_as_up_when_any_server_of_its_cluster_answers(servers) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    status, body = _health(servers, _primary_region(), NATS_URL=f"{dead},{servers.nats.url}")
    assert (status, body["status"]) == (200, "healthy"), body
    assert body["checks"]["nats"]["reachable"] is True


def _nats_connections_ever(servers) -> int:
    """How many client connections the nats-server has accepted since it started."""
    varz = f"http://127.0.0.1:{servers.nats.monitor_port}/varz"
    with urllib.request.urlopen(varz, timeout=5) as answer:
        return int(json.load(answer)["total_connections"])


def test_a_storm_of_health_checks_opens_one_nats_connection_per_second(
    servers, monkeypatch
) -> None:
    """The primary's NATS check greets NATS at most once a NATS_CHECK_TTL_S (1 s) per
    execution environment; the requests in between reuse its answer and say how old it is."""
    health._nats_checks.clear()
    # A loaded machine may take longer than a second for the whole storm: the count is about
    # reuse, so the answer stands for the storm's length here, and for 1 s below.
    monkeypatch.setattr(health, "NATS_CHECK_TTL_S", 60.0)
    before = _nats_connections_ever(servers)
    storm = [_health(servers, _primary_region())[1]["checks"]["nats"] for _ in range(25)]
    assert _nats_connections_ever(servers) - before == 1
    assert all(check["reachable"] and check["jetstream"] for check in storm)
    assert storm[0]["ageMs"] == 0.0
    assert all(check["ageMs"] > 0 for check in storm[1:])
    assert {check["latency"] for check in storm} == {storm[0]["latency"]}  # the probe's own

    monkeypatch.setattr(health, "NATS_CHECK_TTL_S", 1.0)
    time.sleep(1.05)  # past the answer's time: the next request greets NATS again
    again = _health(servers, _primary_region())[1]["checks"]["nats"]
    assert again["ageMs"] == 0.0
    assert _nats_connections_ever(servers) - before == 2


def test_an_unreachable_nats_is_remembered_as_briefly(servers) -> None:
    """A storm against a NATS that is down does not wait out a probe per request either, and
    another NATS_URL (a new configuration) is probed at once."""
    health._nats_checks.clear()
    dead = f"nats://127.0.0.1:{free_port()}"
    first, second = (
        _health(servers, _primary_region(), NATS_URL=dead)[1]["checks"]["nats"] for _ in range(2)
    )
    assert first["reachable"] is second["reachable"] is False
    assert (first["ageMs"], second["ageMs"] > 0) == (0.0, True)
    fresh = _health(servers, _primary_region())[1]["checks"]["nats"]
    assert fresh["reachable"] is True and fresh["ageMs"] == 0.0


def test_the_primary_with_its_writer_down_is_degraded_and_says_so(servers) -> None:
    status, body = _health(
        servers,
        _primary_region(),
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/covenant",
        DB_CONNECT_TIMEOUT_S="1",
    )
    assert status == 200
    assert body["status"] == "degraded"
    assert body["reason"] == "database writer unreachable"
    assert body["checks"]["writer"]["reachable"] is False
    assert body["checks"]["nats"]["reachable"] is True


def test_a_secondary_whose_primary_is_degraded_is_degraded_too(
    servers, primary_lambda: PrimaryLambda
) -> None:
    """A secondary hands every write to the primary region: the primary's writer or NATS
    being down is this region's problem too, and its answer says whose. (The primary's own
    reader, slow or lagging, is not: this region reads its own.)"""
    with primary_lambda.configured({"NATS_URL": f"nats://127.0.0.1:{free_port()}"}):
        status, body = _health(servers, "sin")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["reason"] == "primary region: NATS unreachable: events wait in the outbox"
    assert body["checks"]["primary"] == {
        "reachable": True,
        "latency": body["checks"]["primary"]["latency"],
        "status": "degraded",
    }


def test_a_secondary_is_not_degraded_by_its_primarys_slow_reader(
    servers, primary_lambda: PrimaryLambda
) -> None:
    with primary_lambda.configured({"HEALTH_LATENCY_BUDGET_MS": "-1"}):
        status, body = _health(servers, "sin")
    assert (status, body["status"]) == (200, "healthy"), body
    assert body["checks"]["primary"]["status"] == "degraded"


def test_unhealthy_with_503_when_the_reader_is_down(servers) -> None:
    status, body = _health(
        servers,
        DATABASE_READER_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/covenant",
        DB_CONNECT_TIMEOUT_S="1",
    )
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["reason"] == "database reader unreachable"
    assert body["region"] == "ams"


def test_degraded_when_the_database_is_slower_than_the_budget(servers) -> None:
    status, body = _health(servers, HEALTH_LATENCY_BUDGET_MS="-1")
    assert status == 200
    assert body["status"] == "degraded"
    assert "database latency" in body["reason"]


def test_degraded_when_the_replica_lags(servers) -> None:
    replica = db.Database(
        db.Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    with replica.session() as session:
        session.run("SELECT pg_wal_replay_pause()")
    try:
        with db.writer().session() as session:  # a commit the paused replica cannot replay
            session.run("UPDATE sectors SET description = description WHERE id = 'health'")
        time.sleep(1.2)
        status, body = _health(servers, HEALTH_MAX_REPLICA_LAG_S="0")
        assert status == 200
        assert body["status"] == "degraded"
        assert body["checks"]["database"]["replicaLagSeconds"] >= 1.0
        assert "replica lag" in body["reason"]
    finally:
        with replica.session() as session:
            session.run("SELECT pg_wal_replay_resume()")
        replica.close()


def test_a_restarted_replica_that_caught_up_is_healthy_while_the_primary_is_idle(
    servers, wait_for_replica
) -> None:
    """A restarted standby reports as received only the start of the WAL segment it streams
    from, below what it already replayed; with nothing new to replay that is no lag, however
    long ago the last commit was."""
    wait_for_replica()
    servers.postgres.restart_replica()
    replica = db.Database(
        db.Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )

    def streaming() -> bool:
        with replica.session() as session:
            return bool(
                session.scalar(
                    "SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"
                )
            )

    try:
        wait_until(streaming, 30, "the restarted replica streaming again")
    finally:
        replica.close()
    time.sleep(1.2)  # the last commit is now older than the lag allowed below
    # The lag is what this test is about: the first request after the restart reconnects, which
    # a loaded machine can make slower than the latency budget.
    status, body = _health(servers, HEALTH_MAX_REPLICA_LAG_S="1", HEALTH_LATENCY_BUDGET_MS="30000")
    assert (status, body["status"]) == (200, "healthy"), body
    assert body["checks"]["database"]["replicaLagSeconds"] == 0.0


def test_recovers_on_the_next_request_after_the_reader_connection_drops(servers) -> None:
    assert _health(servers)[1]["status"] == "healthy"
    with db.writer().session() as session:
        pass
    admin = db.Database(
        db.Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    with admin.session() as session:
        session.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'covenant-reader' AND pid <> pg_backend_pid()"
        )
    admin.close()
    status, body = _health(servers)
    assert (status, body["status"]) == (200, "healthy")

"""ANALYTICS against the real nats-server and PostgreSQL: figures per region, sector and
status as hourly/daily series; nothing counted twice when the worker is killed between its
commit and its acknowledgement; rebuilt from the stream, the same series."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers import analytics as worker
from covenant import analytics, db
from tests.functions.consumers.conftest import Jet, killed_worker

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def clean(jet: Jet, servers: Any) -> None:
    jet.reset("ANALYTICS")
    with db.writer().session() as session:
        analytics.rebuild(session)


def project_event(
    pid: str,
    minutes: int,
    *,
    status: str = "active",
    budget: int = 100,
    progress: int = 0,
    region: str = "ams",
    sector: str = "energy",
    action: str = "updated",
) -> tuple[str, dict[str, Any]]:
    return (
        f"covenant.projects.{action}",
        {
            "id": str(uuid.uuid4()),
            "type": f"covenant.projects.{action}",
            "subject": f"projects/{pid}",
            "time": (T0 + timedelta(minutes=minutes)).isoformat(),
            "data": {
                "project": {
                    "id": pid,
                    "region": region,
                    "sectorId": sector,
                    "status": status,
                    "budgetUsd": budget,
                    "progress": progress,
                }
            },
        },
    )


def scenario() -> list[tuple[str, dict[str, Any]]]:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    return [
        project_event(a, 0, status="planning", budget=100, action="created"),
        project_event(b, 10, budget=300, progress=20, action="created"),
        project_event(a, 70, budget=150, progress=40),  # hour 1: a becomes active
        project_event(c, 80, region="syd", budget=50, action="created"),
        project_event(b, 130, status="completed", budget=300, progress=100),  # hour 2
        project_event(c, 1500, region="syd", budget=50, action="deleted"),  # next day
    ]


def series(bucket: str = "HOUR", **where: Any) -> list[tuple[int, int, float | None]]:
    with db.writer().session() as session:
        points = (
            analytics.history(
                session, bucket, T0, T0 + timedelta(hours=2), analytics.StatsFilter(**where)
            )
            if bucket == "HOUR"
            else analytics.history(
                session, bucket, T0, T0 + timedelta(days=1), analytics.StatsFilter(**where)
            )
        )
    return [(p["projects"], p["budget_usd"], p["average_progress"]) for p in points]


EXPECTED_ALL = [(2, 400, 10.0), (3, 500, 20.0), (3, 500, 46.67)]


def test_figures_per_hour_and_filter(clean: None, jet: Jet) -> None:
    jet.publish(scenario())
    stats = jet.consume("COVENANT", "ANALYTICS", worker.effect)
    assert stats.processed == 6
    assert series() == EXPECTED_ALL
    assert series(region="ams", status="active") == [(1, 300, 20.0), (2, 450, 30.0), (1, 150, 40.0)]
    assert series(region="syd") == [(0, 0, None), (1, 50, 0.0), (1, 50, 0.0)]
    assert series("DAY") == [(3, 500, 46.67), (2, 450, 70.0)]  # c deleted on day 2


def test_killed_between_commit_and_ack_counts_nothing_twice(
    clean: None, jet: Jet, servers: Any
) -> None:
    jet.publish(scenario())
    status = killed_worker(
        "consumers.analytics",
        "record",
        {"NATS_URL": jet.url, "DATABASE_URL": servers.writer_url},
        "COVENANT",
        "ANALYTICS",
    )
    assert status == -9
    stats = jet.consume("COVENANT", "ANALYTICS", worker.effect, idle_exit_s=4)
    assert stats.processed == 6  # all redelivered: the killed batch came back
    assert series() == EXPECTED_ALL
    assert jet.pending("COVENANT", "ANALYTICS") == 0


def test_rebuilt_from_the_stream_the_same_series(clean: None, jet: Jet) -> None:
    jet.publish(scenario())
    jet.consume("COVENANT", "ANALYTICS", worker.effect)
    jet.consume("COVENANT", "ANALYTICS", worker.effect)  # nothing left: nothing changes
    with db.writer().session() as session:
        analytics.rebuild(session)
    jet.reset_keep_messages("ANALYTICS")
    jet.consume("COVENANT", "ANALYTICS", worker.effect)
    assert series() == EXPECTED_ALL
    # Replayed again on top (a second consumer, a restore): applied ids change nothing.
    jet.reset_keep_messages("ANALYTICS")
    jet.consume("COVENANT", "ANALYTICS", worker.effect)
    assert series() == EXPECTED_ALL


@pytest.fixture
def table_project(servers: Any) -> Any:
    """A project written straight into the table (as the seed data is: no event), created at
    T0 in a country of ams."""
    pid = str(uuid.uuid4())
    with db.writer().session() as session:
        country = session.scalar("SELECT code FROM countries WHERE region = 'ams' LIMIT 1")
        session.run(
            "INSERT INTO projects (id, name, sector_id, country_code, status, budget_usd, "
            "progress, created_at) VALUES (CAST(:id AS uuid), 'Seeded', 'energy', :country, "
            "'active', 700, 30, CAST(:at AS timestamptz))",
            id=pid,
            country=country,
            at=T0.isoformat(),
        )
    yield pid
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=pid)


def test_projects_without_events_are_seeded_and_their_first_event_replaces_them(
    clean: None, jet: Jet, table_project: str
) -> None:
    def points() -> list[tuple[int, int, float | None]]:
        with db.writer().session() as session:
            found = analytics.history(
                session,
                "HOUR",
                T0 - timedelta(hours=1),
                T0 + timedelta(hours=1),
                analytics.StatsFilter(region="ams", sector_id="energy", status="active"),
            )
        return [(p["projects"], p["budget_usd"], p["average_progress"]) for p in found]

    with db.writer().session() as session:
        seeded = analytics.seed_from_projects(session)
        assert seeded >= 1  # this one and whatever else the table holds
        assert analytics.seed_from_projects(session) == 0  # twice: nothing more
    before, at_t0, _ = points()
    # The table's other projects were created before T0: a constant base under every point.
    assert (at_t0[0] - before[0], at_t0[1] - before[1]) == (1, 700)

    # Its first event (here, an hour later) takes the seeded snapshot out and puts its own in.
    jet.publish([project_event(table_project, 70, status="active", budget=900, progress=60)])
    jet.consume("COVENANT", "ANALYTICS", worker.effect)
    before, at_t0, after = points()
    assert (at_t0[0] - before[0], at_t0[1] - before[1]) == (1, 700)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 900)

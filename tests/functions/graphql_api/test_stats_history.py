"""Query.statsHistory: the ANALYTICS series, read from the reader, hourly and daily."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from covenant import analytics, db

QUERY = """
query ($bucket: StatsBucket!, $from: DateTime!, $to: DateTime!, $filter: StatsFilter) {
  statsHistory(bucket: $bucket, from: $from, to: $to, filter: $filter) {
    at projects budgetUsd averageProgress
  }
}
"""
T0 = datetime(2031, 3, 1, tzinfo=UTC)


def test_hourly_and_daily_points_with_filters(gql: Any, wait_for_replica: Any) -> None:
    pid = str(uuid.uuid4())
    events = [
        analytics.ProjectEvent(
            str(uuid.uuid4()),
            10_000_000 + n,
            "covenant.projects.updated",
            T0 + timedelta(hours=n),
            {
                "id": pid,
                "region": "jnb",
                "sectorId": "water",
                "status": status,
                "budgetUsd": 1000 * (n + 1),
                "progress": progress,
            },
        )
        for n, (status, progress) in enumerate([("active", 10), ("active", 50), ("completed", 100)])
    ]
    with db.writer().session() as session:
        session.run("BEGIN")
        analytics.apply(session, events)
        session.run("COMMIT")
    wait_for_replica()
    variables = {
        "bucket": "HOUR",
        "from": T0.isoformat(),
        "to": (T0 + timedelta(hours=2)).isoformat(),
        "filter": {"region": "jnb", "sectorId": "water", "status": "ACTIVE"},
    }
    reply = gql(QUERY, variables)
    assert reply.errors == [], reply.errors
    assert [
        (p["projects"], p["budgetUsd"], p["averageProgress"]) for p in reply.data["statsHistory"]
    ] == [
        (1, "1000", 10.0),
        (1, "2000", 50.0),
        (0, "0", None),
    ]
    daily = gql(
        QUERY, {**variables, "bucket": "DAY", "filter": {"region": "jnb", "sectorId": "water"}}
    )
    assert [(p["at"][:10], p["projects"], p["budgetUsd"]) for p in daily.data["statsHistory"]] == [
        ("2031-03-01", 1, "3000")
    ]
    too_long = gql(QUERY, {**variables, "to": (T0 + timedelta(days=60)).isoformat()})
    assert too_long.codes == ["BAD_USER_INPUT"]
    with db.writer().session() as session:
        session.run("DELETE FROM analytics_applied WHERE stream_seq >= 10000000")
        session.run("DELETE FROM analytics_projects WHERE project_id = CAST(:p AS uuid)", p=pid)
        session.run("DELETE FROM analytics_hourly WHERE region = 'jnb' AND sector_id = 'water'")

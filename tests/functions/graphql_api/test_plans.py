"""Every filter and every order of the lists is served by an index at 100 000 projects: the
plans of the SQL the handler sends, in a database of its own (migrated, seeded, grown)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from covenant import db
from covenant.config import environment
from covenant.db import Database, Role
from covenant.migrate import migrate
from covenant.seed import seed

PROJECTS = 100_000
PLANS_DB = "covenant_plans"

# Projects spread over every country and sector, loaded set-based with the per-row triggers
# bypassed (their effects, region and change number, applied in the statement).
_GROW = """
WITH c AS (SELECT array_agg(code ORDER BY code) AS codes, array_agg(name ORDER BY code) AS names,
                  array_agg(region ORDER BY code) AS regions, count(*)::int AS n FROM countries)
INSERT INTO projects (id, name, sector_id, country_code, region, status, budget_usd,
                      impact_score, progress, change_seq)
SELECT md5('plans-' || g)::uuid,
       c.names[1 + g % c.n] || ' Plan ' || g,
       (ARRAY['agriculture', 'minerals', 'energy', 'technology', 'health', 'education'])
           [1 + (g / c.n) % 6],
       c.codes[1 + g % c.n], c.regions[1 + g % c.n],
       (ARRAY['planning', 'active', 'cancelled'])[1 + g % 3],
       100000 + (g::bigint * 2654435761) % 250000000,
       ((g::bigint * 40503) % 1001) / 100.0,
       (g * 37) % 100,
       nextval('change_seq')
FROM generate_series(1, CAST(:total AS int)) AS g, c
"""


def _url(base: str, database: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="module")
def plans_url(servers) -> Iterator[str]:
    admin = Database(
        Role.WRITER,
        _url(servers.writer_url, "postgres"),
        statement_timeout_ms=120_000,
        connect_timeout_s=3,
    )
    url = _url(servers.writer_url, PLANS_DB)
    with admin.session() as session:
        session.run(f"DROP DATABASE IF EXISTS {PLANS_DB} WITH (FORCE)")
        session.run(f"CREATE DATABASE {PLANS_DB}")
    grower = Database(Role.WRITER, url, statement_timeout_ms=120_000, connect_timeout_s=3)
    try:
        with environment({"DATABASE_URL": url, "DATABASE_READER_URL": url}):
            migrate()
            seed()
        with grower.session() as session:
            session.run("BEGIN")
            session.run("SET LOCAL session_replication_role = replica")
            session.run(_GROW, total=PROJECTS - 300)
            session.run("COMMIT")
            session.run("VACUUM (ANALYZE)")
        yield url
    finally:
        grower.close()
        db.close_all()
        with admin.session() as session:
            session.run(f"DROP DATABASE IF EXISTS {PLANS_DB} WITH (FORCE)")
        admin.close()


@pytest.fixture
def plans(gql, plans_url, monkeypatch):
    """plans(query) -> [(sql, plan lines)] of the statements on projects the handler ran."""
    explain = Database(Role.READER, plans_url, statement_timeout_ms=60_000, connect_timeout_s=3)
    captured: list[tuple[str, dict[str, Any]]] = []
    run = db.Session.run

    def capture(session: db.Session, sql: str, **params: Any) -> list[list[Any]]:
        captured.append((sql, params))
        return run(session, sql, **params)

    monkeypatch.setattr(db.Session, "run", capture)

    def of(query: str) -> list[tuple[str, list[str]]]:
        captured.clear()
        reply = gql(
            query, environment={"DATABASE_URL": plans_url, "DATABASE_READER_URL": plans_url}
        )
        assert reply.status == 200 and not reply.errors, reply.body
        statements = [(sql, params) for sql, params in captured if "FROM projects" in sql]
        captured.clear()
        with explain.session() as session:
            return [
                (sql, [row[0] for row in run(session, "EXPLAIN " + sql, **params)])
                for sql, params in statements
            ]

    yield of
    explain.close()


def _scans_all(plan: list[str]) -> bool:
    return any("Seq Scan on projects" in line for line in plan)


FILTERS = [
    'sectorId: "energy"',
    "status: ACTIVE",
    'countryCode: "KEN"',
    'region: "ams"',
    "budgetMin: 249000000",
    "budgetMax: 1000000",
    "impactMin: 9.95",
    "impactMax: 0.05",
    'nameContains: "kenya plan 12"',
]
ORDERS = ["NAME", "BUDGET", "IMPACT", "PROGRESS", "CREATED_AT", "UPDATED_AT"]


@pytest.mark.parametrize("filter_", FILTERS)
@pytest.mark.parametrize("order", ["NAME", "BUDGET"])
def test_each_filter_pages_from_an_index(plans, filter_, order) -> None:
    query = (
        f"{{ projects(first: 50, filter: {{{filter_}}}, orderBy: {{field: {order}}}) "
        "{ pageInfo { endCursor } nodes { id } } }"
    )
    [(_sql, plan)] = plans(query)
    assert not _scans_all(plan), "\n".join(plan)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("direction", ["ASC", "DESC"])
def test_each_order_pages_from_an_index_top_level_and_nested(plans, order, direction) -> None:
    sort = f"orderBy: {{field: {order}, direction: {direction}}}"
    top = plans(f"{{ projects(first: 50, {sort}) {{ nodes {{ id }} }} }}")
    nested = plans(
        f"{{ countries(first: 195) {{ nodes {{ projects(first: 10, {sort}) {{ nodes {{ id }} }} }} }} "
        f"sectors {{ projects(first: 10, {sort}) {{ nodes {{ id }} }} }} }}"
    )
    assert len(top) == 1 and len(nested) == 2
    for sql, plan in top + nested:
        text = "\n".join(plan)
        assert not _scans_all(plan), text
        if "parent_key" in sql:
            # Each parent's first page read from its (parent, sort, id) index: the parent is
            # an index condition, not a filter over an index walked in sort order.
            assert any("Index Cond" in line and "parent_key" in line for line in plan), text
            assert not any("Filter" in line and "parent_key" in line for line in plan), text
            assert "Sort" not in text, text


def test_a_keyset_page_continues_from_the_index(plans, gql, plans_url) -> None:
    environment = {"DATABASE_URL": plans_url, "DATABASE_READER_URL": plans_url}
    first = gql(
        "{ projects(first: 50, orderBy: {field: IMPACT, direction: DESC}) "
        "{ pageInfo { endCursor } } }",
        environment=environment,
    )
    cursor = first.data["projects"]["pageInfo"]["endCursor"]
    [(sql, plan)] = plans(
        f'{{ projects(first: 50, after: "{cursor}", orderBy: {{field: IMPACT, direction: DESC}}) '
        "{ nodes { id } } }"
    )
    assert "OFFSET" not in sql
    assert not _scans_all(plan) and "Sort" not in "\n".join(plan), "\n".join(plan)

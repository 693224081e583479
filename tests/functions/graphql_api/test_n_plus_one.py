"""The number of SQL statements depends on the query's shape, never on the number of rows."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from covenant import db
from covenant.uow import UnitOfWork

NESTED = {
    "countries_projects_sector": """{
        countries(first: 195) { nodes { code projects(first: 10) { nodes { name sector { name } } } } }
    }""",
    "with_counts": """{
        countries(first: 195) { totalCount nodes { projects(first: 10) { totalCount nodes { id } } } }
    }""",
    "projects_country_region": """{
        projects(first: 200) { nodes { country { name region { code countries(first: 3) { nodes { code } } } } } }
    }""",
    "sector_projects_country": """{
        sectors { projects(first: 50) { nodes { country { code projects(first: 5) { nodes { id } } } } } }
    }""",
    "regions_countries_projects": """{
        regions { countries(first: 100) { nodes { projects(first: 5) { nodes { sector { id } } } } } }
    }""",
    "edges_and_nodes": """{
        countries(first: 50) {
          edges { node { projects(first: 2) { nodes { id } } } }
          nodes { projects(first: 2) { nodes { id } } }
        }
    }""",
}

# At most one statement per list level plus one per totalCount asked for (a top-level list
# reads its totalCount, and the country of each project it lists, in the statement of its page).
EXPECTED = {
    "countries_projects_sector": 3,  # countries, projects of all countries, sectors
    "with_counts": 3,  # countries with their count, projects of all countries, their counts
    "projects_country_region": 2,  # projects with their countries (one join), countries per region
    "sector_projects_country": 4,  # sectors, projects per sector, countries, their projects
    "regions_countries_projects": 3,  # countries per region, projects per country, sectors
    "edges_and_nodes": 3,  # countries, projects under edges, projects under nodes
}


# Setting up and removing the load is not what these tests measure: on a busy machine (another
# stack running beside the suite) the 2 400-row insert may outlast the writer's statement
# timeout (5 s, and the client's socket timeout just above it), so it runs on a writer of its
# own with a generous one.
SETUP_TIMEOUT_MS = 120_000


def setup_writer(servers: Any) -> db.Database:
    return db.Database(
        db.Role.WRITER,
        servers.writer_url,
        statement_timeout_ms=SETUP_TIMEOUT_MS,
        connect_timeout_s=10,
    )


def add_load(database: db.Database, ids: list[str]) -> None:
    with database.session() as session:
        codes = [row[0] for row in session.run("SELECT code::text FROM countries ORDER BY code")]
    with UnitOfWork(database) as uow:
        uow.run(
            "INSERT INTO projects (id, name, sector_id, country_code, budget_usd) "
            "SELECT i, 'Load ' || n, (ARRAY['energy','health','education','minerals',"
            "'technology','agriculture'])[1 + n % 6], c, 1000 + n "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS bpchar[])) "
            "WITH ORDINALITY AS t(i, c, n)",
            ids=ids,
            codes=[codes[i % len(codes)] for i in range(len(ids))],
        )


def remove_load(database: db.Database, ids: list[str]) -> None:
    with UnitOfWork(database) as uow:
        uow.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
        # Tombstones stay: deleting them would move the change cursor backwards
        # under a device that already pulled past them (pruning advances sync_horizon).


@pytest.fixture(scope="module")
def bigger_data(servers, wait_for_replica):
    """2 400 more projects spread over every country, then removed again."""
    ids = [str(uuid.uuid4()) for _ in range(2400)]
    writer = setup_writer(servers)
    try:
        add_load(writer, ids)
        yield
        remove_load(writer, ids)
    finally:
        writer.close()
    wait_for_replica()  # later tests read the replica: it must not still hold these rows


def test_the_load_is_set_up_when_it_outlasts_the_default_statement_timeout(servers) -> None:
    """A busy machine, played by a transaction holding every country for 6 s (the insert's
    foreign key checks wait for it): longer than the writer's default statement timeout."""
    ids = [str(uuid.uuid4()) for _ in range(2400)]
    holder = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=30_000, connect_timeout_s=5
    )
    held = threading.Event()

    def hold() -> None:
        with UnitOfWork(holder) as uow:
            uow.run("SELECT code FROM countries FOR UPDATE")
            held.set()
            time.sleep(6)

    thread = threading.Thread(target=hold)
    thread.start()
    writer = setup_writer(servers)
    try:
        assert held.wait(10)
        add_load(writer, ids)
        remove_load(writer, ids)
    finally:
        thread.join()
        writer.close()
        holder.close()


@pytest.mark.parametrize("name", sorted(NESTED))
def test_statement_count_is_the_same_at_two_data_sizes(
    gql, request, wait_for_replica, name
) -> None:
    small = gql(NESTED[name])
    assert not small.errors, small.body
    request.getfixturevalue("bigger_data")
    wait_for_replica()
    large = gql(NESTED[name])
    assert not large.errors, large.body
    assert len(small.statements) == len(large.statements) == EXPECTED[name], (
        small.statements,
        large.statements,
    )

"""Change tracking as an offline-sync client sees it.

A client pulls "every row with change_seq > my cursor" and then moves its cursor to the largest
number it received. That is only correct if change numbers follow commit order: a write that
commits late must get a number above any cursor a reader could have taken before that commit.
These tests drive real concurrent transactions against the primary and its hot standby.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from pg8000.exceptions import DatabaseError

from covenant.db import Database, Role, Session, sqlstate
from covenant.reference import seed_projects
from covenant.regions import load_regions, region_codes
from covenant.seed import seed
from covenant.uow import UnitOfWork

_INSERT = """
INSERT INTO projects (id, name, sector_id, country_code, status, budget_usd, progress)
VALUES (CAST(:id AS uuid), :name, 'energy', 'KEN', 'active', 1000000, 10)
"""

_ROW = """
SELECT version, change_seq, updated_at, created_at, progress, budget_usd, region
FROM projects WHERE id = CAST(:id AS uuid)
"""


def _connect(servers, role: Role = Role.WRITER, *, timeout_ms: int = 10000) -> Database:
    """An independent Database (its own connections), for one extra transaction or thread."""
    url = servers.writer_url if role is Role.WRITER else servers.reader_url
    return Database(role, url, statement_timeout_ms=timeout_ms, connect_timeout_s=3)


def _create_projects(writer: Database, count: int, label: str) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with UnitOfWork(writer) as uow:
        for index, project_id in enumerate(ids):
            uow.run(_INSERT, id=project_id, name=f"Change tracking {label} {index}")
    return ids


def _cursor(session: Session) -> int:
    return int(session.scalar("SELECT current_change_cursor()"))


def _pull(session: Session, cursor: int) -> dict[str, int]:
    """What a sync pull after `cursor` delivers from projects: id -> change number."""
    rows = session.run(
        "SELECT id::text, change_seq FROM projects WHERE change_seq > :cursor", cursor=cursor
    )
    return {row[0]: row[1] for row in rows}


def _row(session: Session, project_id: str) -> dict:
    found = session.one(_ROW, id=project_id)
    assert found is not None, f"project {project_id} is missing"
    return found


def _tombstone(session: Session, project_id: str) -> dict | None:
    return session.one(
        "SELECT change_seq, deleted_at FROM tombstones "
        "WHERE table_name = 'projects' AND record_id = :id",
        id=project_id,
    )


@pytest.fixture
def own_projects(writer) -> Iterator[Callable[[int, str], list[str]]]:
    """Creates projects for one test and deletes them afterwards."""
    created: list[str] = []

    def make(count: int, label: str) -> list[str]:
        ids = _create_projects(writer, count, label)
        created.extend(ids)
        return ids

    yield make
    if created:
        with UnitOfWork(writer) as uow:
            uow.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=created)
            # Tombstones stay: deleting them would move the change cursor backwards
            # under a device that already pulled past them (pruning advances sync_horizon).


# ---------------------------------------------------------------------------------------------
# The late-commit race
# ---------------------------------------------------------------------------------------------


def test_a_write_that_commits_late_is_numbered_after_the_cursor_a_reader_took(
    servers, writer, reader, wait_for_replica, own_projects
) -> None:
    project_a, project_b = own_projects(2, "late commit")
    project_c = str(uuid.uuid4())  # inserted by the late transaction
    with writer.session() as session:
        a_before = _row(session, project_a)
    t1_db = _connect(servers)
    # A short timeout: if the late transaction held the ordering lock while still open, T2
    # would wait for it and fail here instead of committing.
    t2_db = _connect(servers, timeout_ms=3000)
    try:
        with t1_db.session() as t1:
            t1.run("BEGIN")
            t1.run("UPDATE projects SET progress = 55 WHERE id = CAST(:id AS uuid)", id=project_a)
            t1.run(_INSERT, id=project_c, name="Change tracking late insert")
            # Inside the open transaction the rows carry no number yet.
            assert _row(t1, project_a)["change_seq"] is None
            assert _row(t1, project_c)["change_seq"] is None

            with t2_db.session() as t2:
                t2.run("BEGIN")
                t2.run(
                    "UPDATE projects SET progress = 66 WHERE id = CAST(:id AS uuid)",
                    id=project_b,
                )
                t2.run("COMMIT")

            with writer.session() as session:
                b_seq = _row(session, project_b)["change_seq"]
                cursor = _cursor(session)
                # The reader sees B's change and A's old committed state, not T1's write.
                assert b_seq is not None and cursor >= b_seq
                a_now = _row(session, project_a)
                assert (a_now["version"], a_now["change_seq"], a_now["progress"]) == (
                    a_before["version"],
                    a_before["change_seq"],
                    a_before["progress"],
                )
                assert session.one(_ROW, id=project_c) is None
                assert project_a not in _pull(session, cursor)

            t1.run("COMMIT")

        with writer.session() as session:
            pulled = _pull(session, cursor)
            a_after = _row(session, project_a)
        assert project_a in pulled, "a write that committed late was missed by the pull"
        assert project_c in pulled, "an insert that committed late was missed by the pull"
        assert pulled[project_a] > b_seq
        assert pulled[project_c] > b_seq
        assert project_b not in pulled  # already delivered before the cursor
        assert a_after["progress"] == 55
        assert a_after["version"] == a_before["version"] + 1

        # The hot standby hands out the same changes after the same cursor.
        wait_for_replica()
        with reader.session() as session:
            assert _pull(session, cursor) == pulled
    finally:
        t1_db.close()
        t2_db.close()
        with UnitOfWork(writer) as uow:
            uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project_c)
            uow.run(
                "DELETE FROM tombstones WHERE table_name = 'projects' AND record_id = :id",
                id=project_c,
            )


def test_a_delete_and_a_country_change_that_commit_late_are_numbered_after_the_cursor(
    servers, writer, reader, wait_for_replica, own_projects
) -> None:
    """The same race for the other kinds of change: a tombstone, and a country update."""
    doomed, other = own_projects(2, "late delete")
    country = "ISL"
    country_sql = "SELECT change_seq, version, gdp_usd FROM countries WHERE code = :code"
    tombstones_after = (
        "SELECT record_id, change_seq FROM tombstones "
        "WHERE table_name = 'projects' AND change_seq > :cursor"
    )
    with writer.session() as session:
        country_before = session.one(country_sql, code=country)
    assert country_before is not None
    t1_db = _connect(servers)
    t2_db = _connect(servers, timeout_ms=3000)
    try:
        with t1_db.session() as t1:
            t1.run("BEGIN")
            t1.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=doomed)
            t1.run(
                "UPDATE countries SET gdp_usd = gdp_usd + 10000 WHERE code = :code", code=country
            )
            with t2_db.session() as t2:
                t2.run("BEGIN")
                t2.run("UPDATE projects SET progress = 67 WHERE id = CAST(:id AS uuid)", id=other)
                t2.run("COMMIT")
            with writer.session() as session:
                other_seq = _row(session, other)["change_seq"]
                cursor = _cursor(session)
                assert other_seq is not None and cursor >= other_seq
                assert _tombstone(session, doomed) is None
                assert session.one(country_sql, code=country) == country_before
            t1.run("COMMIT")

        with writer.session() as session:
            deleted = dict(session.run(tombstones_after, cursor=cursor))
            country_after = session.one(country_sql, code=country)
        assert doomed in deleted, "a delete that committed late was missed by the pull"
        assert deleted[doomed] > other_seq
        assert country_after is not None
        assert country_after["change_seq"] > cursor, "a country change that committed late"
        assert country_after["version"] == country_before["version"] + 1
        wait_for_replica()
        with reader.session() as session:
            assert dict(session.run(tombstones_after, cursor=cursor)) == deleted
            assert session.one(country_sql, code=country) == country_after
    finally:
        t1_db.close()
        t2_db.close()
        with UnitOfWork(writer) as uow:
            uow.run(
                "UPDATE countries SET gdp_usd = :gdp WHERE code = :code",
                gdp=country_before["gdp_usd"],
                code=country,
            )


# ---------------------------------------------------------------------------------------------
# Stress: concurrent writers, pollers on the primary and on the replica
# ---------------------------------------------------------------------------------------------

WRITER_THREADS = 6
TRANSACTIONS_PER_WRITER = 25
STRESS_ROWS = 20


class _Poller:
    """A sync client that keeps pulling `change_seq > cursor` and advances its cursor to the
    largest number delivered."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.delivered: list[tuple[str, int, int]] = []  # (id, change_seq, version)
        self.pulls = 0
        self.lock = threading.Lock()

    def pull(self, session: Session) -> None:
        rows = session.run(
            "SELECT id::text, change_seq, version FROM projects "
            "WHERE change_seq > :cursor ORDER BY change_seq",
            cursor=self.cursor,
        )
        with self.lock:
            self.delivered.extend((row[0], row[1], row[2]) for row in rows)
            if rows:
                self.cursor = rows[-1][1]
            self.pulls += 1

    def last_seen(self) -> dict[str, tuple[int, int]]:
        """id -> (version, change_seq) of the last delivery of each row."""
        return {pid: (version, seq) for pid, seq, version in self.delivered}


def _poll_until(
    poller: _Poller, database: Database, stop: threading.Event, errors: list[BaseException]
) -> None:
    try:
        with database.session() as session:
            while not stop.is_set():
                poller.pull(session)
                stop.wait(0.002)
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)
    finally:
        database.close()


def test_a_poller_misses_nothing_while_many_writers_commit(
    servers, writer, reader, wait_for_replica, own_projects
) -> None:
    with writer.session() as session:
        start = _cursor(session)
    ids = own_projects(STRESS_ROWS, "stress")
    errors: list[BaseException] = []
    updates_done = Counter[str]()
    updates_lock = threading.Lock()

    def write(worker: int) -> None:
        rng = random.Random(f"change-tracking-{worker}")
        database = _connect(servers)
        try:
            with database.session() as session:
                for _ in range(TRANSACTIONS_PER_WRITER):
                    # Sorted, so concurrent transactions lock rows in one order (no deadlock).
                    chosen = sorted(rng.sample(ids, rng.randint(1, 3)))
                    session.run("BEGIN")
                    try:
                        for project_id in chosen:
                            session.run(
                                "UPDATE projects SET progress = :progress, budget_usd = :budget "
                                "WHERE id = CAST(:id AS uuid)",
                                progress=rng.randint(0, 99),
                                budget=rng.randrange(1_000, 10_000_000),
                                id=project_id,
                            )
                        # Hold the transaction open a little so commits interleave with pulls.
                        time.sleep(rng.random() * 0.004)
                        session.run("COMMIT")
                    except BaseException:
                        session.run("ROLLBACK")
                        raise
                    with updates_lock:
                        updates_done.update(chosen)
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.close()

    stop = threading.Event()
    primary_poller, replica_poller = _Poller(start), _Poller(start)
    pollers = [
        threading.Thread(
            target=_poll_until, args=(primary_poller, _connect(servers), stop, errors)
        ),
        threading.Thread(
            target=_poll_until,
            args=(replica_poller, _connect(servers, Role.READER), stop, errors),
        ),
    ]
    writers = [threading.Thread(target=write, args=(n,)) for n in range(WRITER_THREADS)]
    started = time.monotonic()
    for thread in pollers + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    stop.set()
    for thread in pollers:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in pollers + writers), "a stress thread did not finish"
    assert errors == []
    assert time.monotonic() - started < 30

    wanted = set(ids)
    delivered_during_run = {
        name: sum(1 for pid, _, _ in poller.delivered if pid in wanted)
        for name, poller in (("primary", primary_poller), ("replica", replica_poller))
    }
    # A final pull on each side once the writers are done (the replica after catching up).
    with writer.session() as session:
        primary_poller.pull(session)
        final = {
            row[0]: (row[1], row[2])
            for row in session.run(
                "SELECT id::text, version, change_seq FROM projects "
                "WHERE id = ANY(CAST(:ids AS uuid[]))",
                ids=ids,
            )
        }
    wait_for_replica()
    with reader.session() as session:
        replica_poller.pull(session)

    total_updates = WRITER_THREADS * TRANSACTIONS_PER_WRITER
    assert sum(updates_done.values()) >= total_updates
    # Every committed update bumped the version exactly once, even under contention.
    for project_id in ids:
        assert final[project_id][0] == 1 + updates_done[project_id], project_id

    for name, poller in (("primary", primary_poller), ("replica", replica_poller)):
        assert poller.pulls > 2, f"the {name} poller did not run alongside the writers"
        pairs = [(pid, seq) for pid, seq, _ in poller.delivered]
        duplicates = [pair for pair, count in Counter(pairs).items() if count > 1]
        assert duplicates == [], f"{name}: delivered twice: {duplicates[:5]}"
        seqs = [seq for _, seq, _ in poller.delivered]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), name
        # A client never sees a row go back to an older version.
        versions: dict[str, list[int]] = {}
        for pid, _, version in poller.delivered:
            versions.setdefault(pid, []).append(version)
        for pid in ids:
            seen = versions.get(pid, [])
            assert seen == sorted(set(seen)), f"{name}: versions of {pid} went back: {seen}"
        # Nothing missed: the last thing delivered for each row is its final state.
        last = poller.last_seen()
        missed = {pid: (last.get(pid), final[pid]) for pid in ids if last.get(pid) != final[pid]}
        assert missed == {}, f"{name}: final versions never delivered: {missed}"
    # The pollers really raced the writers: they received this test's changes mid-run.
    assert delivered_during_run["primary"] > STRESS_ROWS
    assert delivered_during_run["replica"] > 0


# ---------------------------------------------------------------------------------------------
# Uncommitted and rolled-back writes
# ---------------------------------------------------------------------------------------------


def test_uncommitted_and_rolled_back_writes_never_get_a_visible_change_number(
    servers, writer, own_projects
) -> None:
    updated, deleted = own_projects(2, "rollback")
    inserted = str(uuid.uuid4())
    with writer.session() as session:
        before = {pid: _row(session, pid) for pid in (updated, deleted)}
        cursor = _cursor(session)
    other = _connect(servers)
    try:
        with other.session() as tx:
            tx.run("BEGIN")
            tx.run("UPDATE projects SET progress = 77 WHERE id = CAST(:id AS uuid)", id=updated)
            tx.run(_INSERT, id=inserted, name="Change tracking never committed")
            tx.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=deleted)
            # The transaction sees its own writes, unnumbered, and its pending tombstone.
            assert _row(tx, updated)["change_seq"] is None
            assert _row(tx, inserted)["change_seq"] is None
            pending = _tombstone(tx, deleted)
            assert pending is not None and pending["change_seq"] is None

            # Nobody else sees any of it: no new number, no row, no tombstone.
            with writer.session() as session:
                assert _cursor(session) == cursor
                assert _pull(session, cursor) == {}
                assert session.one(_ROW, id=inserted) is None
                assert _tombstone(session, deleted) is None
                for pid, row in before.items():
                    assert _row(session, pid)["change_seq"] == row["change_seq"]
            tx.run("ROLLBACK")
    finally:
        other.close()

    with writer.session() as session:
        assert _cursor(session) == cursor
        assert _pull(session, cursor) == {}
        assert session.one(_ROW, id=inserted) is None
        assert _tombstone(session, deleted) is None, "a rolled-back delete left a tombstone"
        for pid, row in before.items():
            assert _row(session, pid) == row

    # A unit of work that fails rolls back the same way.
    with pytest.raises(RuntimeError, match="abandon"), UnitOfWork(writer) as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=deleted)
        uow.run("UPDATE projects SET progress = 12 WHERE id = CAST(:id AS uuid)", id=updated)
        raise RuntimeError("abandon")
    with writer.session() as session:
        assert _cursor(session) == cursor
        assert _tombstone(session, deleted) is None
        for pid, row in before.items():
            assert _row(session, pid) == row


# ---------------------------------------------------------------------------------------------
# Version, updated_at and change number on update; idempotent seed
# ---------------------------------------------------------------------------------------------


def test_an_update_bumps_version_and_updated_at_and_takes_a_larger_change_number(
    writer, own_projects
) -> None:
    (project,) = own_projects(1, "update")
    with writer.session() as session:
        created = _row(session, project)
        cursor = _cursor(session)
    assert created["version"] == 1
    assert created["change_seq"] is not None and created["change_seq"] <= cursor

    with UnitOfWork(writer) as uow:
        uow.run(
            "UPDATE projects SET progress = 42, budget_usd = 2500000 WHERE id = CAST(:id AS uuid)",
            id=project,
        )
    with writer.session() as session:
        first = _row(session, project)
        assert _pull(session, cursor) == {project: first["change_seq"]}
    assert first["version"] == 2
    assert first["change_seq"] > cursor > 0
    assert first["updated_at"] > created["updated_at"]
    assert first["created_at"] == created["created_at"]
    assert (first["progress"], first["budget_usd"]) == (42, 2_500_000)

    # A client cannot forge the bookkeeping columns: they are recomputed by the database.
    with UnitOfWork(writer) as uow:
        uow.run(
            "UPDATE projects SET progress = 43, version = 1, change_seq = 1 "
            "WHERE id = CAST(:id AS uuid)",
            id=project,
        )
    with writer.session() as session:
        second = _row(session, project)
    assert second["version"] == 3
    assert second["change_seq"] > first["change_seq"]


def test_a_seed_rerun_that_changes_nothing_leaves_change_numbers_and_versions_alone(
    writer,
) -> None:
    snapshot_sql = {
        "countries": "SELECT code, version, change_seq, updated_at FROM countries ORDER BY code",
        "sectors": "SELECT id, version, change_seq, updated_at FROM sectors ORDER BY id",
        "projects": "SELECT id::text, version, change_seq FROM projects ORDER BY id",
    }
    with writer.session() as session:
        before = {table: session.run(sql) for table, sql in snapshot_sql.items()}
        cursor = _cursor(session)
    result = seed()
    assert (result.countries, result.sectors) == (195, 6)
    with writer.session() as session:
        after = {table: session.run(sql) for table, sql in snapshot_sql.items()}
        assert _cursor(session) == cursor
        assert _pull(session, cursor) == {}
    assert len(before["countries"]) == 195
    assert after == before


# ---------------------------------------------------------------------------------------------
# Deletes and tombstones
# ---------------------------------------------------------------------------------------------


def test_a_delete_leaves_a_numbered_tombstone_and_a_reinsert_removes_it(
    writer, own_projects
) -> None:
    (project,) = own_projects(1, "tombstone")
    with writer.session() as session:
        cursor = _cursor(session)
        alive = _row(session, project)
    with UnitOfWork(writer) as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project)

    with writer.session() as session:
        assert session.one(_ROW, id=project) is None
        tombstone = _tombstone(session, project)
        assert tombstone is not None
        assert tombstone["change_seq"] is not None and tombstone["change_seq"] > cursor
        # The tombstone is what a pull after the old cursor reports, and the cursor covers it.
        deleted = session.run(
            "SELECT table_name, record_id FROM tombstones WHERE change_seq > :cursor",
            cursor=cursor,
        )
        assert deleted == [["projects", project]]
        assert _cursor(session) == tombstone["change_seq"]

    with UnitOfWork(writer) as uow:
        uow.run(_INSERT, id=project, name="Change tracking tombstone again")
    with writer.session() as session:
        assert _tombstone(session, project) is None
        again = _row(session, project)
    assert again["version"] == 1
    assert again["change_seq"] > tombstone["change_seq"] > alive["change_seq"]


# ---------------------------------------------------------------------------------------------
# Replication
# ---------------------------------------------------------------------------------------------


def test_stamped_changes_reach_the_replica_in_order(
    writer, reader, wait_for_replica, own_projects
) -> None:
    with writer.session() as session:
        start = _cursor(session)
    ids = own_projects(5, "replica")
    for step, project in enumerate(ids[:3]):
        with UnitOfWork(writer) as uow:
            uow.run(
                "UPDATE projects SET progress = :p WHERE id = CAST(:id AS uuid)",
                p=20 + step,
                id=project,
            )
    with UnitOfWork(writer) as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=ids[4])

    changes_sql = """
        SELECT 'projects' AS source, id::text AS key, change_seq FROM projects
        WHERE change_seq > :cursor
        UNION ALL
        SELECT 'tombstones', record_id, change_seq FROM tombstones WHERE change_seq > :cursor
        ORDER BY change_seq
    """
    with writer.session() as session:
        primary_cursor = _cursor(session)
        primary_changes = session.run(changes_sql, cursor=start)
    wait_for_replica()
    with reader.session() as session:
        assert session.scalar("SELECT pg_is_in_recovery()") is True
        assert _cursor(session) == primary_cursor
        replica_changes = session.run(changes_sql, cursor=start)
    assert replica_changes == primary_changes
    assert primary_changes[-1] == ["tombstones", ids[4], primary_cursor]
    # Creation (one transaction) first, then the three updates in commit order, then the delete.
    updated_order = [key for source, key, _ in primary_changes if key in ids[:3]]
    assert updated_order == ids[:3]


# ---------------------------------------------------------------------------------------------
# A country's region change cascades to its projects
# ---------------------------------------------------------------------------------------------


def _country_with_seed_projects() -> str:
    seeded = Counter(p.country_code for p in seed_projects(load_regions()))
    return sorted(seeded.items(), key=lambda item: (-item[1], item[0]))[0][0]


def test_a_country_region_change_moves_its_projects_and_renumbers_them(writer) -> None:
    code = _country_with_seed_projects()
    projects_sql = (
        "SELECT id::text, region, version, change_seq FROM projects "
        "WHERE country_code = :code ORDER BY id"
    )
    with writer.session() as session:
        home = session.scalar("SELECT region FROM countries WHERE code = :code", code=code)
        before = session.run(projects_sql, code=code)
        cursor = _cursor(session)
    assert before, f"{code} has no projects"
    target = next(r for r in region_codes() if r != home)

    # Inside a transaction that is rolled back: the cascade happens, nobody else sees it.
    with pytest.raises(RuntimeError, match="undo"), UnitOfWork(writer) as uow:
        uow.run("UPDATE countries SET region = :r WHERE code = :code", r=target, code=code)
        inside = uow.run(projects_sql, code=code)
        assert {row[1] for row in inside} == {target}
        for row, old in zip(inside, before, strict=True):
            assert (row[2], row[3]) == (old[2] + 1, None)  # bumped, numbered only at commit
        raise RuntimeError("undo")
    with writer.session() as session:
        assert session.run(projects_sql, code=code) == before
        assert _cursor(session) == cursor

    # Committed: the projects follow the country and get new change numbers after the cursor.
    try:
        with UnitOfWork(writer) as uow:
            uow.run("UPDATE countries SET region = :r WHERE code = :code", r=target, code=code)
        with writer.session() as session:
            after = session.run(projects_sql, code=code)
            pulled = _pull(session, cursor)
            country_seq = session.scalar(
                "SELECT change_seq FROM countries WHERE code = :code", code=code
            )
        assert [row[0] for row in after] == [row[0] for row in before]
        assert {row[1] for row in after} == {target}
        for row, old in zip(after, before, strict=True):
            assert row[2] == old[2] + 1
            assert row[3] > cursor
            assert pulled.get(row[0]) == row[3]
        assert country_seq > cursor
    finally:
        with UnitOfWork(writer) as uow:
            uow.run("UPDATE countries SET region = :r WHERE code = :code", r=home, code=code)
    with writer.session() as session:
        restored = session.run(projects_sql, code=code)
        assert (
            session.scalar(
                "SELECT count(*) FROM projects p JOIN countries c ON c.code = p.country_code "
                "WHERE p.region <> c.region"
            )
            == 0
        )
    assert {row[1] for row in restored} == {home}


def test_an_update_that_changes_nothing_is_not_a_change(writer, own_projects) -> None:
    project_id = own_projects(1, "noop")[0]
    with writer.session() as session:
        before = session.one(
            "SELECT version, change_seq, updated_at FROM projects WHERE id = CAST(:id AS uuid)",
            id=project_id,
        )
        session.run(
            "UPDATE projects SET progress = progress, name = name WHERE id = CAST(:id AS uuid)",
            id=project_id,
        )
        after = session.one(
            "SELECT version, change_seq, updated_at FROM projects WHERE id = CAST(:id AS uuid)",
            id=project_id,
        )
    assert after == before


def test_a_country_update_that_changes_nothing_is_not_a_change(writer) -> None:
    """Countries have a stored generated column (contribution_usd), which a BEFORE trigger sees
    as NULL: it must not make every update look like a change."""
    read = (
        "SELECT version, change_seq, updated_at, contribution_usd FROM countries WHERE code = 'ISL'"
    )
    with writer.session() as session:
        before = session.one(read)
        session.run("UPDATE countries SET name = name, gdp_usd = gdp_usd WHERE code = 'ISL'")
        assert session.one(read) == before
        try:
            session.run("UPDATE countries SET gdp_usd = gdp_usd + 10000 WHERE code = 'ISL'")
            changed = session.one(read)
            assert changed["version"] == before["version"] + 1
            assert changed["change_seq"] > before["change_seq"]
            assert changed["contribution_usd"] == before["contribution_usd"] + 1
        finally:
            session.run("UPDATE countries SET gdp_usd = gdp_usd - 10000 WHERE code = 'ISL'")


@pytest.mark.parametrize("table", ["sectors", "countries", "projects"])
def test_truncate_is_refused_because_it_leaves_no_tombstones(writer, table: str) -> None:
    with writer.session() as session:
        before = session.scalar(f"SELECT count(*) FROM {table}")
        session.run("BEGIN")
        try:
            with pytest.raises(DatabaseError, match="would bypass change tracking") as raised:
                session.run(f"TRUNCATE {table} CASCADE")
        finally:
            session.run("ROLLBACK")
        assert sqlstate(raised.value) == "0A000"
        assert session.scalar(f"SELECT count(*) FROM {table}") == before

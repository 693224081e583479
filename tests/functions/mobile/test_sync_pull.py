"""GET /sync (WatermelonDB pull) through the deployed handler, against the primary and its
streaming replica."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from covenant import db
from covenant.sync_horizon import prune_tombstones
from covenant.uow import UnitOfWork
from mobile.sync.pull import PULL_SQL
from mobile.sync.schema import TABLES, watermelon_schema_js

from ...replica import replay_paused
from .conftest import make_event

COLUMNS = {table.name: {"id", *(c.name for c in table.columns)} for table in TABLES}
EMPTY = {"created": [], "updated": [], "deleted": []}

_INSERT = """
INSERT INTO projects (id, name, sector_id, country_code, status, budget_usd, progress)
VALUES (CAST(:id AS uuid), :name, 'energy', 'KEN', 'active', 1000000, 10)
"""


def _cursor(database: db.Database | None = None) -> int:
    with (database or db.writer()).session() as session:
        return int(session.scalar("SELECT sync_cursor()"))


@pytest.fixture
def projects(servers) -> Iterator[list[str]]:
    """Ids of projects a test creates; they go afterwards."""
    created: list[str] = []
    yield created
    # Their tombstones stay: deleting the newest ones would move the change cursor back,
    # which no production path does, and a push's cursor check relies on it.
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=created)


def _create(projects: list[str], name: str) -> str:
    project_id = str(uuid.uuid4())
    with UnitOfWork() as uow:
        uow.run(_INSERT, id=project_id, name=name)
    projects.append(project_id)
    return project_id


def _update(project_id: str, progress: int) -> None:
    with UnitOfWork() as uow:
        uow.run(
            "UPDATE projects SET progress = :p WHERE id = CAST(:id AS uuid)",
            p=progress,
            id=project_id,
        )


def _delete(project_id: str) -> None:
    with UnitOfWork() as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project_id)


@pytest.fixture
def pull(mobile, claims_of):
    claims = claims_of("viewer")

    def run(last_pulled_at: object = "null", **kwargs):
        query = {"schema_version": "1", "migration": "null", **kwargs.pop("query", {})}
        if last_pulled_at is not None:
            query["last_pulled_at"] = str(last_pulled_at)
        return mobile("GET", "/sync", claims=claims, query=query, **kwargs)

    return run


def _ids(changes: dict, table: str, kind: str) -> list[str]:
    items = changes[table][kind]
    return [item if isinstance(item, str) else item["id"] for item in items]


@pytest.mark.parametrize("first", ["null", "undefined", "0", "", None])
def test_a_first_pull_puts_everything_in_updated(pull, wait_for_replica, first) -> None:
    wait_for_replica()
    reply = pull(first)
    assert reply.status == 200, reply.body
    assert set(reply.body) == {"changes", "timestamp"}
    assert reply.body["timestamp"] == _cursor(db.reader())
    with db.reader().session() as session:
        counts = {t.name: int(session.scalar(f"SELECT count(*) FROM {t.name}")) for t in TABLES}
    changes = reply.body["changes"]
    assert list(changes) == ["countries", "projects", "sectors"]
    for table, count in counts.items():
        assert len(changes[table]["updated"]) == count
        assert changes[table]["created"] == [] and changes[table]["deleted"] == []
    assert counts["countries"] == 195 and counts["sectors"] == 6


def test_records_are_raw_watermelon_records(pull, wait_for_replica) -> None:
    wait_for_replica()
    changes = pull().body["changes"]
    now_ms = time.time() * 1000
    for table in TABLES:
        for record in changes[table.name]["updated"]:
            assert set(record) == COLUMNS[table.name]
            assert isinstance(record["id"], str)
            for column in table.columns:
                value = record[column.name]
                if value is None:
                    assert column.optional, (table.name, column.name)
                elif column.type == "number":
                    assert isinstance(value, int | float) and not isinstance(value, bool)
                else:
                    assert isinstance(value, str)
            assert 1_700_000_000_000 < record["created_at"] <= record["updated_at"] <= now_ms + 5000
    kenya = next(c for c in changes["countries"]["updated"] if c["id"] == "KEN")
    assert kenya["iso2"] == "KE" and kenya["contribution_usd"] == kenya["gdp_usd"] // 10000
    project = changes["projects"]["updated"][0]
    uuid.UUID(project["id"])
    assert project["country_code"].isupper() and len(project["country_code"]) == 3


def test_an_incremental_pull_has_exactly_the_changes_since_the_cursor(
    pull, projects, wait_for_replica
) -> None:
    doomed = _create(projects, "Sync pull doomed")
    edited = _create(projects, "Sync pull edited")
    wait_for_replica()
    since = pull().body["timestamp"]
    created = _create(projects, "Sync pull created")
    _update(edited, 55)
    _delete(doomed)
    wait_for_replica()
    reply = pull(since)
    assert reply.status == 200
    changes = reply.body["changes"]
    # Everything in `updated` (sendCreatedAsUpdated), in change order: a record the device
    # created and deleted before this pull must not come back as `created`.
    assert _ids(changes, "projects", "created") == []
    assert _ids(changes, "projects", "updated") == [created, edited]
    assert changes["projects"]["updated"][1]["progress"] == 55
    assert changes["projects"]["deleted"] == [doomed]
    assert changes["countries"] == EMPTY and changes["sectors"] == EMPTY
    assert reply.body["timestamp"] > since
    again = pull(reply.body["timestamp"])
    assert again.body["changes"] == {t.name: EMPTY for t in TABLES}
    assert again.body["timestamp"] == reply.body["timestamp"]


def test_a_pull_racing_a_long_write_transaction_does_not_miss_it(
    pull, projects, servers, wait_for_replica
) -> None:
    slow_id = _create(projects, "Sync race slow writer")
    fast_id = _create(projects, "Sync race fast writer")
    wait_for_replica()
    since = pull().body["timestamp"]
    slow = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with slow.session() as session:
        session.run("BEGIN")
        session.run(
            "UPDATE projects SET progress = 77 WHERE id = CAST(:id AS uuid)", id=slow_id
        )  # written first, committed last
        _update(fast_id, 66)
        wait_for_replica()
        during = pull(since)
        assert _ids(during.body["changes"], "projects", "updated") == [fast_id]
        cursor = during.body["timestamp"]
        session.run("COMMIT")
    slow.close()
    wait_for_replica()
    after = pull(cursor)
    assert _ids(after.body["changes"], "projects", "updated") == [slow_id]
    assert after.body["changes"]["projects"]["updated"][0]["progress"] == 77


def test_concurrent_commits_reach_a_polling_client_exactly_once(
    pull, projects, wait_for_replica
) -> None:
    wait_for_replica()
    cursor = pull().body["timestamp"]
    ids = [_create(projects, f"Sync poll {i}") for i in range(12)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for round_ in range(3):
                for project_id in ids:
                    _update(project_id, 10 + round_)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    writer_thread = threading.Thread(target=write)
    writer_thread.start()
    seen: dict[str, int] = {}
    received: list[tuple[str, int]] = []  # (id, version) of every record of every pull

    def receive(body: dict) -> None:
        for record in (
            body["changes"]["projects"]["created"] + body["changes"]["projects"]["updated"]
        ):
            seen[record["id"]] = record["progress"]
            received.append((record["id"], record["version"]))

    while True:
        finished = stop.is_set()
        body = pull(cursor).body
        receive(body)
        assert body["timestamp"] >= cursor
        cursor = body["timestamp"]
        if finished:
            wait_for_replica()
            receive(pull(cursor).body)
            break
    writer_thread.join()
    db.close_all()
    assert not errors
    # Missed: none (every project's last write arrived). Sent twice: none (no version of a
    # record came in two pulls).
    assert {project_id: seen.get(project_id) for project_id in ids} == dict.fromkeys(ids, 12)
    ours = [entry for entry in received if entry[0] in ids]
    assert len(ours) == len(set(ours))


def _plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


_BULK_PROJECTS = """
INSERT INTO projects (id, name, description, sector_id, country_code, region, status,
                      budget_usd, change_seq)
SELECT md5('plan-' || CAST(:tag AS text) || n)::uuid, 'Plan probe ' || n, '', 'energy', 'KEN',
       'jnb', 'active', 1000 + n, nextval('change_seq')
FROM generate_series(1, CAST(:n AS int)) AS n
"""
_BULK_TOMBSTONES = """
INSERT INTO tombstones (table_name, record_id, change_seq)
SELECT 'projects', 'plan-gone-' || CAST(:tag AS text) || n, nextval('change_seq')
FROM generate_series(1, CAST(:n AS int)) AS n
"""


def test_an_incremental_pull_is_served_by_the_change_indexes(servers) -> None:
    """20 000 projects and 20 000 tombstones, then 5 more of each after the cursor, inside a
    transaction that is rolled back: the pull reads just those 10 rows, from the change_seq
    indexes, however many came before."""
    with db.writer().session() as session:
        session.run("BEGIN")
        try:
            session.run("SET LOCAL session_replication_role = replica")
            session.run(_BULK_PROJECTS, tag="old", n=20000)
            session.run(_BULK_TOMBSTONES, tag="old", n=20000)
            since = int(session.scalar("SELECT sync_cursor()"))
            session.run(_BULK_PROJECTS, tag="new", n=5)
            session.run(_BULK_TOMBSTONES, tag="new", n=5)
            session.run("ANALYZE projects")
            session.run("ANALYZE tombstones")
            params: dict[str, object] = {"since": since}
            for table in TABLES:
                params[f"{table.name}_rows_since"] = since
                params[f"{table.name}_all_new"] = False
                params[f"{table.name}_tombstones_since"] = since
            raw = session.scalar("EXPLAIN (ANALYZE, FORMAT JSON) " + PULL_SQL, **params)
        finally:
            session.run("ROLLBACK")
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    scans = [
        node
        for node in _plan_nodes(plan)
        if node.get("Relation Name") in ("projects", "tombstones")
    ]
    # No scan of either table reads rows it then throws away, and none walks the table.
    for node in scans:
        assert "Seq Scan" not in node["Node Type"], node
        assert node.get("Rows Removed by Filter", 0) == 0, node
    project_rows = [n for n in scans if n["Relation Name"] == "projects"]
    project_deletes = [
        n for n in scans if n["Relation Name"] == "tombstones" and "'projects'" in json.dumps(n)
    ]
    for found, index in (
        (project_rows, "projects_change_seq"),
        (project_deletes, "tombstones_change_seq"),
    ):
        assert len(found) == 1
        assert found[0]["Node Type"] == "Index Scan"
        assert found[0]["Index Name"] == index
        assert found[0]["Actual Rows"] == 5


def test_a_cursor_older_than_the_tombstone_retention_gets_a_replacement_pull(
    pull, projects, wait_for_replica
) -> None:
    wait_for_replica()
    old = pull().body["timestamp"]
    doomed = _create(projects, "Sync retention doomed")
    _delete(doomed)
    result = prune_tombstones(0)
    assert result.pruned >= 1 and result.pruned_through > old
    wait_for_replica()
    reply = pull(old)
    assert reply.status == 200
    assert reply.body["experimentalStrategy"] == "replacement"
    with db.reader().session() as session:
        total = int(session.scalar("SELECT count(*) FROM projects"))
    assert len(reply.body["changes"]["projects"]["updated"]) == total
    assert all(reply.body["changes"][t.name]["deleted"] == [] for t in TABLES)
    current = pull(reply.body["timestamp"])
    assert "experimentalStrategy" not in current.body
    assert current.body["timestamp"] == reply.body["timestamp"]
    # Pruning the newest tombstones never moves the cursor back.
    assert reply.body["timestamp"] >= result.pruned_through


def test_a_cursor_ahead_of_the_replica_waits_and_an_unknown_one_resets(
    pull, projects, servers, wait_for_replica
) -> None:
    wait_for_replica()
    with replay_paused(servers):
        _create(projects, "Sync ahead of the replica")
        ahead = _cursor()
        assert ahead > _cursor(db.reader())
        reply = pull(ahead)
        assert reply.status == 200
        assert reply.body == {"changes": {t.name: EMPTY for t in TABLES}, "timestamp": ahead}
    wait_for_replica()
    unknown = pull(_cursor() + 1_000_000)
    assert unknown.body["experimentalStrategy"] == "replacement"
    assert unknown.body["timestamp"] == _cursor(db.reader())


def test_a_migration_pull_sends_every_record_of_added_tables(pull, wait_for_replica) -> None:
    wait_for_replica()
    since = pull().body["timestamp"]
    migration = json.dumps(
        {
            "from": 1,
            "tables": ["sectors", "unknown_table"],
            "columns": [{"table": "countries", "columns": ["iso2"]}],
        }
    )
    reply = pull(since, query={"migration": migration, "schema_version": "2"})
    assert reply.status == 200, reply.body
    changes = reply.body["changes"]
    assert len(changes["sectors"]["updated"]) == 6
    assert len(changes["countries"]["updated"]) == 195
    assert changes["projects"] == EMPTY
    assert "unknown_table" not in changes


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"last_pulled_at": "yesterday"}, "last_pulled_at"),
        ({"last_pulled_at": "-5"}, "last_pulled_at"),
        ({"last_pulled_at": "1.5"}, "last_pulled_at"),
        ({"schema_version": "0"}, "schema_version"),
        ({"schema_version": "v1"}, "schema_version"),
        ({"migration": "{not json"}, "migration"),
        ({"migration": '{"tables": []}'}, "migration"),
        ({"migration": '{"from": 1, "tables": "sectors"}'}, "migration.tables"),
    ],
)
def test_malformed_parameters_are_400_naming_them(mobile, claims_of, query, field: str) -> None:
    reply = mobile("GET", "/sync", claims=claims_of("viewer"), query=query)
    assert reply.status == 400
    assert reply.body["field"] == field


def test_a_pull_is_gzipped_when_the_client_accepts_it(pull, wait_for_replica) -> None:
    wait_for_replica()
    plain = pull(headers={"accept-encoding": "identity"})
    zipped = pull(headers={"accept-encoding": "gzip, deflate, br"})
    refused = pull(headers={"accept-encoding": "gzip;q=0, br"})
    assert "Content-Encoding" not in plain.headers and "Content-Encoding" not in refused.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert zipped.body == plain.body
    assert zipped.wire_bytes * 4 < plain.wire_bytes


def test_the_sample_event_is_a_first_pull(endpoints, servers, wait_for_replica) -> None:
    from covenant.regions import get_region
    from devstack.functions import get_function, invoke

    from .conftest import decode_reply, load_event

    wait_for_replica()
    event = load_event("sync_pull.json")
    reply = decode_reply(invoke(get_function("mobile"), get_region("syd"), event, endpoints))
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "gzip"
    assert len(reply.body["changes"]["countries"]["updated"]) == 195


def test_pull_needs_a_token(mobile) -> None:
    event = make_event("GET", "/sync")
    assert "authorizer" not in event["requestContext"]
    reply = mobile("GET", "/sync")
    assert reply.status == 401 and reply.body["code"] == "UNAUTHENTICATED"


def test_the_readme_shows_the_schema_the_server_syncs() -> None:
    """The app's developers copy the appSchema from README.md: it must be the one the server's
    pull answers with, column for column."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    assert f"```js\n{watermelon_schema_js()}\n```" in readme


def test_a_migration_pull_with_a_cursor_ahead_of_the_replica_still_sends_the_migration(
    pull, projects, servers, wait_for_replica
) -> None:
    """A migration pull (new tables and columns are sent in full) whose cursor is ahead of this
    replica is served by the primary: answered "nothing new yet", WatermelonDB would record the
    migration as done and the new table would stay empty on the device."""
    wait_for_replica()
    with replay_paused(servers):
        _create(projects, "Migration ahead of the replica")
        ahead = _cursor()
        migration = json.dumps({"from": 1, "tables": ["sectors"], "columns": []})
        reply = pull(ahead, query={"migration": migration, "schema_version": "2"})
    assert reply.status == 200, reply.body
    assert len(reply.body["changes"]["sectors"]["updated"]) == 6, reply.body

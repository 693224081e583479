"""POST /sync (WatermelonDB push) through the deployed handler: roles, conflicts, validation,
idempotency, one transaction with its outbox events."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db
from covenant.sync_horizon import prune_tombstones
from covenant.uow import UnitOfWork

from .conftest import token_claims, wait_for_lock_waiters

_INSERT = """
INSERT INTO projects (id, name, sector_id, country_code, status, budget_usd, progress)
VALUES (CAST(:id AS uuid), :name, 'energy', 'KEN', 'active', 1000000, 10)
"""


def _cursor() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT sync_cursor()"))


def _row(project_id: str) -> dict | None:
    with db.writer().session() as session:
        return session.one(
            "SELECT id::text, name, progress, status, region, version, budget_usd, "
            "impact_score::float8 AS impact_score, country_code::text AS country_code "
            "FROM projects WHERE id = CAST(:id AS uuid)",
            id=project_id,
        )


def _events(project_id: str) -> list[dict[str, Any]]:
    with db.writer().session() as session:
        rows = session.run(
            "SELECT payload FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=project_id
        )
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


@pytest.fixture
def projects(servers) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    # Their tombstones stay: deleting the newest ones would move the change cursor back,
    # which no production path does, and a push's cursor check relies on it.
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)


def _existing(projects: list[str], name: str) -> str:
    project_id = str(uuid.uuid4())
    with UnitOfWork() as uow:
        uow.run(_INSERT, id=project_id, name=name)
    projects.append(project_id)
    return project_id


def _server_update(project_id: str, **values: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with UnitOfWork() as uow:
        uow.run(f"UPDATE projects SET {sets} WHERE id = CAST(:id AS uuid)", id=project_id, **values)


def _record(project_id: str, **overrides: Any) -> dict[str, Any]:
    """A raw record as WatermelonDB sends it: every column, plus _status and _changed."""
    record = {
        "id": project_id,
        "name": "Sync Push Probe",
        "description": "",
        "sector_id": "health",
        "country_code": "NZL",
        "region": "",
        "status": "planning",
        "budget_usd": 2_500_000,
        "impact_score": 4.25,
        "progress": 0,
        "version": 0,
        "created_at": 1795862300000,
        "updated_at": 1795862300000,
        "_status": "created",
        "_changed": "",
    }
    record.update(overrides)
    return record


def _changes(created=(), updated=(), deleted=(), **tables: Any) -> dict[str, Any]:
    empty = {"created": [], "updated": [], "deleted": []}
    return {
        "countries": tables.get("countries", empty),
        "projects": {"created": list(created), "updated": list(updated), "deleted": list(deleted)},
        "sectors": tables.get("sectors", empty),
    }


@pytest.fixture
def push(mobile, claims_of):
    editor = claims_of("editor")

    def run(changes: Any, last_pulled_at: Any, *, claims=None, **kwargs):
        return mobile(
            "POST",
            "/sync",
            body=changes,
            claims=claims or editor,
            query={"last_pulled_at": str(last_pulled_at)},
            **kwargs,
        )

    run.editor = editor  # type: ignore[attr-defined]
    return run


def test_a_viewer_cannot_push(push, claims_of, projects) -> None:
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    reply = push(_changes(created=[_record(new_id)]), _cursor(), claims=claims_of("viewer"))
    assert reply.status == 403 and reply.body["code"] == "FORBIDDEN"
    assert _row(new_id) is None


@pytest.mark.parametrize("role", ["editor", "admin"])
def test_a_create_is_applied_with_its_events(push, claims_of, projects, role: str) -> None:
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    claims = claims_of(role)
    reply = push(_changes(created=[_record(new_id)]), _cursor(), claims=claims, region="syd")
    assert reply.status == 200, reply.body
    assert reply.body == {
        "applied": {"projects": {"created": 1, "updated": 0, "deleted": 0, "unchanged": 0}},
    }
    assert reply.headers["Covenant-Position"]  # read-your-writes (covenant.position)
    row = _row(new_id)
    assert row is not None
    assert (row["name"], row["region"], row["version"], row["impact_score"]) == (
        "Sync Push Probe",
        "syd",  # derived from New Zealand, whatever the record said
        1,
        4.25,
    )
    events = _events(new_id)
    assert [e["type"] for e in events] == ["covenant.projects.created", "audit.projects.created"]
    assert events[0]["source"] == "/covenant/syd/mobile"
    assert events[0]["data"]["project"]["budgetUsd"] == 2_500_000
    audit = events[1]["data"]
    assert audit["actor"]["sub"] == token_claims(claims["_token"])["sub"]
    assert audit["actor"]["roles"] == [role]
    assert audit["via"] == "sync" and audit["action"] == "created"


def test_an_update_applies_only_real_changes(push, projects) -> None:
    project_id = _existing(projects, "Sync update target")
    since = _cursor()
    record = _record(
        project_id,
        name="Sync update target",
        sector_id="energy",
        country_code="KEN",
        status="active",
        budget_usd=1_000_000,
        impact_score=0,
        progress=35,
        _status="updated",
        _changed="progress",
    )
    reply = push(_changes(updated=[record]), since)
    assert reply.status == 200, reply.body
    assert reply.body["applied"]["projects"]["updated"] == 1
    assert _row(project_id)["progress"] == 35 and _row(project_id)["version"] == 2
    audit = _events(project_id)[-1]["data"]
    assert audit["changes"] == {"progress": {"from": 10, "to": 35}}
    # Pushing the same state again with a fresh cursor changes nothing and writes no event.
    again = push(_changes(updated=[record]), _cursor())
    assert again.body["applied"]["projects"] == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 1,
    }
    assert _row(project_id)["version"] == 2
    assert len(_events(project_id)) == 2


def test_a_record_changed_on_the_server_since_the_pull_is_a_conflict(push, projects) -> None:
    contested = _existing(projects, "Sync contested")
    innocent = _existing(projects, "Sync innocent")
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    since = _cursor()
    _server_update(contested, progress=50)
    reply = push(
        _changes(
            created=[_record(new_id)],
            updated=[
                _record(contested, name="Sync contested", progress=90, _status="updated"),
                _record(innocent, name="Sync innocent", progress=20, _status="updated"),
            ],
        ),
        since,
    )
    assert reply.status == 409
    assert reply.body["code"] == "CONFLICT"
    assert reply.body["conflicts"] == {"projects": [contested]}
    # Nothing at all was applied.
    assert _row(contested)["progress"] == 50
    assert _row(innocent)["progress"] == 10
    assert _row(new_id) is None
    assert _events(new_id) == []


def test_a_record_deleted_on_the_server_since_the_pull_is_a_conflict(push, projects) -> None:
    gone = _existing(projects, "Sync deleted on server")
    since = _cursor()
    with UnitOfWork() as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=gone)
    reply = push(_changes(updated=[_record(gone, progress=5, _status="updated")]), since)
    assert reply.status == 409 and reply.body["conflicts"] == {"projects": [gone]}
    assert _row(gone) is None
    # Deleting it too is no conflict: both sides agree.
    assert push(_changes(deleted=[gone]), since).status == 200


def test_a_delete_to_a_record_changed_on_the_server_is_a_conflict(push, projects) -> None:
    project_id = _existing(projects, "Sync delete contested")
    since = _cursor()
    _server_update(project_id, progress=70)
    reply = push(_changes(deleted=[project_id]), since)
    assert reply.status == 409
    assert _row(project_id) is not None


def test_deletes_leave_tombstones_and_unknown_ids_are_ignored(push, projects) -> None:
    project_id = _existing(projects, "Sync delete target")
    never = str(uuid.uuid4())
    reply = push(_changes(deleted=[project_id, never]), _cursor())
    assert reply.status == 200
    assert reply.body["applied"]["projects"] == {
        "created": 0,
        "updated": 0,
        "deleted": 1,
        "unchanged": 1,
    }
    assert _row(project_id) is None
    with db.writer().session() as session:
        assert session.scalar(
            "SELECT change_seq FROM tombstones WHERE table_name = 'projects' AND record_id = :id",
            id=project_id,
        )
    assert [e["type"] for e in _events(project_id)[-2:]] == [
        "covenant.projects.deleted",
        "audit.projects.deleted",
    ]


def test_a_created_record_that_exists_updates_it_and_a_missing_update_creates(
    push, projects
) -> None:
    existing = _existing(projects, "Sync create existing")
    missing = str(uuid.uuid4())
    projects.append(missing)
    since = _cursor()
    reply = push(
        _changes(
            created=[_record(existing, name="Sync create existing", progress=12)],
            updated=[_record(missing, name="Sync update missing", _status="updated")],
        ),
        since,
    )
    assert reply.status == 200, reply.body
    assert reply.body["applied"]["projects"]["created"] == 1
    assert reply.body["applied"]["projects"]["updated"] == 1
    assert _row(existing)["progress"] == 12 and _row(existing)["country_code"] == "NZL"
    assert _row(missing)["name"] == "Sync update missing"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"budget_usd": 0}, "budget_usd"),
        ({"budget_usd": 12.5}, "budget_usd"),
        ({"budget_usd": "100"}, "budget_usd"),
        ({"budget_usd": True}, "budget_usd"),
        ({"progress": 101}, "progress"),
        ({"status": "done"}, "status"),
        ({"status": "completed", "progress": 50}, "progress"),
        ({"impact_score": 10.5}, "impact_score"),
        ({"impact_score": 1.234}, "impact_score"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": None}, "name"),
        ({"sector_id": "space"}, "sector_id"),
        ({"country_code": "KE"}, "country_code"),
        ({"country_code": "ZZZ"}, "country_code"),
        ({"description": 7}, "description"),
        ({"id": "abc123def456ghij"}, "id"),
    ],
)
def test_an_invalid_record_is_400_naming_record_and_field_and_nothing_is_written(
    push, projects, overrides, field: str
) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    projects.extend([good, bad])
    reply = push(_changes(created=[_record(good), _record(bad, **overrides)]), _cursor())
    assert reply.status == 400, reply.body
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert reply.body["table"] == "projects"
    assert reply.body["field"] == field
    if field != "id":
        assert reply.body["record"] == bad
    assert _row(good) is None and _row(bad) is None


def test_a_new_record_needs_its_required_columns(push, projects) -> None:
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    record = {"id": new_id, "name": "Sync Partial", "sector_id": "energy", "country_code": "KEN"}
    reply = push(_changes(created=[record]), _cursor())
    assert reply.status == 400
    assert (reply.body["record"], reply.body["field"]) == (new_id, "budget_usd")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[]", "body"),
        ("null", "body"),
        ("{oops", "body"),
        ({"tasks": {"created": [], "updated": [], "deleted": []}}, "table"),
        ({"projects": {"created": {}, "updated": [], "deleted": []}}, "created"),
        ({"projects": []}, "changes"),
    ],
)
def test_a_malformed_push_is_400(push, body, field: str) -> None:
    reply = push(body, _cursor())
    assert reply.status == 400
    assert reply.body["field"] == field


def test_countries_and_sectors_are_read_only(push) -> None:
    country = {"id": "KEN", "name": "Kenya", "gdp_usd": 1}
    reply = push(
        _changes(countries={"created": [], "updated": [country], "deleted": []}), _cursor()
    )
    assert reply.status == 400 and reply.body["table"] == "countries"
    reply = push(_changes(sectors={"created": [], "updated": [], "deleted": ["health"]}), _cursor())
    assert reply.status == 400 and reply.body["table"] == "sectors"


def test_a_push_bigger_than_the_limits_is_413(push) -> None:
    records = [_record(str(uuid.uuid4())) for _ in range(3)]
    reply = push(_changes(created=records), _cursor(), env={"SYNC_MAX_PUSH_RECORDS": "2"})
    assert reply.status == 413 and reply.body["maxRecords"] == 2
    reply = push(_changes(created=records), _cursor(), env={"SYNC_MAX_PUSH_BYTES": "100"})
    assert reply.status == 413


def test_the_same_push_twice_is_applied_once(push, projects, claims_of) -> None:
    target = _existing(projects, "Sync idempotent target")
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    since = _cursor()
    changes = _changes(
        created=[_record(new_id)],
        updated=[_record(target, name="Sync idempotent target", progress=44, _status="updated")],
    )
    first = push(changes, since)
    second = push(changes, since)
    assert first.status == second.status == 200
    assert second.text == first.text  # byte for byte, key order included
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert _row(target)["version"] == 2
    assert len(_events(target)) == 2 and len(_events(new_id)) == 2
    # Receipts are per user: another user's identical push is not a replay, it conflicts.
    other = push(changes, since, claims=claims_of("admin"))
    assert other.status == 409


def test_a_push_retried_while_the_first_is_still_running_waits_and_replays(
    push, projects, servers
) -> None:
    target = _existing(projects, "Sync slow push target")
    since = _cursor()
    changes = _changes(
        updated=[_record(target, name="Sync slow push target", progress=61, _status="updated")]
    )
    blocker = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    replies: dict[str, Any] = {}

    def attempt(name: str) -> None:
        replies[name] = push(changes, since)

    with blocker.session() as session:
        session.run("BEGIN")
        session.run("SELECT 1 FROM projects WHERE id = CAST(:id AS uuid) FOR UPDATE", id=target)
        first = threading.Thread(target=attempt, args=("first",))
        first.start()
        wait_for_lock_waiters(1)  # the first push holds its receipt and waits on the row
        retry = threading.Thread(target=attempt, args=("retry",))
        retry.start()
        wait_for_lock_waiters(2)  # the retry waits on the first one's receipt
        assert first.is_alive() and retry.is_alive()
        session.run("ROLLBACK")
    first.join(10)
    retry.join(10)
    blocker.close()
    db.close_all()
    assert replies["first"].status == replies["retry"].status == 200
    assert replies["retry"].headers.get("Idempotent-Replayed") == "true"
    assert replies["first"].body == replies["retry"].body
    assert _row(target)["version"] == 2
    assert [e["type"] for e in _events(target)] == [
        "covenant.projects.updated",
        "audit.projects.updated",
    ]


def test_the_sample_event_creates_its_project(
    endpoints, servers, claims_of, projects, primary_lambda
) -> None:
    from .conftest import decode_reply, invoke_mobile, load_event

    event = load_event("sync_push.json")
    created = json.loads(event["body"])["projects"]["created"][0]["id"]
    projects.append(created)
    event["queryStringParameters"]["last_pulled_at"] = str(_cursor())
    reply = decode_reply(invoke_mobile(primary_lambda, endpoints, event))  # syd, handed off
    assert reply.status == 200, reply.body
    assert _row(created)["name"] == "Nairobi Clinic Solar Retrofit"
    assert _row(created)["region"] == "jnb"


@pytest.mark.parametrize("raw", [None, "null", "soon"])
def test_a_push_needs_the_cursor_of_its_pull(mobile, claims_of, projects, raw) -> None:
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    reply = mobile(
        "POST",
        "/sync",
        body=_changes(created=[_record(new_id)]),
        claims=claims_of("editor"),
        query=None if raw is None else {"last_pulled_at": raw},
    )
    assert reply.status == 400
    assert reply.body["field"] == "last_pulled_at"
    assert _row(new_id) is None


def test_a_cursor_this_server_never_handed_out_is_a_conflict(push, projects) -> None:
    """E.g. a cursor from before a database restore: changes made since cannot be told apart,
    so nothing is applied until the client has pulled (a full replacement) again."""
    target = _existing(projects, "Sync unknown cursor target")
    reply = push(
        _changes(updated=[_record(target, progress=90, _status="updated")]), _cursor() + 10**9
    )
    assert reply.status == 409
    assert (reply.body["reason"], reply.body["field"]) == ("cursor_unknown", "last_pulled_at")
    assert reply.body["conflicts"] == {"projects": [target]}
    assert _row(target)["progress"] == 10


def test_a_cursor_older_than_the_tombstone_retention_is_a_conflict(push, projects) -> None:
    """A record deleted on the server whose tombstone has been pruned must not come back
    from a device that last pulled before the delete."""
    gone = _existing(projects, "Sync pruned delete")
    since = _cursor()
    with UnitOfWork() as uow:
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=gone)
    assert prune_tombstones(0).pruned_through > since
    stale = push(_changes(updated=[_record(gone, progress=5, _status="updated")]), since)
    assert stale.status == 409
    assert (stale.body["reason"], stale.body["conflicts"]) == (
        "cursor_too_old",
        {"projects": [gone]},
    )
    assert _row(gone) is None
    fresh = str(uuid.uuid4())
    projects.append(fresh)
    assert push(_changes(created=[_record(fresh)]), _cursor()).status == 200


def test_tombstones_are_kept_for_the_configured_retention(push, projects, monkeypatch) -> None:
    from mobile.sync import push as push_module

    def tombstone(record_id: str) -> object:
        with db.writer().session() as session:
            return session.scalar(
                "SELECT change_seq FROM tombstones WHERE table_name = 'projects' "
                "AND record_id = :id",
                id=record_id,
            )

    doomed = _existing(projects, "Sync retention probe")
    assert push(_changes(deleted=[doomed]), _cursor()).status == 200
    assert tombstone(doomed) is not None
    # The push path prunes now and then (once per warm Lambda and 10 minutes): make it due.
    monkeypatch.setattr(push_module, "_last_maintenance", 0.0)
    env = {"SYNC_TOMBSTONE_RETENTION_S": "3600"}
    assert push(_changes(deleted=[str(uuid.uuid4())]), _cursor(), env=env).status == 200
    assert tombstone(doomed) is not None
    monkeypatch.setattr(push_module, "_last_maintenance", 0.0)
    env = {"SYNC_TOMBSTONE_RETENTION_S": "0"}
    assert push(_changes(deleted=[str(uuid.uuid4())]), _cursor(), env=env).status == 200
    assert tombstone(doomed) is None


def test_a_push_costs_the_same_statements_for_2_and_for_6_records(push, projects) -> None:
    """Set-based writes and one outbox INSERT for all the events: the statements of a push do
    not grow with its records (each record still gets its change and audit event). Sent to the
    primary region, where a push runs (from a secondary it is handed off whole)."""
    from covenant.db import record_statements

    counts = []
    for size in (2, 6):
        ids = [str(uuid.uuid4()) for _ in range(size)]
        projects.extend(ids)
        cursor = _cursor()
        with record_statements() as statements:
            reply = push(
                _changes(created=[_record(i, name=f"Batch {size}") for i in ids]),
                cursor,
                region="iad",
            )
        assert reply.status == 200, reply.body
        writes = [s for s in statements if "INSERT INTO outbox" in s]
        assert len(writes) == 1, writes
        counts.append(len(statements))
        with db.writer().session() as session:
            events = session.scalar(
                "SELECT count(*) FROM outbox WHERE aggregate_id = ANY(:ids)", ids=ids
            )
        assert events == 2 * size  # covenant.projects.created and its audit event, each
    assert counts[0] == counts[1], counts


def test_a_pushed_upper_case_id_is_refused_with_the_field_named(push, projects) -> None:
    """WatermelonDB ids are case-sensitive: a lower-cased copy stored by the server would come
    back to the device as a second record. The push is refused, and nothing is written."""
    new_id = str(uuid.uuid4()).upper()
    projects.append(new_id.lower())
    reply = push(_changes(created=[_record(new_id)]), _cursor())
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "id"
    assert "lower-case UUID" in reply.body["message"]
    assert _row(new_id.lower()) is None


def test_a_created_record_that_exists_keeps_columns_it_did_not_send(push, projects) -> None:
    """A `created` record that already exists is merged as an update: the create defaults
    (status planning, progress 0, ...) must not overwrite columns the client did not send."""
    project_id = _existing(projects, "Audit create-merge")  # status active, progress 10
    rec = _record(project_id, name="Audit create-merge")
    for k in ("status", "progress", "description", "impact_score"):
        rec.pop(k)
    reply = push(_changes(created=[rec]), _cursor())
    assert reply.status == 200, reply.body
    row = _row(project_id)
    assert (row["status"], row["progress"]) == ("active", 10), row


def test_a_country_code_not_in_its_stored_form_is_refused(push, projects) -> None:
    """The device keeps what it pushed: stored as KEN, a pushed `ken` would leave the device's
    copy unable to match its country, and no pull would ever correct it."""
    project_id = _existing(projects, "Lower-case code")
    before = _row(project_id)
    record = _record(project_id, name="Lower-case code", country_code="ken")
    reply = push(_changes(updated=[record]), _cursor())
    assert reply.status == 400, reply.body
    assert (reply.body["field"], reply.body["record"]) == ("country_code", project_id)
    assert "must be sent as stored: KEN" in reply.body["message"]
    assert _row(project_id) == before


def test_a_committed_push_whose_position_cannot_be_read_is_not_a_503(
    push, projects, monkeypatch
) -> None:
    """The push committed, then the writer could not be reached for the position: the answer
    is the push's (without a position), never "the database is unavailable; retry shortly",
    which would send a client without the receipt to write again."""
    import mobile.handler as handler

    class Unreachable:
        def session(self) -> Any:
            raise db.DatabaseUnavailable("cannot connect to the writer")

    monkeypatch.setattr(handler, "writer", Unreachable)
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    reply = push(_changes(created=[_record(new_id)]), _cursor(), region="iad")
    assert reply.status == 200, reply.body
    assert reply.body["applied"]["projects"]["created"] == 1
    assert "Covenant-Position" not in reply.headers
    assert _row(new_id) is not None


def test_a_push_whose_commit_outcome_is_unknown_says_it_may_have_been_applied(
    push, projects, monkeypatch
) -> None:
    original = db.Session.run

    def lose_the_commit(self: db.Session, sql: str, **params: Any) -> Any:
        if sql == "COMMIT" and self._database.role is db.Role.WRITER:
            original(self, sql, **params)
            raise db.DatabaseUnavailable("connection to the writer lost mid-request")
        return original(self, sql, **params)

    new_id = str(uuid.uuid4())
    projects.append(new_id)
    since = _cursor()
    with monkeypatch.context() as patch:
        patch.setattr(db.Session, "run", lose_the_commit)
        lost = push(_changes(created=[_record(new_id)]), since, region="iad")
    assert lost.status == 503, lost.body
    assert lost.body["mayHaveBeenApplied"] is True
    assert "it may have been applied" in lost.body["message"]
    assert lost.headers["Retry-After"]
    again = push(_changes(created=[_record(new_id)]), since, region="iad")
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("held", ["row", "commit order"])
def test_a_push_that_outlasts_the_statement_timeout_is_a_503_that_changed_nothing(
    push, projects, servers, monkeypatch, held: str
) -> None:
    """A statement timeout (SQLSTATE 57014) while the push waits on a record another
    transaction holds, or at COMMIT for the change-ordering lock: the database rolled the push
    back, so the answer is a 503 with Retry-After saying nothing was changed (never a 500),
    and the same push succeeds once the way is clear."""
    target = _existing(projects, "Sync timeout target")
    new_id = str(uuid.uuid4())
    projects.append(new_id)
    since = _cursor()
    changes = _changes(
        created=[_record(new_id, name="Sync timeout create")],
        updated=[_record(target, name="Sync timeout target", progress=77, _status="updated")],
    )
    before = _row(target)
    # A writer connection of its own, with a short statement timeout: the push's statement
    # waits for the held lock until the timeout cancels it.
    monkeypatch.setattr(db, "_databases", {})
    blocker = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with blocker.session() as session:
        session.run("BEGIN")
        if held == "row":
            session.run("SELECT 1 FROM projects WHERE id = CAST(:id AS uuid) FOR UPDATE", id=target)
        else:
            session.run("SELECT pg_advisory_xact_lock(change_seq_lock_key())")
        try:
            reply = push(changes, since, region="iad", env={"DB_STATEMENT_TIMEOUT_MS": "300"})
        finally:
            session.run("ROLLBACK")
            blocker.close()
    db.close_all()

    assert reply.status == 503, reply.body
    assert reply.body["code"] == "SERVICE_UNAVAILABLE"
    assert reply.body["reason"] == "statement_timeout"
    assert "nothing was changed" in reply.body["message"]
    assert int(reply.headers["Retry-After"]) > 0
    assert _row(target) == before and _row(new_id) is None
    assert _events(target) == [] and _events(new_id) == []

    monkeypatch.setattr(db, "_databases", {})
    again = push(changes, since, region="iad")
    db.close_all()  # this test's connections, before monkeypatch restores the usual ones
    assert again.status == 200, again.body
    assert "Idempotent-Replayed" not in again.headers  # the timed-out push left no receipt
    assert again.body["applied"]["projects"] == {
        "created": 1,
        "updated": 1,
        "deleted": 0,
        "unchanged": 0,
    }


def test_a_1000_record_push_runs_each_statement_on_at_most_250_records(push, projects) -> None:
    """The documented maximum push: its writes and events go in bounded statements (a single
    1 000-row INSERT, and its 2 000-event outbox INSERT, timed out on a loaded writer)."""
    from covenant.db import record_statements

    ids = [str(uuid.uuid4()) for _ in range(1000)]
    projects.extend(ids)
    with record_statements() as statements:
        reply = push(
            _changes(created=[_record(i, name="Sync max push") for i in ids]),
            _cursor(),
            region="iad",
        )
    assert reply.status == 200, reply.body
    assert reply.body["applied"]["projects"]["created"] == 1000
    assert sum("INSERT INTO projects" in s for s in statements) == 4
    assert sum("INSERT INTO outbox" in s for s in statements) == 4
    with db.writer().session() as session:
        assert (
            session.scalar("SELECT count(*) FROM outbox WHERE aggregate_id = ANY(:ids)", ids=ids)
            == 2000
        )
        assert (
            session.scalar(
                "SELECT count(*) FROM projects WHERE id = ANY(CAST(:ids AS uuid[])) "
                "AND change_seq IS NOT NULL",
                ids=ids,
            )
            == 1000
        )

"""Writes: who may, validation that names field and rule, optimistic concurrency, events in the
same transaction, and read-your-write from the writer while the replica lags."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from covenant import db
from covenant.db import Database, Role

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
VIEWER = {"sub": "sub-viewer", "email": "viewer@covenant.local", "cognito:groups": "[viewer]"}

CREATE = """
mutation ($input: CreateProjectInput!) {
  createProject(input: $input) {
    id name description status budgetUsd impactScore progress version
    sector { id } country { code } region { code }
  }
}
"""
UPDATE = """
mutation ($id: ID!, $input: UpdateProjectInput!, $v: Int) {
  updateProject(id: $id, input: $input, expectedVersion: $v) {
    id name status budgetUsd impactScore progress version country { code } region { code }
  }
}
"""
DELETE = "mutation ($id: ID!, $v: Int) { deleteProject(id: $id, expectedVersion: $v) { id } }"


def _input(**overrides):
    return {
        "name": "Mutation Test Grid",
        "sectorId": "energy",
        "countryCode": "KEN",
        "budgetUsd": 5_000_000_000,
        **overrides,
    }


@pytest.fixture
def created(servers) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
        # Tombstones stay: deleting them would move the change cursor backwards
        # under a device that already pulled past them (pruning advances sync_horizon).


def _outbox(aggregate_id: str) -> list[dict]:
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT subject, payload FROM outbox WHERE aggregate_id = :id ORDER BY seq",
            id=aggregate_id,
        )
    for row in rows:
        if isinstance(row["payload"], str):
            row["payload"] = json.loads(row["payload"])
    return rows


def test_editor_creates_a_project_with_its_events(gql, created) -> None:
    reply = gql(CREATE, {"input": _input(impactScore=7.25)}, claims=EDITOR, region="jnb")
    assert reply.status == 200 and not reply.errors, reply.body
    project = reply.data["createProject"]
    created.append(project["id"])
    assert project | {"id": None} == {
        "id": None,
        "name": "Mutation Test Grid",
        "description": "",
        "status": "PLANNING",
        "budgetUsd": 5_000_000_000,
        "impactScore": 7.25,
        "progress": 0,
        "version": 1,
        "sector": {"id": "energy"},
        "country": {"code": "KEN"},
        "region": {"code": "jnb"},
    }
    events = _outbox(project["id"])
    assert [e["subject"] for e in events] == [
        "covenant.projects.created",
        "audit.projects.created",
    ]
    change, audit = (e["payload"] for e in events)
    assert change["specversion"] == "1.0"
    assert change["source"] == "/covenant/jnb/graphql"
    assert change["subject"] == f"projects/{project['id']}"
    assert change["data"]["project"]["budgetUsd"] == 5_000_000_000
    assert audit["data"]["actor"] == {
        "sub": "sub-editor",
        "username": None,
        "email": "editor@covenant.local",
        "roles": ["editor"],
    }
    assert audit["data"]["action"] == "created"
    assert audit["data"]["requestId"]


def test_partial_update_changes_only_what_was_sent(gql, created) -> None:
    project = gql(CREATE, {"input": _input()}, claims=EDITOR).data["createProject"]
    created.append(project["id"])
    reply = gql(
        UPDATE,
        {"id": project["id"], "input": {"progress": 40, "status": "ACTIVE"}, "v": 1},
        claims=EDITOR,
    )
    updated = reply.data["updateProject"]
    assert (updated["progress"], updated["status"], updated["version"]) == (40, "ACTIVE", 2)
    assert (updated["name"], updated["budgetUsd"]) == (project["name"], project["budgetUsd"])
    audit = _outbox(project["id"])[-1]["payload"]
    assert audit["type"] == "audit.projects.updated"
    assert audit["data"]["changes"] == {
        "progress": {"from": 0, "to": 40},
        "status": {"from": "planning", "to": "active"},
    }


def test_moving_a_project_to_another_country_moves_its_region(gql, created) -> None:
    project = gql(CREATE, {"input": _input()}, claims=EDITOR).data["createProject"]
    created.append(project["id"])
    moved = gql(UPDATE, {"id": project["id"], "input": {"countryCode": "mex"}}, claims=EDITOR)
    assert moved.data["updateProject"]["country"] == {"code": "MEX"}
    assert moved.data["updateProject"]["region"] == {"code": "sfo"}


def test_a_stale_version_gets_conflict_and_changes_nothing(gql, created) -> None:
    project = gql(CREATE, {"input": _input()}, claims=EDITOR).data["createProject"]
    created.append(project["id"])
    gql(UPDATE, {"id": project["id"], "input": {"progress": 10}, "v": 1}, claims=EDITOR)
    stale = gql(UPDATE, {"id": project["id"], "input": {"progress": 99}, "v": 1}, claims=EDITOR)
    assert stale.codes == ["CONFLICT"]
    assert stale.errors[0]["extensions"]["currentVersion"] == 2
    stale_delete = gql(DELETE, {"id": project["id"], "v": 1}, claims=EDITOR)
    assert stale_delete.codes == ["CONFLICT"]
    with db.writer().session() as session:
        assert (
            session.scalar(
                "SELECT progress FROM projects WHERE id = CAST(:id AS uuid)", id=project["id"]
            )
            == 10
        )
    assert len(_outbox(project["id"])) == 4  # create + one update, nothing from the stale ones


def test_a_write_is_four_statements_and_a_change_to_the_same_values_writes_nothing(
    gql, created
) -> None:
    """BEGIN, the write (locking the row, checking the version, returning old and new values),
    one outbox INSERT of both events, COMMIT (nested fields of the result would add theirs);
    before them, on the reader, the check that the caller has not signed out since the token;
    after them, the primary's position for the answer (read-your-writes). Sent to ams, all of
    them run in the primary, handed off whole: none in ams."""
    lean = "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id } }"
    project = gql(lean, {"input": _input()}, claims=EDITOR)
    assert "token_revocations" in project.statements[0], project.statements
    assert len(project.statements[1:-1]) == 4, project.statements
    assert "pg_current_wal_insert_lsn" in project.statements[-1], project.statements
    project_id = project.data["createProject"]["id"]
    created.append(project_id)
    update = gql(
        "mutation ($id: ID!) { updateProject(id: $id, input: {progress: 30}, expectedVersion: 1)"
        " { version } }",
        {"id": project_id},
        claims=EDITOR,
    )
    assert "token_revocations" in update.statements[0], update.statements
    assert len(update.statements[1:-1]) == 4, update.statements
    assert "pg_current_wal_insert_lsn" in update.statements[-1], update.statements
    audit = _outbox(project_id)[-1]["payload"]
    assert audit["data"]["changes"] == {"progress": {"from": 0, "to": 30}}
    same = gql(
        UPDATE,
        {"id": project_id, "input": {"progress": 30, "name": "Mutation Test Grid"}},
        claims=EDITOR,
    )
    assert same.data["updateProject"]["version"] == 2
    assert len(_outbox(project_id)) == 4  # created + updated: the same values are no change
    delete = gql(DELETE, {"id": project_id, "v": 2}, claims=EDITOR)
    assert delete.data == {"deleteProject": {"id": project_id}}
    assert "token_revocations" in delete.statements[0], delete.statements
    assert len(delete.statements[1:-1]) == 4, delete.statements
    assert "pg_current_wal_insert_lsn" in delete.statements[-1], delete.statements


def test_a_country_that_becomes_a_member_joins_once(gql) -> None:
    create = (
        'mutation { createCountry(input: {code: "XJX", iso2: "XJ", name: "Joinland", '
        'continent: ASIA, region: "sin", gdpUsd: 5000000000}) { joinedAt version } }'
    )
    status = (
        'mutation ($s: CovenantStatus!) { updateCountry(code: "XJX", input: {covenantStatus: $s})'
        " { covenantStatus joinedAt version } }"
    )
    try:
        assert gql(create, claims=ADMIN).data["createCountry"] == {"joinedAt": None, "version": 1}
        active = gql(status, {"s": "ACTIVE"}, claims=ADMIN).data["updateCountry"]
        assert active["covenantStatus"] == "ACTIVE" and active["joinedAt"]
        audit = _outbox("XJX")[-1]["payload"]
        assert set(audit["data"]["changes"]) == {"covenantStatus", "joinedAt"}
        suspended = gql(status, {"s": "SUSPENDED"}, claims=ADMIN).data["updateCountry"]
        assert suspended["joinedAt"] == active["joinedAt"]  # joined once, not again
        assert set(_outbox("XJX")[-1]["payload"]["data"]["changes"]) == {"covenantStatus"}
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM countries WHERE code = 'XJX'")
            session.run("DELETE FROM tombstones WHERE record_id = 'XJX'")


def test_delete_then_not_found(gql, created) -> None:
    project = gql(CREATE, {"input": _input()}, claims=EDITOR).data["createProject"]
    created.append(project["id"])
    assert gql(DELETE, {"id": project["id"]}, claims=ADMIN).data == {
        "deleteProject": {"id": project["id"]}
    }
    assert [e["subject"] for e in _outbox(project["id"])][-2:] == [
        "covenant.projects.deleted",
        "audit.projects.deleted",
    ]
    again = gql(DELETE, {"id": project["id"]}, claims=ADMIN)
    assert again.codes == ["NOT_FOUND"]
    update = gql(UPDATE, {"id": project["id"], "input": {"progress": 1}}, claims=ADMIN)
    assert update.codes == ["NOT_FOUND"]


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"name": "   "}, "input.name", "must not be empty"),
        ({"name": "x" * 201}, "input.name", "must be at most 200 characters"),
        ({"budgetUsd": 0}, "input.budgetUsd", "must be greater than 0"),
        ({"impactScore": 10.5}, "input.impactScore", "must be between 0.00 and 10.00"),
        ({"impactScore": 1.234}, "input.impactScore", "must have at most 2 decimal places"),
        ({"progress": 101}, "input.progress", "must be between 0 and 100"),
        ({"sectorId": "mining"}, "input.sectorId", "must be one of"),
        ({"countryCode": "KENYA"}, "input.countryCode", "must be an ISO 3166 alpha-3 code"),
        ({"countryCode": "QQQ"}, "input.countryCode", "no country has the code QQQ"),
        (
            {"status": "COMPLETED", "progress": 50},
            "input.progress",
            "must be 100 for a completed project",
        ),
    ],
)
def test_invalid_input_names_field_and_rule_and_writes_nothing(gql, overrides, field, rule) -> None:
    with db.writer().session() as session:
        before = session.scalar("SELECT count(*) FROM outbox")
    reply = gql(
        CREATE, {"input": _input(**{"name": "Invalid Input Probe", **overrides})}, claims=EDITOR
    )
    assert reply.codes == ["BAD_USER_INPUT"]
    error = reply.errors[0]
    assert error["extensions"]["field"] == field
    assert error["extensions"]["rule"].startswith(rule)
    assert error["message"].startswith(f"{field}: {rule}")
    with db.writer().session() as session:
        assert session.scalar("SELECT count(*) FROM outbox") == before
        assert session.scalar("SELECT count(*) FROM projects WHERE name LIKE 'Invalid Input%'") == 0


def test_contribution_cannot_be_sent(gql) -> None:
    reply = gql(
        'mutation { updateCountry(code: "NOR", input: {contributionUsd: 1}) { code } }',
        claims=ADMIN,
    )
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    assert "contributionUsd" in reply.errors[0]["message"]


@pytest.mark.parametrize(
    ("claims", "mutation", "code"),
    [
        (None, CREATE, "UNAUTHENTICATED"),
        (VIEWER, CREATE, "FORBIDDEN"),
        (EDITOR, "createCountry", "FORBIDDEN"),
        (EDITOR, "updateCountry", "FORBIDDEN"),
        (VIEWER, "updateCountry", "FORBIDDEN"),
        (None, "updateCountry", "UNAUTHENTICATED"),
    ],
)
def test_roles(gql, claims, mutation, code) -> None:
    documents = {
        "createCountry": 'mutation { createCountry(input: {code: "ZZZ", iso2: "ZZ", name: "Z", '
        'continent: EUROPE, region: "ams", gdpUsd: 1}) { code } }',
        "updateCountry": 'mutation { updateCountry(code: "NOR", input: {gdpUsd: 1}) { code } }',
    }
    if mutation == CREATE:
        reply = gql(CREATE, {"input": _input(name="Role Probe")}, claims=claims)
    else:
        reply = gql(documents[mutation], claims=claims)
    assert reply.codes == [code]
    assert reply.data == {("createProject" if mutation == CREATE else mutation): None}
    with db.writer().session() as session:
        assert session.scalar("SELECT count(*) FROM countries WHERE code = 'ZZZ'") == 0
        assert session.scalar("SELECT gdp_usd FROM countries WHERE code = 'NOR'") > 1
        assert session.scalar("SELECT count(*) FROM projects WHERE name = 'Role Probe'") == 0


def test_anyone_may_read(gql) -> None:
    for claims in (None, VIEWER):
        reply = gql("{ sectors { id } }", claims=claims)
        assert len(reply.data["sectors"]) == 6


def test_admin_manages_countries_and_codes_stay_unique(gql) -> None:
    create = (
        'mutation { createCountry(input: {code: "XKX", iso2: "XK", name: "Testland", '
        'continent: EUROPE, region: "ams", gdpUsd: 123456789012, covenantStatus: ACTIVE}) '
        "{ code iso2 name contributionUsd covenantStatus joinedAt version region { code } } }"
    )
    try:
        reply = gql(create, claims=ADMIN)
        assert not reply.errors, reply.body
        country = reply.data["createCountry"]
        assert country["contributionUsd"] == 12345678
        assert country["covenantStatus"] == "ACTIVE" and country["joinedAt"]
        duplicate = gql(create, claims=ADMIN)
        assert duplicate.codes == ["CONFLICT"]
        assert duplicate.errors[0]["extensions"]["field"] == "input.code"
        same_name = gql(create.replace('"XKX"', '"XKY"').replace('"XK"', '"XY"'), claims=ADMIN)
        assert same_name.codes == ["CONFLICT"]
        assert same_name.errors[0]["extensions"]["field"] == "input.name"
        update = gql(
            'mutation { updateCountry(code: "xkx", input: {gdpUsd: 99990000}, expectedVersion: 1) '
            "{ gdpUsd contributionUsd version } }",
            claims=ADMIN,
        )
        assert update.data["updateCountry"] == {
            "gdpUsd": 99_990_000,
            "contributionUsd": 9_999,
            "version": 2,
        }
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM countries WHERE code = 'XKX'")
            session.run("DELETE FROM tombstones WHERE record_id = 'XKX'")


def test_the_writer_answers_a_mutation_while_the_replica_lags(gql, servers, created) -> None:
    replica = Database(
        Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    with replica.session() as session:
        session.run("SELECT pg_wal_replay_pause()")
    try:
        reply = gql(CREATE, {"input": _input(name="Read Your Write")}, claims=EDITOR)
        project = reply.data["createProject"]
        created.append(project["id"])
        assert project["country"] == {"code": "KEN"}  # nested fields come from the writer too
        lagging = gql("query ($id: ID!) { project(id: $id) { id } }", {"id": project["id"]})
        assert lagging.data == {"project": None}  # the replica has not replayed it yet
    finally:
        with replica.session() as session:
            session.run("SELECT pg_wal_replay_resume()")
        replica.close()


def test_a_mutation_that_outlasts_the_statement_timeout_says_nothing_changed(
    gql, created, servers, monkeypatch
) -> None:
    """A real statement timeout (SQLSTATE 57014): the project's row is held by another
    transaction, the update waits for it until the timeout cancels it. The field's error says
    that nothing changed and that the same request can be sent again, never a bare internal
    error; and nothing was written."""
    reply = gql(CREATE, {"input": _input(name="Timeout Grid")}, claims=EDITOR, region="iad")
    project = reply.data["createProject"]
    created.append(project["id"])
    monkeypatch.setattr(db, "_databases", {})  # a writer connection with the short timeout
    blocker = Database(
        Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with blocker.session() as session:
        session.run("BEGIN")
        session.run(
            "SELECT 1 FROM projects WHERE id = CAST(:id AS uuid) FOR UPDATE", id=project["id"]
        )
        try:
            timed_out = gql(
                UPDATE,
                {"id": project["id"], "input": {"progress": 40}, "v": 1},
                claims=EDITOR,
                region="iad",
                environment={"DB_STATEMENT_TIMEOUT_MS": "300"},
            )
        finally:
            session.run("ROLLBACK")
            blocker.close()
    db.close_all()
    monkeypatch.setattr(db, "_databases", {})
    assert timed_out.data == {"updateProject": None}
    (error,) = timed_out.errors
    assert error["message"].startswith(
        "The database did not finish in time (statement timeout), so this field changed "
        "nothing; send the request again in a few seconds."
    )
    assert error["extensions"]["retryable"] is True
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert [row["subject"] for row in _outbox(project["id"])] == [
        "covenant.projects.created",
        "audit.projects.created",
    ]
    again = gql(
        UPDATE,
        {"id": project["id"], "input": {"progress": 40}, "v": 1},
        claims=EDITOR,
        region="iad",
    )
    db.close_all()  # this test's connections, before monkeypatch restores the usual ones
    assert again.data["updateProject"]["version"] == 2, again.body

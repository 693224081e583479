"""Idempotency-Key on mutations: a retry replays the first answer instead of writing twice.

Records live in `idempotency_records` on the primary (Powertools Idempotency with the PostgreSQL
persistence layer); keys are per caller, bound to the request body, and only mutations use them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from covenant import db

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}

GRAPHQL_RESPONSE = "application/graphql-response+json; charset=utf-8"
NAME_PREFIX = "Idempotency Test "

CREATE = """
mutation ($input: CreateProjectInput!) {
  createProject(input: $input) { id name budgetUsd version country { code } }
}
"""


def _input(name: str, **overrides):
    return {
        "name": name,
        "sectorId": "energy",
        "countryCode": "KEN",
        "budgetUsd": 1_000_000,
        **overrides,
    }


def _key() -> str:
    return f"test-{uuid.uuid4().hex}"


def _records() -> dict[str, dict]:
    with db.writer().session() as session:
        rows = session.rows("SELECT id, status, in_progress_expiration FROM idempotency_records")
    return {row["id"]: row for row in rows}


def _project_ids(name: str) -> list[str]:
    with db.writer().session() as session:
        return [
            str(row[0])
            for row in session.run("SELECT id FROM projects WHERE name = :name", name=name)
        ]


def _outbox_subjects(project_id: str) -> list[str]:
    with db.writer().session() as session:
        return [
            row[0]
            for row in session.run(
                "SELECT subject FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=project_id
            )
        ]


def _executed(reply) -> bool:
    """Whether the invocation ran the resolver (any statement beyond the idempotency store and
    the caller's sign-out check, which every authenticated mutation passes first)."""
    return any(
        "idempotency_records" not in sql and "token_revocations" not in sql
        for sql in reply.statements
    )


@pytest.fixture
def name(servers) -> Iterator[str]:
    """A project name unique to the test; every project of that name goes afterwards."""
    unique = f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}"
    yield unique
    with db.writer().session() as session:
        ids = [
            str(row[0])
            for row in session.run(
                "SELECT id FROM projects WHERE name LIKE :prefix", prefix=f"{unique}%"
            )
        ]
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
        # Tombstones stay: deleting them would move the change cursor backwards
        # under a device that already pulled past them (pruning advances sync_horizon).


@pytest.fixture
def create(gql):
    def run(name: str, key: str | None, claims=EDITOR, **overrides):
        headers = {"Idempotency-Key": key} if key is not None else {}
        return gql(CREATE, {"input": _input(name, **overrides)}, claims=claims, headers=headers)

    return run


def test_a_retry_replays_the_first_answer_and_writes_once(create, name) -> None:
    key = _key()
    first = create(name, key)
    assert first.status == 200 and not first.errors, first.body
    assert _executed(first)
    second = create(name, key)
    assert (second.status, second.headers, second.body) == (first.status, first.headers, first.body)
    # Byte for byte: the fields in the order the query selected them, not sorted.
    assert second.text == first.text
    assert list(second.data["createProject"]) == ["id", "name", "budgetUsd", "version", "country"]
    assert not _executed(second), second.statements
    ids = _project_ids(name)
    assert ids == [first.data["createProject"]["id"]]
    assert _outbox_subjects(ids[0]) == ["covenant.projects.created", "audit.projects.created"]


def test_the_same_key_with_another_body_is_422_and_writes_nothing(create, name) -> None:
    key = _key()
    first = create(name, key)
    assert first.status == 200 and not first.errors, first.body
    other = create(f"{name} other", key)
    assert other.status == 422
    assert other.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert other.body == {
        "errors": [
            {
                "message": "This Idempotency-Key was used with a different request; use a new key.",
                "extensions": {"code": "BAD_USER_INPUT", "field": "Idempotency-Key"},
            }
        ]
    }
    assert _project_ids(f"{name} other") == []
    assert _project_ids(name) == [first.data["createProject"]["id"]]


def test_different_keys_create_two_projects(create, name) -> None:
    first = create(name, _key())
    second = create(name, _key())
    assert not first.errors and not second.errors
    assert first.data["createProject"]["id"] != second.data["createProject"]["id"]
    assert sorted(_project_ids(name)) == sorted(
        [first.data["createProject"]["id"], second.data["createProject"]["id"]]
    )


@pytest.mark.parametrize(
    "key",
    ["short", "has spaces in it", "x" * 129, "comma,separated,key", "ünicode-key-1234"],
)
def test_a_key_of_bad_shape_is_400_naming_the_header(create, name, key) -> None:
    before = _records()
    reply = create(name, key)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {
        "errors": [
            {
                "message": "Idempotency-Key must be 8 to 128 characters of A-Z a-z 0-9 . _ : -",
                "extensions": {"code": "BAD_USER_INPUT", "field": "Idempotency-Key"},
            }
        ]
    }
    assert _project_ids(name) == []
    assert _records() == before


def test_keys_of_the_edge_lengths_are_accepted(create, name) -> None:
    for key in ("a" * 8, "A.b_c:d-" + "9" * 120):
        reply = create(name, key)
        assert reply.status == 200 and not reply.errors, reply.body
    assert len(_project_ids(name)) == 2


def test_a_request_still_in_progress_gets_409(create, name) -> None:
    key = _key()
    before = set(_records())
    first = create(name, key)
    assert not first.errors, first.body
    (record_id,) = set(_records()) - before
    with db.writer().session() as session:
        session.run(
            "UPDATE idempotency_records SET status = 'INPROGRESS', response_data = NULL, "
            "in_progress_expiration = :until WHERE id = :id",
            until=int((time.time() + 3600) * 1000),
            id=record_id,
        )
    retry = create(name, key)
    assert retry.status == 409
    assert retry.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert retry.body == {
        "errors": [
            {
                "message": "A request with this Idempotency-Key is still running; "
                "retry in a moment.",
                "extensions": {"code": "CONFLICT", "field": "Idempotency-Key"},
            }
        ]
    }
    assert not _executed(retry)
    assert len(_project_ids(name)) == 1


def _lambda_died(record_id: str, *, forget_the_write: bool = False) -> None:
    """Leaves the record as an attempt whose Lambda died leaves it: INPROGRESS, no answer, past
    its in-progress expiry. `forget_the_write`: as if it had died before its write committed."""
    with db.writer().session() as session:
        session.run(
            "UPDATE idempotency_records SET status = 'INPROGRESS', response_data = NULL, "
            "in_progress_expiration = :past, applied = applied AND NOT :forget WHERE id = :id",
            past=int((time.time() - 60) * 1000),
            forget=forget_the_write,
            id=record_id,
        )


def test_an_attempt_that_died_before_committing_is_taken_over(create, name) -> None:
    """INPROGRESS past its in-progress expiry, nothing applied: the retry runs."""
    key = _key()
    before = set(_records())
    first = create(name, key)
    (record_id,) = set(_records()) - before
    with db.writer().session() as session:  # as if its transaction had never committed
        session.run(
            "DELETE FROM projects WHERE id = CAST(:id AS uuid)",
            id=first.data["createProject"]["id"],
        )
    _lambda_died(record_id, forget_the_write=True)
    retry = create(name, key)
    assert retry.status == 200 and not retry.errors, retry.body
    assert _records()[record_id]["status"] == "COMPLETED"
    again = create(name, key)
    assert again.body == retry.body
    assert _project_ids(name) == [retry.data["createProject"]["id"]]


def test_an_attempt_that_died_after_committing_is_never_run_again(create, name) -> None:
    """Its write is in the database but its answer is not: the retry is told the request was
    applied, and so is every later retry of the key."""
    key = _key()
    before = set(_records())
    first = create(name, key)
    (record_id,) = set(_records()) - before
    _lambda_died(record_id)
    retry = create(name, key)
    assert retry.status == 200
    assert retry.data is None
    (error,) = retry.errors
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "applied": True}
    assert "This request was applied" in error["message"]
    assert not _executed(retry), retry.statements
    assert _records()[record_id]["status"] == "COMPLETED"
    again = create(name, key)
    assert again.body == retry.body
    assert _project_ids(name) == [first.data["createProject"]["id"]]


def test_an_expired_record_lets_the_key_run_again(create, name) -> None:
    key = _key()
    before = set(_records())
    first = create(name, key)
    (record_id,) = set(_records()) - before
    with db.writer().session() as session:
        session.run(
            "UPDATE idempotency_records SET expiration = :past WHERE id = :id",
            past=int(time.time()) - 60,
            id=record_id,
        )
    retry = create(name, key)
    assert retry.status == 200 and not retry.errors, retry.body
    assert retry.data["createProject"]["id"] != first.data["createProject"]["id"]
    assert len(_project_ids(name)) == 2


def test_keys_are_per_caller(create, name) -> None:
    key = _key()
    by_editor = create(name, key, claims=EDITOR)
    by_admin = create(name, key, claims=ADMIN)
    assert not by_editor.errors and not by_admin.errors
    assert _executed(by_admin)
    assert by_admin.data["createProject"]["id"] != by_editor.data["createProject"]["id"]
    assert len(_project_ids(name)) == 2
    assert create(name, key, claims=ADMIN).body == by_admin.body
    assert create(name, key, claims=EDITOR).body == by_editor.body
    assert len(_project_ids(name)) == 2


def test_a_mutation_without_the_header_is_not_recorded(create, name) -> None:
    before = _records()
    first = create(name, None)
    second = create(name, None)
    assert not first.errors and not second.errors
    assert _records() == before
    assert len(_project_ids(name)) == 2


def test_queries_with_the_header_are_not_recorded(gql) -> None:
    before = _records()
    headers = {"Idempotency-Key": _key()}
    first = gql("{ sectors { id } }", claims=EDITOR, headers=headers)
    second = gql("{ sectors { id } }", claims=EDITOR, headers=headers)
    assert first.status == second.status == 200
    assert first.body == second.body
    assert _executed(second)
    # A query ignores the header, even one of bad shape: it has nothing to deduplicate.
    assert gql("{ sectors { id } }", headers={"Idempotency-Key": "bad key"}).status == 200
    assert _records() == before


def test_an_error_result_is_replayed_as_is(create, name) -> None:
    key = _key()
    first = create(name, key, budgetUsd=0)
    assert first.status == 200
    assert first.data == {"createProject": None}
    assert first.codes == ["BAD_USER_INPUT"]
    second = create(name, key, budgetUsd=0)
    assert (second.status, second.body) == (first.status, first.body)
    assert not _executed(second), second.statements
    assert _project_ids(name) == []


def test_an_internal_error_is_not_replayed(create, name, monkeypatch) -> None:
    """A crash is no answer: the record goes, and the retry runs again."""
    import graphql_api.resolvers.mutation as mutation

    def broken(*args, **kwargs):
        raise RuntimeError("outbox down")

    key = _key()
    before = _records()
    with monkeypatch.context() as patch:
        patch.setattr(mutation, "emit", broken)
        failed = create(name, key)
    assert failed.status == 200
    assert failed.codes == ["INTERNAL_SERVER_ERROR"]
    assert "outbox down" not in str(failed.body)
    assert _records() == before
    assert _project_ids(name) == []  # the unit of work rolled back
    retry = create(name, key)
    assert retry.status == 200 and not retry.errors, retry.body
    assert _project_ids(name) == [retry.data["createProject"]["id"]]


def test_an_internal_error_after_the_write_committed_is_replayed(create, name, monkeypatch) -> None:
    """The project is written, then reading its country for the answer fails: running the
    request again would write it twice, so the retry gets the first answer instead."""
    import graphql_api.repository as repository

    def broken(*args, **kwargs):
        raise RuntimeError("replica gone")

    key = _key()
    with monkeypatch.context() as patch:
        patch.setattr(repository, "countries_by_code", broken)
        failed = create(name, key)
    assert failed.status == 200
    assert failed.codes == ["INTERNAL_SERVER_ERROR"]
    (written,) = _project_ids(name)
    assert _outbox_subjects(written) == ["covenant.projects.created", "audit.projects.created"]
    retry = create(name, key)
    assert (retry.status, retry.body) == (failed.status, failed.body)
    assert not _executed(retry), retry.statements
    assert _project_ids(name) == [written]


def _commit_losing_its_connection(*, after_commit: bool):
    """A Session.run whose COMMIT loses its connection: before the server got it (nothing
    applied), or after the server committed (applied, but the client cannot know)."""
    original = db.Session.run

    def run(self, sql: str, **params):
        if sql != "COMMIT":
            return original(self, sql, **params)
        if after_commit:
            original(self, sql, **params)
            raise db.DatabaseUnavailable("connection to the writer lost mid-request")
        pid = original(self, "SELECT pg_backend_pid()")[0][0]
        admin = db.Database(
            db.Role.WRITER, self._database.url, statement_timeout_ms=5000, connect_timeout_s=3
        )
        with admin.session() as other:
            other.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        admin.close()
        return original(self, sql, **params)

    return run


def test_a_commit_that_lost_its_connection_before_applying_runs_again_on_retry(
    create, name, monkeypatch
) -> None:
    """The client is told the change may have been applied; the record knows it was not, so a
    retry with the same key runs the request, once."""
    key = _key()
    with monkeypatch.context() as patch:
        patch.setattr(db.Session, "run", _commit_losing_its_connection(after_commit=False))
        failed = create(name, key)
    assert failed.status == 200
    assert failed.codes == ["INTERNAL_SERVER_ERROR"]
    (error,) = failed.errors
    assert "it may have been applied" in error["message"]
    assert "same Idempotency-Key" in error["message"]
    assert error["extensions"]["mayHaveBeenApplied"] is True
    assert _project_ids(name) == []
    retry = create(name, key)
    assert retry.status == 200 and not retry.errors, retry.body
    again = create(name, key)
    assert again.body == retry.body
    assert _project_ids(name) == [retry.data["createProject"]["id"]]


def test_a_commit_that_lost_its_connection_after_applying_is_never_run_again(
    create, name, monkeypatch
) -> None:
    key = _key()
    with monkeypatch.context() as patch:
        patch.setattr(db.Session, "run", _commit_losing_its_connection(after_commit=True))
        failed = create(name, key)
    assert "it may have been applied" in failed.errors[0]["message"]
    (written,) = _project_ids(name)
    retry = create(name, key)
    assert retry.data is None
    (error,) = retry.errors
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "applied": True}
    assert not _executed(retry), retry.statements
    assert create(name, key).body == retry.body
    assert _project_ids(name) == [written]


def test_a_retry_in_another_region_replays(create, name, monkeypatch) -> None:
    """Deployed, each region's Lambda has its own name; Powertools reads it from os.environ."""
    key = _key()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "covenant-ams-graphql")
    first = create(name, key)
    assert not first.errors, first.body
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "covenant-iad-graphql")
    retry = create(name, key)
    assert retry.body == first.body
    assert len(_project_ids(name)) == 1


def test_an_unavailable_idempotency_store_is_a_graphql_error(create, name, gql) -> None:
    reply = gql(
        CREATE,
        {"input": _input(name)},
        claims=EDITOR,
        headers={"Idempotency-Key": _key()},
        environment={
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/covenant",
            "DB_CONNECT_TIMEOUT_S": "1",
        },
    )
    # Nothing was executed, so the answer has no `data`: a 5xx under graphql-response+json.
    assert reply.status == 503
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert "data" not in reply.body
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    assert "retry" in reply.errors[0]["message"]
    assert "127.0.0.1" not in str(reply.body)
    assert _project_ids(name) == []

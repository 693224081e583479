"""A mutation with several root fields: each is its own transaction, and a failing one nulls
only its own result, so the client always learns what the others committed (issue 20)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from graphql import GraphQLNonNull

from covenant import db
from graphql_api.schema import executable_schema

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
PREFIX = "Partial Mutation "


@pytest.fixture
def name(servers) -> Iterator[str]:
    unique = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    yield unique
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE name LIKE :prefix", prefix=f"{unique}%")


def _projects(name: str) -> list[str]:
    with db.writer().session() as session:
        return [
            str(row[0])
            for row in session.run("SELECT id FROM projects WHERE name = :name", name=name)
        ]


def _subjects(aggregate_id: str) -> list[str]:
    with db.writer().session() as session:
        return [
            row[0]
            for row in session.run(
                "SELECT subject FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=aggregate_id
            )
        ]


def _create(alias: str, name: str, budget: int = 1) -> str:
    return (
        f'{alias}: createProject(input: {{name: "{name}", sectorId: "energy", '
        f'countryCode: "KEN", budgetUsd: {budget}}}) {{ id name }}'
    )


def test_every_root_mutation_field_is_nullable() -> None:
    mutation = executable_schema().mutation_type
    assert mutation is not None
    assert {
        field_name: isinstance(field.type, GraphQLNonNull)
        for field_name, field in mutation.fields.items()
    } == dict.fromkeys(mutation.fields, False)


def test_a_later_failure_leaves_the_earlier_write_in_data(gql, name) -> None:
    """The issue's case: `a` commits, `b` fails; the answer used to be `data: null`."""
    reply = gql(
        f'mutation {{ {_create("a", name)} b: deleteProject(id: "x") {{ id }} }}', claims=EDITOR
    )
    assert reply.status == 200
    (written,) = _projects(name)
    assert reply.data == {"a": {"id": written, "name": name}, "b": None}
    (error,) = reply.errors
    assert error["path"] == ["b"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert _subjects(written) == ["covenant.projects.created", "audit.projects.created"]


def test_an_earlier_failure_does_not_stop_or_hide_a_later_write(gql, name) -> None:
    reply = gql(
        "mutation { "
        'a: updateProject(id: "00000000-0000-4000-8000-000000000000", input: {progress: 1}) { id } '
        f"{_create('b', name)} "
        f"{_create('c', name + ' zero', budget=0)} }}",
        claims=EDITOR,
    )
    (written,) = _projects(name)
    assert _projects(name + " zero") == []
    assert reply.data == {"a": None, "b": {"id": written, "name": name}, "c": None}
    assert [(e["path"], e["extensions"]["code"]) for e in reply.errors] == [
        (["a"], "NOT_FOUND"),
        (["c"], "BAD_USER_INPUT"),
    ]


# Each root field of Mutation, failing for an editor, next to a write that commits.
FAILING = {
    "createCountry": 'createCountry(input: {code: "ZZZ", iso2: "ZZ", name: "Z", '
    'continent: EUROPE, region: "ams", gdpUsd: 1}) { code }',
    "updateCountry": 'updateCountry(code: "NOR", input: {gdpUsd: 1}) { code }',
    "createProject": 'createProject(input: {name: "n", sectorId: "mining", countryCode: "KEN", '
    "budgetUsd: 1}) { id }",
    "updateProject": 'updateProject(id: "not-a-uuid", input: {progress: 1}) { id }',
    "deleteProject": 'deleteProject(id: "x") { id }',
    "setUserRole": 'setUserRole(input: {user: "someone@covenant.test", role: ADMIN}) { changed }',
}


def test_every_mutation_field_is_covered() -> None:
    mutation = executable_schema().mutation_type
    assert mutation is not None
    assert set(FAILING) == set(mutation.fields)


@pytest.mark.parametrize("field", sorted(FAILING))
def test_a_failing_field_of_each_kind_nulls_only_itself(gql, name, field) -> None:
    reply = gql(f"mutation {{ {_create('a', name)} b: {FAILING[field]} }}", claims=EDITOR)
    (written,) = _projects(name)
    assert reply.data == {"a": {"id": written, "name": name}, "b": None}
    (error,) = reply.errors
    assert error["path"] == ["b"]
    assert error["extensions"]["code"] in ("BAD_USER_INPUT", "FORBIDDEN", "NOT_FOUND")


def test_an_idempotent_replay_returns_the_partial_answer_and_writes_once(gql, name) -> None:
    document = f'mutation {{ {_create("a", name)} b: deleteProject(id: "x") {{ id }} }}'
    headers = {"Idempotency-Key": f"partial-{uuid.uuid4().hex}"}
    first = gql(document, claims=EDITOR, headers=headers)
    (written,) = _projects(name)
    assert first.data == {"a": {"id": written, "name": name}, "b": None}
    again = gql(document, claims=EDITOR, headers=headers)
    assert (again.status, again.body) == (first.status, first.body)
    assert _projects(name) == [written]
    assert _subjects(written) == ["covenant.projects.created", "audit.projects.created"]


def test_a_write_whose_answer_cannot_be_read_back_says_it_was_applied(
    gql, name, monkeypatch
) -> None:
    """The project commits, then reading its country for the answer fails: the null field's
    error says the write was applied, and names it; a replay says the same."""
    import graphql_api.repository as repository

    def broken(*args, **kwargs):
        raise RuntimeError("replica gone")

    document = (
        'mutation { a: createProject(input: {name: "' + name + '", sectorId: "energy", '
        'countryCode: "KEN", budgetUsd: 1}) { id country { code } } }'
    )
    headers = {"Idempotency-Key": f"partial-{uuid.uuid4().hex}"}
    with monkeypatch.context() as patch:
        patch.setattr(repository, "countries_by_code", broken)
        failed = gql(document, claims=EDITOR, headers=headers)
    (written,) = _projects(name)
    assert failed.data == {"a": None}
    (error,) = failed.errors
    assert error["path"] == ["a", "country"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["extensions"]["applied"] is True
    assert error["extensions"]["id"] == written
    assert "replica gone" not in str(failed.body)
    again = gql(document, claims=EDITOR, headers=headers)
    assert again.body == failed.body
    assert _projects(name) == [written]


def test_a_write_whose_read_back_finds_the_database_gone_does_not_say_retry(
    gql, name, monkeypatch
) -> None:
    """The project commits, then the database is unreachable for its answer: the error must
    not say "The database is unavailable; retry shortly", which invites a second write."""
    import graphql_api.repository as repository
    from covenant.db import DatabaseUnavailable

    def gone(*args, **kwargs):
        raise DatabaseUnavailable("cannot connect to the reader")

    document = (
        'mutation { a: createProject(input: {name: "' + name + '", sectorId: "energy", '
        'countryCode: "KEN", budgetUsd: 1}) { id country { code } } }'
    )
    with monkeypatch.context() as patch:
        patch.setattr(repository, "countries_by_code", gone)
        failed = gql(document, claims=EDITOR)
    (written,) = _projects(name)
    (error,) = failed.errors
    assert error["extensions"]["applied"] is True and error["extensions"]["id"] == written
    assert "retry" not in error["message"]
    assert error["message"].startswith(f"This change was applied ({written})")

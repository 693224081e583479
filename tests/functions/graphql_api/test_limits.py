"""Depth, cost, operation-count and mutation-count limits: exact figures, and no way around
them."""

from __future__ import annotations

import uuid

import pytest
from graphql import parse, validate

from covenant import db
from graphql_api.engine import mutation_count_rule
from graphql_api.limits import cost_limit_rule, depth_limit_rule, operation_count_rule
from graphql_api.schema import executable_schema

from .conftest import EDITOR, Reply


def _errors(query: str, *, depth: int = 50, cost: int = 10**9, operations: int = 10, **kw):
    rules = [
        depth_limit_rule(depth),
        cost_limit_rule(cost, default_list_size=50, max_list_size=200, **kw),
        operation_count_rule(operations),
    ]
    return validate(executable_schema(), parse(query), rules)


def _cost(query: str, **kw) -> int:
    errors = _errors(query, cost=0, **kw)
    return next(e.extensions["cost"] for e in errors if e.extensions.get("limit") == "cost")


DEEP = "{ countries { nodes { projects { nodes { country { name } } } } } }"  # depth 6


def test_depth_at_the_limit_passes_and_above_fails() -> None:
    assert _errors(DEEP, depth=6) == []
    (error,) = _errors(DEEP, depth=5)
    assert error.message == "Query depth 6 exceeds the maximum of 5."
    assert error.extensions == {
        "code": "BAD_USER_INPUT",
        "limit": "depth",
        "depth": 6,
        "maximum": 5,
    }


def test_fragments_count_where_they_are_spread() -> None:
    named = "{ countries { nodes { ...P } } } fragment P on Country { projects { nodes { country { name } } } }"
    inline = (
        "{ countries { nodes { ... on Country { projects { nodes { country { name } } } } } } }"
    )
    for query in (named, inline):
        assert [e.message for e in _errors(query, depth=5)] == [
            "Query depth 6 exceeds the maximum of 5."
        ]


def test_cyclic_fragments_terminate() -> None:
    query = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    assert _errors(query, depth=1) == []  # graphql's NoFragmentCyclesRule reports the cycle


def test_typename_is_free() -> None:
    assert _cost("{ __typename sectors { __typename } }") == 1 + 50 * 0


def test_first_multiplies_the_cost_of_a_connection() -> None:
    # countries: 1 + 10 x (nodes: 1 + 1 x (code 1 + projects: 1 + 5 x (nodes 1 + 1 x name 1)))
    query = "{ countries(first: 10) { nodes { code projects(first: 5) { nodes { name } } } } }"
    assert _cost(query) == 1 + 10 * (1 + (1 + (1 + 5 * (1 + 1))))


def test_first_from_a_variable_and_the_cap() -> None:
    query = "query ($n: Int) { countries(first: $n) { nodes { code } } }"
    assert _cost(query, variables={"n": 20}) == 1 + 20 * 2
    assert _cost(query, variables={"n": 10_000}) == 1 + 200 * 2  # capped at the page maximum
    assert _cost(query) == 1 + 50 * 2  # absent: the default page size


def test_aliases_each_count() -> None:
    one = "{ countries(first: 100) { nodes { code name } } }"
    many = (
        "{ "
        + " ".join(f"a{i}: countries(first: 100) {{ nodes {{ code name }} }}" for i in range(30))
        + " }"
    )
    assert _cost(many) == 30 * _cost(one)
    assert _errors(one, cost=500) == []
    (error,) = _errors(many, cost=500)
    assert error.message == f"Query cost {_cost(many)} exceeds the maximum of 500."
    assert error.extensions["maximum"] == 500


def test_fragments_cannot_hide_cost() -> None:
    plain = "{ countries(first: 100) { nodes { projects(first: 20) { nodes { id } } } } }"
    hidden = (
        "{ ...Q } fragment Q on Query { countries(first: 100) { nodes { ...C } } } "
        "fragment C on Country { projects(first: 20) { nodes { id } } }"
    )
    assert _cost(hidden) == _cost(plain)


@pytest.mark.parametrize(("count", "fails"), [(3, False), (4, True)])
def test_operation_count(count: int, fails: bool) -> None:
    query = " ".join(f"query Q{i} {{ sectors {{ id }} }}" for i in range(count))
    messages = [e.message for e in _errors(query, operations=3)]
    if fails:
        assert messages == [f"Documents may hold at most 3 operations; this one holds {count}."]
    else:
        assert messages == []


def test_lists_of_known_size_cost_their_size() -> None:
    query = "{ regions { countries(first: 10) { nodes { code } } } }"
    assert _cost(query, known_sizes={"Query.regions": 6}) == 1 + 6 * (1 + 10 * (1 + 1))
    assert _cost(query) == 1 + 50 * (1 + 10 * (1 + 1))  # unknown: the default page size


# --- mutations: root fields of the operation that runs -------------------------------------


def _mutation_errors(query: str, maximum: int, operation_name: str | None = None) -> list[str]:
    rule = mutation_count_rule(maximum, operation_name)
    return [e.message for e in validate(executable_schema(), parse(query), [rule])]


def _deletes(count: int, prefix: str = "d") -> str:
    """Aliased deletes of ids that do not exist: each answers NOT_FOUND and writes nothing."""
    return " ".join(
        f'{prefix}{i}: deleteProject(id: "{uuid.uuid4()}") {{ id }}' for i in range(count)
    )


def _too_many(count: int, maximum: int) -> dict:
    message = f"The mutation has {count} fields; at most {maximum} run in one request."
    extensions = {"code": "BAD_USER_INPUT", "limit": "mutations", "mutations": count}
    return {"errors": [{"message": message, "extensions": {**extensions, "maximum": maximum}}]}


def _writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]


def test_eleven_aliased_mutations_are_refused_before_anything_runs(gql) -> None:
    name = f"Mutation Limit {uuid.uuid4().hex}"
    fields = " ".join(f"m{i}: createProject(input: $input) {{ id }}" for i in range(11))
    document = f"mutation ($input: CreateProjectInput!) {{ {fields} }}"
    project = {"name": name, "sectorId": "energy", "countryCode": "KEN", "budgetUsd": 1_000}
    reply = gql(document, {"input": project}, claims=EDITOR)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/graphql-response+json; charset=utf-8"
    assert reply.body == _too_many(11, 10)
    assert reply.statements == []  # not even the sign-out check: nothing ran
    with db.writer().session() as session:
        rows = session.rows("SELECT id FROM projects WHERE name = :name", name=name)
    assert rows == []


def _ran(reply: Reply) -> None:
    """The mutation was accepted and ran: its first delete answered NOT_FOUND (a failed
    non-null root field ends a mutation: the fields after it do not run) and wrote nothing."""
    assert reply.status == 200, reply.body
    assert reply.codes == ["NOT_FOUND"]
    assert any("projects" in s for s in reply.statements)
    assert _writes(reply.statements) == []


def test_ten_mutations_run(gql) -> None:
    _ran(gql(f"mutation {{ {_deletes(10)} }}", claims=EDITOR))


def test_fragments_cannot_hide_mutations(gql) -> None:
    document = f"""
    mutation {{ __typename ...Two ... on Mutation {{ {_deletes(1, "inline")} }} }}
    fragment Two on Mutation {{ {_deletes(2, "named")} ...One }}
    fragment One on Mutation {{ {_deletes(1, "nested")} __typename }}
    """
    reply = gql(document, claims=EDITOR, environment={"GRAPHQL_MAX_MUTATIONS": "3"})
    assert reply.status == 400
    assert reply.body == _too_many(4, 3)  # `__typename` runs nothing and does not count
    assert reply.statements == []
    _ran(gql(document, claims=EDITOR, environment={"GRAPHQL_MAX_MUTATIONS": "4"}))


def test_the_mutation_limit_comes_from_the_environment(gql) -> None:
    limit = {"GRAPHQL_MAX_MUTATIONS": "2"}
    reply = gql(f"mutation {{ {_deletes(3)} }}", claims=EDITOR, environment=limit)
    assert reply.status == 400
    assert reply.body == _too_many(3, 2)
    assert reply.statements == []
    _ran(gql(f"mutation {{ {_deletes(2)} }}", claims=EDITOR, environment=limit))


def test_only_the_operation_that_runs_counts(gql) -> None:
    document = (
        f"query Read {{ sectors {{ id }} }} "
        f"mutation Many {{ {_deletes(3)} }} mutation Few {{ {_deletes(1)} }}"
    )
    limit = {"GRAPHQL_MAX_MUTATIONS": "2"}
    _ran(gql(document, operation_name="Few", claims=EDITOR, environment=limit))
    assert gql(document, operation_name="Read", environment=limit).status == 200
    many = gql(document, operation_name="Many", claims=EDITOR, environment=limit)
    assert many.status == 400
    assert many.body == _too_many(3, 2)


def test_mutation_fields_count_by_response_key() -> None:
    same = 'deleteProject(id: "1") { id }'
    # One key selected twice (directly or through a fragment) resolves once.
    twice = f"mutation {{ {same} {same} ...D }} fragment D on Mutation {{ {same} }}"
    assert _mutation_errors(twice, 1) == []
    aliased = f"mutation {{ {same} a: {same} b: {same} __typename t: __typename }}"
    assert _mutation_errors(aliased, 3) == []
    assert _mutation_errors(aliased, 2) == [
        "The mutation has 3 fields; at most 2 run in one request."
    ]


def test_queries_are_not_mutations() -> None:
    many = " ".join(f"s{i}: sectors {{ id }}" for i in range(5))
    assert _mutation_errors(f"{{ {many} }}", 1) == []
    assert _mutation_errors(f"query Q {{ {many} }} mutation M {{ {_deletes(1)} }}", 1, "Q") == []

"""Depth, cost and operation-count limits: exact figures, and no way around them."""

from __future__ import annotations

import pytest
from graphql import parse, validate

from graphql_api.limits import cost_limit_rule, depth_limit_rule, operation_count_rule
from graphql_api.schema import executable_schema


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

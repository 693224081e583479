"""Parsed and validated documents are kept per query text: a repeated query is neither parsed
nor validated again, yet every limit still holds for the values each request sends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from graphql_api import engine
from graphql_api.engine import DocumentCache

COUNTRIES = "{ countries(first: 3) { nodes { code } } }"
# Cost 1 + n * (1 + 1 + (1 + 200 * 2)): within 50 000 for n = 100, beyond it for n = 200.
PAGED = (
    "query ($n: Int) { countries(first: $n) { nodes { code "
    "projects(first: 200) { nodes { id } } } } }"
)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    engine.documents.clear()
    yield
    engine.documents.clear()


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    seen: list[str] = []
    parse = engine.parse

    def counting(source: str, *args, **kwargs):
        seen.append(source)
        return parse(source, *args, **kwargs)

    monkeypatch.setattr(engine, "parse", counting)
    return seen


def test_a_repeated_query_is_parsed_and_validated_once(gql, parses, monkeypatch) -> None:
    validations: list[int] = []
    validate = engine.validate

    def counting(*args, **kwargs):
        validations.append(1)
        return validate(*args, **kwargs)

    monkeypatch.setattr(engine, "validate", counting)
    first = gql(COUNTRIES)
    second = gql(COUNTRIES)
    assert first.body == second.body and not first.errors
    assert len(first.body["data"]["countries"]["nodes"]) == 3
    assert parses == [COUNTRIES]
    assert len(validations) == 2  # the rules and the limits, once, for the first request


def test_the_cost_of_a_cached_query_follows_each_requests_variables(gql, parses) -> None:
    small = gql(PAGED, {"n": 100})
    assert not small.errors, small.body
    large = gql(PAGED, {"n": 200})
    assert large.status == 400
    assert large.errors[0]["extensions"]["limit"] == "cost"
    assert large.errors[0]["extensions"]["cost"] == 1 + 200 * (1 + 1 + (1 + 200 * 2))
    again = gql(PAGED, {"n": 100})
    assert not again.errors
    assert parses == [PAGED]


def test_an_invalid_query_answers_the_same_each_time(gql, parses) -> None:
    query = "{ countries { nodes { nope } } }"
    first = gql(query)
    first.errors[0]["message"] = "changed by a client of the first answer"
    second = gql(query)
    assert second.status == 400
    assert second.codes == ["BAD_USER_INPUT"]
    assert "nope" in second.errors[0]["message"]
    assert parses == [query]


def test_limits_of_another_configuration_are_checked_afresh(gql) -> None:
    deep = "{ countries { nodes { projects { nodes { country { name } } } } } }"
    assert not gql(deep).errors
    reply = gql(deep, environment={"GRAPHQL_MAX_DEPTH": "5"})
    assert reply.errors[0]["extensions"]["limit"] == "depth"


def test_the_cache_keeps_the_most_recently_used_entries_within_its_bounds() -> None:
    cache = DocumentCache(max_entries=2, max_chars=100, max_text=10)
    a, b, c = (engine._Checked(None, [{"n": n}], None) for n in range(3))
    cache.put(("a",), "a", a)
    cache.put(("b",), "b", b)
    assert cache.get(("a",)) is a  # now the most recent
    cache.put(("c",), "c", c)
    assert (cache.get(("a",)), cache.get(("b",)), cache.get(("c",))) == (a, None, c)
    cache.put(("long",), "x" * 11, a)  # a text beyond max_text is not kept
    assert cache.get(("long",)) is None and len(cache) == 2
    by_size = DocumentCache(max_entries=100, max_chars=20, max_text=10)
    for name in "abc":
        by_size.put((name,), name * 8, a)  # 24 characters: the oldest goes
    assert [by_size.get((n,)) is not None for n in "abc"] == [False, True, True]

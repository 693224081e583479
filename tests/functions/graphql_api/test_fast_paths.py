"""The handler's fast paths answer what the slow ones do, on the real database: the benchmark's
query mix (and variants that leave the fast paths) executed by RowExecutor and by graphql-core's
own executor give the same data and errors, and a nested page PostgreSQL sends as JSON equals
the same page sent as rows."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from graphql.execution import Executor

from bench.query_mix import QUERIES
from graphql_api import engine, repository
from graphql_api.pagination import Order

VARIANTS = {
    **QUERIES,
    # Nested pages with columns that are not exact in JSON (a float, timestamps): as rows.
    "nested-rows": (
        '{ countries(first: 20, filter: {region: "ams"}) { nodes { code projects(first: 3, '
        "orderBy: {field: IMPACT, direction: DESC}) { totalCount pageInfo { hasNextPage "
        "endCursor } edges { cursor node { id impactScore createdAt sector { id name } } } } } } }"
    ),
    # Nested pages as JSON, under edges and nodes both, with aliases, fragments and __typename.
    "nested-json": (
        "{ sectors { id projects(first: 4) { pageInfo { hasNextPage endCursor } "
        "edges { cursor node { ...P } } nodes { __typename pid: id status progress "
        "country { code name gdpUsd } } } } } fragment P on Project { id name budgetUsd }"
    ),
    "regions": (
        "{ regions { code countries(first: 2, orderBy: {field: GDP, direction: DESC}) "
        "{ nodes { code gdpUsd joinedAt region { code } } } } }"
    ),
    # An error inside a list of found rows: a bad cursor on a nested list.
    "error": '{ countries(first: 2) { nodes { code projects(after: "nope") { totalCount } } } }',
}


class _GraphQLCore(Executor[Any]):
    """graphql-core's executor, counted so the test knows it ran instead of RowExecutor."""

    runs = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).runs += 1
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_row_executor_answers_what_graphql_core_answers(
    gql, monkeypatch, wait_for_replica, name: str
) -> None:
    wait_for_replica()  # an earlier test's last writes (its clean-up) must not land between
    fast = gql(VARIANTS[name])
    monkeypatch.setattr(engine, "RowExecutor", _GraphQLCore)
    before = _GraphQLCore.runs
    slow = gql(VARIANTS[name])
    assert _GraphQLCore.runs == before + 1
    assert fast.status == slow.status == 200
    assert fast.data == slow.data
    assert _without_request_ids(fast.errors) == _without_request_ids(slow.errors)
    assert fast.data is not None or fast.errors
    assert bool(fast.errors) == (name == "error")


def test_a_requests_rows_are_freed_without_the_cyclic_collector(gql) -> None:
    """Rows are not linked to their list level (a cycle per row): when the request ends,
    reference counting frees them, and no collection has to walk them first."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        reply = gql(QUERIES["Q1"])
        gc.collect()
        rows_left = [
            o for o in gc.garbage if type(o) is dict and ("sector_id" in o or "gdp_usd" in o)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert reply.status == 200 and not reply.errors
    assert sum(len(c["projects"]["nodes"]) for c in reply.data["countries"]["nodes"]) >= 250
    assert rows_left == []


def test_the_collector_is_paused_while_a_request_executes(gql, monkeypatch) -> None:
    enabled: list[bool] = []
    execute = engine.execute

    def observed(*args: Any, **kwargs: Any) -> Any:
        enabled.append(gc.isenabled())
        return execute(*args, **kwargs)

    monkeypatch.setattr(engine, "execute", observed)
    assert gql("{ regions { code } }").status == 200
    assert enabled == [False]
    assert gc.isenabled()
    gc.disable()  # paused by a caller: still paused after
    try:
        with engine.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def _without_request_ids(errors: list[dict[str, Any]]) -> Any:
    return json.loads(json.dumps(errors).replace("requestId", "_"))


@pytest.mark.parametrize(
    ("fields", "order"),
    [
        (
            ["name", "budgetUsd", "sector", "status", "progress", "version"],
            Order("name", False, "text"),
        ),
        (["name", "country"], Order("budget_usd", True, "bigint")),
    ],
)
def test_a_nested_page_as_json_equals_it_as_rows(reader, fields: list[str], order: Order) -> None:
    """The JSON path is taken when every column read is exact in JSON; adding a column that
    is not (impact_score, a float) takes the row path: the shared columns must be equal."""
    keys = ["KEN", "FRA", "BRA", "JPN", "XXX"]  # XXX: a parent without children
    with reader.session() as session:
        as_json = repository.nested_pages(
            session,
            repository.PROJECTS,
            "country_code",
            "bpchar",
            keys,
            repository.Query(),
            order,
            3,
            None,
            fields,
        )
        as_rows = repository.nested_pages(
            session,
            repository.PROJECTS,
            "country_code",
            "bpchar",
            keys,
            repository.Query(),
            order,
            3,
            None,
            [*fields, "impactScore"],
        )
    assert repository.PROJECTS.exact_in_json.issuperset(
        repository.PROJECTS.selected(fields, order.column)
    )
    assert "impact_score" not in repository.PROJECTS.exact_in_json
    assert as_json["XXX"] == ([], False)
    assert any(rows for rows, _ in as_json.values())
    for key in keys:
        json_rows, json_more = as_json[key]
        plain_rows, plain_more = as_rows[key]
        assert json_more == plain_more
        assert (
            json_rows == [{column: row[column] for column in json_rows[0]} for row in plain_rows]
            if json_rows
            else plain_rows == []
        )
        for row in json_rows:
            assert all(type(value) in (str, int, bool) for value in row.values()), row


@pytest.mark.parametrize("with_total", [False, True])
@pytest.mark.parametrize("joined", [False, True])
def test_a_page_as_json_equals_it_as_rows(reader, with_total: bool, joined: bool) -> None:
    """A top-level page is read as one JSON array when every column is exact in JSON (its
    joined row's too); with impact_score (a float) it comes as rows: the same rows."""
    order = Order("budget_usd", True, "bigint")
    join = (repository.PROJECT_COUNTRY, ["name", "gdpUsd"]) if joined else None
    pages = []
    with reader.session() as session:
        for fields in (
            ["name", "budgetUsd", "sector"],
            ["name", "budgetUsd", "sector", "impactScore"],
        ):
            query = repository.project_filter({"status": "active"}, ["ams", "iad"])
            pages.append(
                repository.page(
                    session,
                    repository.PROJECTS,
                    query,
                    order,
                    7,
                    None,
                    fields,
                    with_total=with_total,
                    join=join,
                )
            )
    (json_rows, json_more, json_total), (plain_rows, plain_more, plain_total) = pages
    assert len(json_rows) == 7 and (json_more, json_total) == (plain_more, plain_total)
    assert (json_total is not None) == with_total
    for json_row, plain_row in zip(json_rows, plain_rows, strict=True):
        assert "impact_score" not in json_row and type(plain_row.pop("impact_score")) is float
        assert json_row == plain_row
        if joined:
            assert json_row["_country"] == plain_row["_country"]
            assert set(json_row["_country"]) == {"code", "name", "gdp_usd"}

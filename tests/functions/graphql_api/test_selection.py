"""SQL reads only what a response needs (columns, the look-ahead row, the count), and the
answers are the same as when everything is read and graphql-core executes every field."""

from __future__ import annotations

import pytest
from graphql.execution import Executor

from graphql_api import engine

PROJECT_FIELDS = (
    "id name description status budgetUsd impactScore progress version createdAt updatedAt "
    "sector { id name } country { code name } region { code }"
)
COUNTRY_FIELDS = (
    "code iso2 name continent gdpUsd contributionUsd covenantStatus joinedAt version "
    "createdAt updatedAt region { code awsRegion primary }"
)


def _first_project_id(gql) -> str:
    reply = gql("{ projects(first: 1) { nodes { id } } }")
    return str(reply.data["projects"]["nodes"][0]["id"])


def test_every_field_reads_the_same_through_a_list_as_by_id(gql) -> None:
    project_id = _first_project_id(gql)
    alone = gql(f'{{ project(id: "{project_id}") {{ {PROJECT_FIELDS} }} }}')
    code = alone.data["project"]["country"]["code"]
    listed = gql(
        f'{{ country(code: "{code}") {{ {COUNTRY_FIELDS} '
        f"projects(first: 200) {{ nodes {{ {PROJECT_FIELDS} }} }} }} }}"
    )
    assert not listed.errors, listed.body
    nodes = listed.data["country"]["projects"]["nodes"]
    assert alone.data["project"] in nodes
    by_code = gql(f'{{ countryByCode(code: "{code}") {{ {COUNTRY_FIELDS} }} }}')
    country = {k: v for k, v in listed.data["country"].items() if k != "projects"}
    assert by_code.data["countryByCode"] == country


def test_columns_nobody_asked_for_are_not_read(gql) -> None:
    lean = gql("{ projects(first: 5) { nodes { name sector { name } } } }")
    page_sql = lean.statements[0]
    assert "description" not in page_sql and "updated_at" not in page_sql
    assert "sector_id" in page_sql  # what `sector` is found from
    full = gql("{ projects(first: 5) { nodes { description updatedAt } } }")
    assert "description" in full.statements[0] and "updated_at" in full.statements[0]


def test_without_page_info_no_row_beyond_the_page_is_read(gql) -> None:
    without = gql("{ projects(first: 7) { nodes { id } } }")
    with_info = gql("{ projects(first: 7) { pageInfo { hasNextPage } nodes { id } } }")
    assert without.data["projects"]["nodes"] == with_info.data["projects"]["nodes"]
    assert with_info.data["projects"]["pageInfo"]["hasNextPage"] is True


def test_total_count_rides_with_the_page_and_survives_an_empty_page(gql) -> None:
    query = """query ($after: String) {
      countries(first: 200, after: $after, filter: {region: "sfo"}) {
        totalCount pageInfo { endCursor } nodes { code }
      }
    }"""
    reply = gql(query)
    assert len(reply.statements) == 1  # the page and its count, in one statement
    total = reply.data["countries"]["totalCount"]
    assert total == len(reply.data["countries"]["nodes"]) >= 1
    past_the_end = gql(query, {"after": reply.data["countries"]["pageInfo"]["endCursor"]})
    assert past_the_end.data["countries"]["nodes"] == []
    assert past_the_end.data["countries"]["totalCount"] == total


QUERIES = [
    "{ countries(first: 195) { nodes { code name gdpUsd contributionUsd "
    "projects(first: 10) { nodes { id name budgetUsd sector { name } } } } } }",
    '{ projects(first: 50, filter: {region: "ams", status: ACTIVE}, '
    "orderBy: {field: BUDGET, direction: DESC}) { totalCount pageInfo { hasNextPage endCursor } "
    "edges { cursor node { id name impactScore country { name region { code } } } } } }",
    "{ sectors { id projects(first: 5, orderBy: {field: IMPACT, direction: DESC}) "
    "{ totalCount nodes { id country { code projects(first: 2) { nodes { id } } } } } } }",
    "{ regions { code countries(first: 3, orderBy: {field: GDP, direction: DESC}) "
    "{ totalCount edges { node { code region { code } } } nodes { name } } } }",
    "{ regionalStats { region { code } projectCount projectsByStatus { status count } } "
    "globalStats { projectCount averageImpactScore } sectoralStats { sector { id } countryCount } }",
]


@pytest.mark.parametrize("query", QUERIES)
def test_the_same_answers_as_graphql_cores_own_execution(gql, monkeypatch, query) -> None:
    ours = gql(query)
    assert ours.status == 200 and not ours.errors, ours.body
    monkeypatch.setattr(engine, "RowExecutor", Executor)
    theirs = gql(query)
    assert ours.body == theirs.body

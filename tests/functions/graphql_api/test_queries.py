"""Reads: filters combine, pages are stable and complete, nested fields both ways, stats agree
with the data, big numbers stay exact."""

from __future__ import annotations

import uuid

import pytest

from covenant import db
from covenant.project_rules import SECTOR_IDS
from covenant.reference import countries as reference_countries
from covenant.uow import UnitOfWork

COUNTRY_PAGE = """
query ($first: Int, $after: String, $filter: CountryFilter, $orderBy: CountryOrder) {
  countries(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { code name gdpUsd } }
    nodes { code }
  }
}
"""


def _walk(gql, order_by, page_size=37, filters=None) -> list[dict]:
    seen, after = [], None
    while True:
        reply = gql(
            COUNTRY_PAGE,
            {"first": page_size, "after": after, "orderBy": order_by, "filter": filters},
        )
        assert reply.status == 200 and not reply.errors, reply.body
        page = reply.data["countries"]
        assert [e["node"]["code"] for e in page["edges"]] == [n["code"] for n in page["nodes"]]
        seen.extend(e["node"] for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]


@pytest.mark.parametrize(
    ("order_by", "key"),
    [
        ({"field": "NAME", "direction": "ASC"}, lambda c: (c["name"], c["code"])),
        ({"field": "GDP", "direction": "DESC"}, lambda c: (-c["gdpUsd"], c["code"])),
        ({"field": "CODE", "direction": "ASC"}, lambda c: c["code"]),
    ],
)
def test_keyset_pages_visit_every_country_once_in_a_stable_order(gql, order_by, key) -> None:
    seen = _walk(gql, order_by)
    assert len(seen) == 195
    assert len({c["code"] for c in seen}) == 195
    if order_by["direction"] == "ASC" and order_by["field"] != "GDP":
        assert seen == sorted(seen, key=key)
    gdps = [c["gdpUsd"] for c in seen]
    if order_by["field"] == "GDP":
        assert gdps == sorted(gdps, reverse=True)


def test_filters_combine_with_and(gql) -> None:
    filters = {
        "region": "ams",
        "continent": "EUROPE",
        "gdpMin": 100_000_000_000,
        "gdpMax": 2_000_000_000_000,
        "nameContains": "IA",
    }
    seen = _walk(gql, {"field": "NAME", "direction": "ASC"}, 5, filters)
    expected = sorted(
        c.code
        for c in reference_countries()
        if c.region == "ams"
        and c.continent == "Europe"
        and 100_000_000_000 <= c.gdp_usd <= 2_000_000_000_000
        and "ia" in c.name.lower()
    )
    assert sorted(c["code"] for c in seen) == expected
    assert len(expected) >= 2  # the data has several: the test checks a real combination
    reply = gql(COUNTRY_PAGE, {"first": 1, "filter": filters})
    assert reply.data["countries"]["totalCount"] == len(expected)


def test_a_cursor_only_works_with_the_order_it_came_from(gql) -> None:
    first = gql(COUNTRY_PAGE, {"first": 2})
    cursor = first.data["countries"]["pageInfo"]["endCursor"]
    reply = gql(COUNTRY_PAGE, {"first": 2, "after": cursor, "orderBy": {"field": "GDP"}})
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["field"] == "after"
    garbage = gql(COUNTRY_PAGE, {"first": 2, "after": "not-a-cursor"})
    assert garbage.errors[0]["message"] == "after: is not a cursor this API issued"


@pytest.mark.parametrize("first", [-1, 201])
def test_page_size_is_bounded(gql, first) -> None:
    reply = gql(COUNTRY_PAGE, {"first": first})
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["message"] == "first: must be between 0 and 200"


def test_an_unknown_region_filter_is_rejected(gql) -> None:
    reply = gql(COUNTRY_PAGE, {"filter": {"region": "xyz"}})
    assert reply.codes == ["BAD_USER_INPUT"]
    assert "filter.region" in reply.errors[0]["message"]


def test_an_inverted_range_is_rejected(gql) -> None:
    reply = gql(COUNTRY_PAGE, {"filter": {"gdpMin": 10, "gdpMax": 5}})
    assert reply.errors[0]["message"] == "filter.gdpMin: must not exceed filter.gdpMax"


def test_gdp_and_contribution_are_exact_beyond_32_bits(gql) -> None:
    reply = gql('{ country(code: "USA") { gdpUsd contributionUsd } }')
    usa = next(c for c in reference_countries() if c.code == "USA")
    assert reply.data["country"] == {
        "gdpUsd": usa.gdp_usd,
        "contributionUsd": usa.gdp_usd // 10_000,
    }
    assert usa.gdp_usd > 2**31


def test_country_by_code_takes_alpha2_or_alpha3_in_any_case(gql) -> None:
    for code in ("ken", "KE", "Ken"):
        reply = gql("query ($c: String!) { countryByCode(code: $c) { code iso2 } }", {"c": code})
        assert reply.data["countryByCode"] == {"code": "KEN", "iso2": "KE"}
    missing = gql('{ countryByCode(code: "QQ") { code } }')
    assert missing.data == {"countryByCode": None} and not missing.errors


PROJECT_PAGE = """
query ($filter: ProjectFilter, $orderBy: ProjectOrder, $first: Int, $after: String) {
  projects(filter: $filter, orderBy: $orderBy, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes { id name sector { id } country { code region { code } } region { code } status
            budgetUsd impactScore progress }
  }
}
"""


def test_project_filters_combine_and_match_the_database(gql) -> None:
    filters = {
        "sectorId": "energy",
        "status": "ACTIVE",
        "region": "ams",
        "budgetMin": 1_000_000,
        "impactMin": 1.5,
        "impactMax": 9.5,
    }
    reply = gql(PROJECT_PAGE, {"filter": filters, "first": 200})
    assert not reply.errors, reply.body
    nodes = reply.data["projects"]["nodes"]
    with db.reader().session() as session:
        expected = session.scalar(
            "SELECT count(*) FROM projects WHERE sector_id = 'energy' AND status = 'active' "
            "AND region = 'ams' AND budget_usd >= 1000000 AND impact_score BETWEEN 1.5 AND 9.5"
        )
    assert len(nodes) == reply.data["projects"]["totalCount"] == expected > 0
    for node in nodes:
        assert node["sector"]["id"] == "energy"
        assert node["status"] == "ACTIVE"
        assert node["region"]["code"] == node["country"]["region"]["code"] == "ams"
        assert 1.5 <= node["impactScore"] <= 9.5


@pytest.mark.parametrize("field", ["BUDGET", "IMPACT", "PROGRESS", "CREATED_AT", "NAME"])
def test_project_orders_page_through_everything_once(gql, field) -> None:
    seen, after = [], None
    while True:
        reply = gql(
            PROJECT_PAGE,
            {"orderBy": {"field": field, "direction": "DESC"}, "first": 64, "after": after},
        )
        assert not reply.errors, reply.body
        page = reply.data["projects"]
        seen.extend(page["nodes"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == len({p["id"] for p in seen}) == page["totalCount"]
    column = {"BUDGET": "budgetUsd", "IMPACT": "impactScore", "PROGRESS": "progress"}.get(field)
    if column:
        values = [p[column] for p in seen]
        assert values == sorted(values, reverse=True)


def test_name_search_is_case_insensitive_and_literal(gql) -> None:
    reply = gql(PROJECT_PAGE, {"filter": {"nameContains": "SOLAR mini"}, "first": 200})
    names = [p["name"] for p in reply.data["projects"]["nodes"]]
    assert names and all("solar mini" in n.lower() for n in names)
    literal = gql(PROJECT_PAGE, {"filter": {"nameContains": "%"}})
    assert literal.data["projects"]["totalCount"] == 0


def test_project_by_id_and_bad_ids(gql) -> None:
    some = gql(PROJECT_PAGE, {"first": 1}).data["projects"]["nodes"][0]
    reply = gql("query ($id: ID!) { project(id: $id) { id name } }", {"id": some["id"]})
    assert reply.data["project"] == {"id": some["id"], "name": some["name"]}
    missing = gql('{ project(id: "00000000-0000-4000-8000-000000000000") { id } }')
    assert missing.data == {"project": None}
    bad = gql('{ project(id: "42") { id } }')
    assert bad.errors[0]["message"] == "id: must be a project id (a UUID)"


def test_nested_both_ways(gql) -> None:
    reply = gql(
        """{
          regions { code awsRegion primary countries(first: 2) { totalCount nodes { region { code } } } }
          sectors { id name projects(first: 3) { totalCount nodes { sector { id } } } }
          country(code: "KEN") { projects(first: 50) { totalCount nodes { country { code } } } }
        }"""
    )
    assert not reply.errors, reply.body
    regions = reply.data["regions"]
    assert [r["code"] for r in regions] == ["iad", "ams", "syd", "sin", "sfo", "jnb"]
    assert [r["primary"] for r in regions] == [True, False, False, False, False, False]
    for region in regions:
        assert region["countries"]["totalCount"] >= 1
        assert {n["region"]["code"] for n in region["countries"]["nodes"]} == {region["code"]}
    assert sum(r["countries"]["totalCount"] for r in regions) == 195
    for sector in reply.data["sectors"]:
        assert {n["sector"]["id"] for n in sector["projects"]["nodes"]} == {sector["id"]}
    kenya = reply.data["country"]["projects"]
    assert kenya["totalCount"] == len(kenya["nodes"]) > 0
    assert {n["country"]["code"] for n in kenya["nodes"]} == {"KEN"}


def test_stats_agree_with_the_data(gql) -> None:
    reply = gql(
        """{
          globalStats { countryCount totalGdpUsd totalContributionUsd projectCount totalBudgetUsd
                        projectsByStatus { status count } }
          regionalStats { region { code } countryCount totalGdpUsd projectCount }
          sectoralStats { sector { id } projectCount totalBudgetUsd }
          one: regionalStats(region: "sfo") { countryCount }
        }"""
    )
    assert not reply.errors, reply.body
    data = reply.data
    with db.reader().session() as session:
        gdp, contribution = session.run(
            "SELECT sum(gdp_usd), sum(contribution_usd) FROM countries"
        )[0]
        projects, budget = session.run("SELECT count(*), sum(budget_usd) FROM projects")[0]
    stats = data["globalStats"]
    # Totals are MoneyTotal: decimal strings, exact for any sum.
    assert (stats["countryCount"], stats["totalGdpUsd"], stats["totalContributionUsd"]) == (
        195,
        str(gdp),
        str(contribution),
    )
    assert (stats["projectCount"], stats["totalBudgetUsd"]) == (projects, str(budget))
    assert sum(s["count"] for s in stats["projectsByStatus"]) == projects
    assert sum(r["countryCount"] for r in data["regionalStats"]) == 195
    assert sum(int(r["totalGdpUsd"]) for r in data["regionalStats"]) == int(gdp)
    assert sum(r["projectCount"] for r in data["regionalStats"]) == projects
    assert sum(s["projectCount"] for s in data["sectoralStats"]) == projects
    assert len(data["sectoralStats"]) == 6
    assert data["one"] == [{"countryCount": 1}]
    bad = gql('{ sectoralStats(sector: "mining") { projectCount } }')
    assert bad.codes == ["BAD_USER_INPUT"]


def test_sectoral_stats_match_one_pass_over_the_projects_in_every_digit(gql) -> None:
    """sectoralStats folds projects into (sector, country, status) groups first; its answer is
    what one aggregate over the projects gives, averages to the last digit."""
    reply = gql(
        """{ sectoralStats { sector { id } projectCount countryCount totalBudgetUsd
             averageImpactScore averageProgress projectsByStatus { status count } } }"""
    )
    assert not reply.errors, reply.body
    with db.reader().session() as session:
        rows = session.run(
            "SELECT s.id, count(p.id), count(DISTINCT p.country_code), "
            "COALESCE(sum(p.budget_usd), 0)::text, avg(p.impact_score)::float8, "
            "avg(p.progress)::float8, "
            "count(p.id) FILTER (WHERE p.status = 'planning'), "
            "count(p.id) FILTER (WHERE p.status = 'active'), "
            "count(p.id) FILTER (WHERE p.status = 'completed'), "
            "count(p.id) FILTER (WHERE p.status = 'cancelled') "
            "FROM sectors s LEFT JOIN projects p ON p.sector_id = s.id GROUP BY s.id"
        )
    expected = {
        sector: {
            "sector": {"id": sector},
            "projectCount": n,
            "countryCount": countries,
            "totalBudgetUsd": budget,
            "averageImpactScore": impact,
            "averageProgress": progress,
            "projectsByStatus": [
                {"status": status, "count": count}
                for status, count in zip(
                    ("PLANNING", "ACTIVE", "COMPLETED", "CANCELLED"), counts, strict=True
                )
            ],
        }
        for sector, n, countries, budget, impact, progress, *counts in rows
    }
    assert sum(s["projectCount"] for s in expected.values()) > 0
    assert {s["sector"]["id"]: s for s in reply.data["sectoralStats"]} == expected


def test_the_same_stats_asked_again_under_aliases_run_once(gql) -> None:
    """Aliases asking for the same aggregate share its one statement (and its answer);
    other arguments are other statements."""
    reply = gql(
        """{
          a: sectoralStats { sector { id } projectCount }
          b: sectoralStats { sector { name } projectCount totalBudgetUsd }
          c: sectoralStats(sector: "energy") { projectCount }
          g1: globalStats { projectCount }
          g2: globalStats { countryCount }
          r1: regionalStats(region: "ams") { countryCount }
          r2: regionalStats(region: "ams") { projectCount }
        }"""
    )
    assert not reply.errors, reply.body
    data = reply.data
    assert [s["projectCount"] for s in data["a"]] == [s["projectCount"] for s in data["b"]]
    assert {s["sector"]["id"] for s in data["a"]} == set(SECTOR_IDS)
    assert all("name" in s["sector"] for s in data["b"])
    energy = next(s for s in data["a"] if s["sector"]["id"] == "energy")
    assert data["c"] == [{"projectCount": energy["projectCount"]}]
    assert data["g1"]["projectCount"] == sum(s["projectCount"] for s in data["a"])
    # sectoral (all), sectoral (energy), global, regional (ams): four, not seven.
    assert len(reply.statements) == 4, reply.statements


def test_money_totals_stay_exact_beyond_2_to_the_53(gql, wait_for_replica) -> None:
    """Two valid budgets of 2^53 - 1 sum past 2^53, where a JSON number is no longer exact
    in JavaScript (the audit read 18014437192426947 as ...948): totals are decimal strings."""
    biggest = 2**53 - 1
    ids = [str(uuid.uuid4()) for _ in range(2)]
    with UnitOfWork() as uow:
        for project_id in ids:
            uow.run(
                "INSERT INTO projects (id, name, sector_id, country_code, status, budget_usd, "
                "progress) VALUES (CAST(:id AS uuid), 'Exact Totals', 'minerals', 'NZL', "
                "'active', :budget, 0)",
                id=project_id,
                budget=biggest,
            )
    try:
        wait_for_replica()
        reply = gql(
            """{ globalStats { totalBudgetUsd }
                 regionalStats(region: "syd") { totalBudgetUsd }
                 sectoralStats(sector: "minerals") { totalBudgetUsd } }"""
        )
        assert not reply.errors, reply.body
        with db.reader().session() as session:
            total, regional, sectoral = session.run(
                "SELECT sum(budget_usd)::text, "
                "sum(budget_usd) FILTER (WHERE region = 'syd')::text, "
                "sum(budget_usd) FILTER (WHERE sector_id = 'minerals')::text FROM projects"
            )[0]
        assert int(total) > 2 * biggest - 1 > 2**53
        assert reply.data["globalStats"]["totalBudgetUsd"] == total
        assert reply.data["regionalStats"] == [{"totalBudgetUsd": regional}]
        assert reply.data["sectoralStats"] == [{"totalBudgetUsd": sectoral}]
        assert f'"totalBudgetUsd":"{total}"' in reply.text  # a string on the wire
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)

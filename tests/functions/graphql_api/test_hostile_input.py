"""Hostile input through the deployed GraphQL handler: every piece of it gets a precise
400-class answer naming what was wrong (never INTERNAL_SERVER_ERROR), and nothing is written.

Deeply nested JSON, NUL and other control characters in strings bound for PostgreSQL, tampered
pagination cursors, impossible joinedAt dates, and tokens that must never reach the logs.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
SECTORS = "{ sectors { id } }"
DEPTH_RULE = "nested more than 64 levels deep"


def request_error(message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": "BAD_USER_INPUT"}}]}


def _bad_input(reply: Any, field: str, rule: str) -> dict[str, Any]:
    """The reply's one error: BAD_USER_INPUT naming `field`, its rule starting with `rule`."""
    assert reply.codes == ["BAD_USER_INPUT"], reply.body
    (error,) = reply.errors
    assert error["extensions"]["field"] == field, error
    assert error["extensions"]["rule"].startswith(rule), error
    assert error["message"] == f"{field}: {error['extensions']['rule']}"
    return error


def _counts() -> dict[str, int]:
    with db.writer().session() as session:
        return {
            "outbox": int(session.scalar("SELECT count(*) FROM outbox")),
            "projects": int(session.scalar("SELECT count(*) FROM projects")),
            "countries": int(session.scalar("SELECT count(*) FROM countries")),
        }


@pytest.fixture
def unchanged(servers) -> Iterator[None]:
    """The test writes nothing: no row and no outbox event."""
    before = _counts()
    yield
    assert _counts() == before


# --- deeply nested JSON ------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [2_000, 10_000])  # 10 000: ~60 KB, under the body limit
def test_a_body_nested_too_deeply_is_400(gql, depth) -> None:
    reply = gql(body=_nested(depth))
    assert reply.status == 400
    assert reply.body == request_error(f"The body is not valid JSON: {DEPTH_RULE}")
    variables = f'{{"query": "{SECTORS}", "variables": {_nested(depth)}}}'
    reply = gql(body=variables)
    assert reply.status == 400
    assert reply.body == request_error(f"The body is not valid JSON: {DEPTH_RULE}")


def test_get_variables_nested_too_deeply_are_400(gql) -> None:
    reply = gql(method="GET", query_params={"query": SECTORS, "variables": _nested(2_000)})
    assert reply.status == 400
    assert reply.body == request_error(f"'variables' must be JSON-encoded: {DEPTH_RULE}")
    reply = gql(method="GET", query_params={"query": SECTORS, "variables": "[" * 5_000})
    assert reply.status == 400
    assert reply.body == request_error(f"'variables' must be JSON-encoded: {DEPTH_RULE}")


def test_nesting_under_the_parser_limit_is_refused_before_it_is_hashed(gql, unchanged) -> None:
    """Depth Python's parser accepts can still exhaust the stack later (the idempotency
    record hashes the variables): JSON nested more than 64 levels is refused up front."""
    body = json.dumps(
        {
            "query": 'mutation { updateCountry(code: "NOR", input: {gdpUsd: 1}) { code } }',
            "variables": {"unused": json.loads(_nested(900))},
        }
    )
    reply = gql(body=body, claims=ADMIN, headers={"Idempotency-Key": f"deep-{uuid.uuid4()}"})
    assert reply.status == 400
    assert reply.body == request_error(f"The body is not valid JSON: {DEPTH_RULE}")
    reply = gql(body=json.dumps({"query": SECTORS, "variables": json.loads(_nested(63))}))
    assert reply.status == 200 and not reply.errors, reply.body


# --- control characters in strings -------------------------------------------------------

CREATE_PROJECT = """
mutation ($input: CreateProjectInput!) { createProject(input: $input) { id version } }
"""
UPDATE_PROJECT = """
mutation ($id: ID!, $input: UpdateProjectInput!) {
  updateProject(id: $id, input: $input) { id version }
}
"""
CREATE_COUNTRY = """
mutation ($input: CreateCountryInput!) { createCountry(input: $input) { code } }
"""
UPDATE_COUNTRY = """
mutation ($code: ID!, $input: UpdateCountryInput!) {
  updateCountry(code: $code, input: $input) { code version }
}
"""


def _project(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Hostile Input Probe",
        "sectorId": "energy",
        "countryCode": "KEN",
        "budgetUsd": 1_000_000,
        **overrides,
    }


def _country(**overrides: Any) -> dict[str, Any]:
    return {
        "code": "XHI",
        "iso2": "XH",
        "name": "Hostile Input Land",
        "continent": "EUROPE",
        "region": "ams",
        "gdpUsd": 123_456_789,
        **overrides,
    }


# (the text, the start of the rule it breaks)
NUL = ("Grid\u0000Two", "must not contain control characters (U+0000")
BELL = ("Grid\u0007", "must not contain control characters (U+0007")
ESCAPE = ("\u001b[31mRed", "must not contain control characters (U+001B")
C1 = ("Next\u0085Line", "must not contain control characters (U+0085")
NEWLINE = ("Two\nLines", "must not contain control characters (U+000A")
SURROGATE = ("Broken \ud800 text", "must be valid Unicode text (an unpaired surrogate U+D800")


@pytest.mark.parametrize(
    ("field", "text", "rule"),
    [
        ("name", *NUL),
        ("name", *BELL),
        ("name", *ESCAPE),
        ("name", *C1),
        ("name", *NEWLINE),
        ("name", *SURROGATE),
        ("description", *NUL),
        ("description", *ESCAPE),
        ("description", *SURROGATE),
    ],
)
def test_create_project_refuses_control_characters(gql, unchanged, field, text, rule) -> None:
    reply = gql(CREATE_PROJECT, {"input": _project(**{field: text})}, claims=EDITOR)
    assert reply.status == 200
    _bad_input(reply, f"input.{field}", rule)
    assert reply.data == {"createProject": None}  # the field failed: it wrote nothing


def test_a_description_may_hold_lines_and_tabs(gql) -> None:
    text = "Line one\n\tLine two\r\nLine three"
    reply = gql(CREATE_PROJECT, {"input": _project(description=text)}, claims=EDITOR)
    assert not reply.errors, reply.body
    project_id = reply.data["createProject"]["id"]
    with db.writer().session() as session:
        stored = session.scalar(
            "SELECT description FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
        )
        session.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project_id)
    assert stored == text


@pytest.fixture
def project_id(servers) -> Iterator[str]:
    new_id = str(uuid.uuid4())
    with db.writer().session() as session:
        session.run(
            "INSERT INTO projects (id, name, sector_id, country_code, budget_usd) "
            "VALUES (CAST(:id AS uuid), 'Hostile Update Probe', 'energy', 'KEN', 1000)",
            id=new_id,
        )
    yield new_id
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=new_id)


@pytest.mark.parametrize(("field", "text", "rule"), [("name", *NUL), ("description", *NUL)])
def test_update_project_refuses_nul(gql, project_id, field, text, rule) -> None:
    before = _counts()
    reply = gql(UPDATE_PROJECT, {"id": project_id, "input": {field: text}}, claims=EDITOR)
    _bad_input(reply, f"input.{field}", rule)
    assert _counts() == before
    with db.writer().session() as session:
        row = session.one(
            "SELECT name, version FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
        )
    assert row == {"name": "Hostile Update Probe", "version": 1}


@pytest.mark.parametrize(("text", "rule"), [NUL, BELL, NEWLINE, SURROGATE])
def test_create_country_refuses_control_characters(gql, unchanged, text, rule) -> None:
    reply = gql(CREATE_COUNTRY, {"input": _country(name=text)}, claims=ADMIN)
    _bad_input(reply, "input.name", rule)


@pytest.mark.parametrize(
    ("field", "text", "rule"),
    [
        ("name", *NUL),
        ("iso2", "N\u0000", "must be an ISO 3166 alpha-2 code"),
        ("region", "ams\u0000", "must be one of"),
    ],
)
def test_update_country_refuses_nul(gql, unchanged, field, text, rule) -> None:
    reply = gql(UPDATE_COUNTRY, {"code": "NOR", "input": {field: text}}, claims=ADMIN)
    _bad_input(reply, f"input.{field}", rule)


@pytest.mark.parametrize(("code", "field"), [("NO\u0000", "code"), ("N\u0000R", "code")])
def test_country_codes_with_nul_are_refused(gql, unchanged, code, field) -> None:
    reply = gql(UPDATE_COUNTRY, {"code": code, "input": {"gdpUsd": 1}}, claims=ADMIN)
    _bad_input(reply, field, "must be an ISO 3166 alpha-3 code")


COUNTRY_SEARCH = """
query ($filter: CountryFilter) { countries(filter: $filter) { totalCount nodes { code } } }
"""
PROJECT_SEARCH = """
query ($filter: ProjectFilter) { projects(filter: $filter) { totalCount nodes { id } } }
"""
NESTED_SEARCH = """
query ($filter: ProjectFilter) {
  country(code: "KEN") { projects(filter: $filter) { totalCount nodes { id } } }
}
"""
REGION_SEARCH = """
query ($filter: CountryFilter) {
  regions { code countries(filter: $filter) { totalCount nodes { code } } }
}
"""


@pytest.mark.parametrize(
    ("document", "filters", "field", "rule"),
    [
        (COUNTRY_SEARCH, {"nameContains": NUL[0]}, "filter.nameContains", NUL[1]),
        (COUNTRY_SEARCH, {"nameContains": BELL[0]}, "filter.nameContains", BELL[1]),
        (COUNTRY_SEARCH, {"nameContains": SURROGATE[0]}, "filter.nameContains", SURROGATE[1]),
        (PROJECT_SEARCH, {"nameContains": NUL[0]}, "filter.nameContains", NUL[1]),
        (PROJECT_SEARCH, {"sectorId": "energy\u0000"}, "filter.sectorId", NUL[1][:-7]),
        (PROJECT_SEARCH, {"countryCode": "KE\u0000"}, "filter.countryCode", NUL[1][:-7]),
        (NESTED_SEARCH, {"nameContains": NUL[0]}, "filter.nameContains", NUL[1]),
        (REGION_SEARCH, {"nameContains": NUL[0]}, "filter.nameContains", NUL[1]),
    ],
)
def test_search_filters_refuse_control_characters(gql, document, filters, field, rule) -> None:
    reply = gql(document, {"filter": filters})
    assert reply.status == 200
    _bad_input(reply, field, rule)


def test_a_search_for_ordinary_text_still_works(gql) -> None:
    reply = gql(COUNTRY_SEARCH, {"filter": {"nameContains": "ken"}})
    assert not reply.errors, reply.body
    assert {"code": "KEN"} in reply.data["countries"]["nodes"]


def test_sectoral_stats_refuses_nul(gql) -> None:
    reply = gql(
        "query ($s: ID) { sectoralStats(sector: $s) { projectCount } }", {"s": "energy\u0000"}
    )
    _bad_input(reply, "sector", "is not a sector id")


# --- tampered pagination cursors ---------------------------------------------------------

PROJECT_PAGE = """
query ($orderBy: ProjectOrder, $after: String) {
  projects(orderBy: $orderBy, first: 2, after: $after) { nodes { id } }
}
"""
COUNTRY_PAGE = """
query ($orderBy: CountryOrder, $after: String) {
  countries(orderBy: $orderBy, first: 2, after: $after) { nodes { code } }
}
"""
NESTED_PAGE = """
query ($after: String) {
  country(code: "KEN") { projects(first: 2, after: $after) { nodes { id } } }
}
"""
SOME_ID = "6f1c2a4e-8a53-4a8e-9f55-4c1d2e3f4a5b"


def _cursor(key: str, value: Any, row_id: Any) -> str:
    raw = json.dumps([key, value, row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("document", "field", "cursor"),
    [
        # a value of the wrong type for the order's column
        (PROJECT_PAGE, "BUDGET", _cursor("budget_usd:asc", "lots", SOME_ID)),
        (PROJECT_PAGE, "BUDGET", _cursor("budget_usd:asc", 1.5, SOME_ID)),
        (PROJECT_PAGE, "BUDGET", _cursor("budget_usd:asc", True, SOME_ID)),
        (PROJECT_PAGE, "BUDGET", _cursor("budget_usd:asc", 2**70, SOME_ID)),
        (PROJECT_PAGE, "BUDGET", _cursor("budget_usd:asc", None, SOME_ID)),
        (PROJECT_PAGE, "PROGRESS", _cursor("progress:asc", 99_999, SOME_ID)),
        (PROJECT_PAGE, "IMPACT", _cursor("impact_score:asc", "high", SOME_ID)),
        (PROJECT_PAGE, "IMPACT", _cursor("impact_score:asc", "NaN", SOME_ID)),
        (PROJECT_PAGE, "IMPACT", _cursor("impact_score:asc", [1], SOME_ID)),
        (PROJECT_PAGE, "CREATED_AT", _cursor("created_at:asc", "yesterday", SOME_ID)),
        (PROJECT_PAGE, "CREATED_AT", _cursor("created_at:asc", 1_700_000_000, SOME_ID)),
        # Python's fromisoformat takes these; PostgreSQL does not.
        (
            PROJECT_PAGE,
            "CREATED_AT",
            _cursor("created_at:asc", "2024-W01-1T00:00:00+00:00", SOME_ID),
        ),
        (
            PROJECT_PAGE,
            "CREATED_AT",
            _cursor("created_at:asc", "2024-01-01T00:00:00,5+00:00", SOME_ID),
        ),
        (PROJECT_PAGE, "NAME", _cursor("name:asc", 5, SOME_ID)),
        (PROJECT_PAGE, "NAME", _cursor("name:asc", "a\u0000b", SOME_ID)),
        (PROJECT_PAGE, "NAME", _cursor("name:asc", "\ud800", SOME_ID)),
        (COUNTRY_PAGE, "GDP", _cursor("gdp_usd:asc", "big", "KEN")),
        (COUNTRY_PAGE, "CODE", _cursor("code:asc", {"code": "KEN"}, "KEN")),
        # a malformed id
        (PROJECT_PAGE, "NAME", _cursor("name:asc", "Alpha", "not-a-uuid")),
        (PROJECT_PAGE, "NAME", _cursor("name:asc", "Alpha", "KEN")),
        (PROJECT_PAGE, "NAME", _cursor("name:asc", "Alpha", 42)),
        (COUNTRY_PAGE, "NAME", _cursor("name:asc", "Kenya", "KENYA")),
        (COUNTRY_PAGE, "NAME", _cursor("name:asc", "Kenya", SOME_ID)),
        (COUNTRY_PAGE, "NAME", _cursor("name:asc", "Kenya", "KE\u0000")),
        (COUNTRY_PAGE, "NAME", _cursor("name:asc", "Kenya", None)),
        # not a three-element list
        (PROJECT_PAGE, "NAME", base64.urlsafe_b64encode(b'{"a": 1}').decode()),
        (PROJECT_PAGE, "NAME", base64.urlsafe_b64encode(b'["name:asc", "x"]').decode()),
        (PROJECT_PAGE, "NAME", base64.urlsafe_b64encode(b"\xff\xfe").decode()),
    ],
)
def test_a_tampered_cursor_is_bad_user_input_naming_after(gql, document, field, cursor) -> None:
    reply = gql(document, {"orderBy": {"field": field}, "after": cursor})
    assert reply.status == 200
    error = _bad_input(reply, "after", "is not a cursor this API issued")
    assert error["message"] == "after: is not a cursor this API issued"


def test_a_tampered_cursor_of_a_nested_list_is_refused(gql) -> None:
    reply = gql(NESTED_PAGE, {"after": _cursor("name:asc", "Alpha", "KEN")})
    _bad_input(reply, "after", "is not a cursor this API issued")


@pytest.mark.parametrize(
    ("document", "field", "node"),
    [
        (PROJECT_PAGE, "NAME", "id"),
        (PROJECT_PAGE, "BUDGET", "id"),
        (PROJECT_PAGE, "IMPACT", "id"),
        (PROJECT_PAGE, "PROGRESS", "id"),
        (PROJECT_PAGE, "CREATED_AT", "id"),
        (PROJECT_PAGE, "UPDATED_AT", "id"),
        (COUNTRY_PAGE, "NAME", "code"),
        (COUNTRY_PAGE, "CODE", "code"),
        (COUNTRY_PAGE, "GDP", "code"),
    ],
)
def test_every_cursor_this_api_issues_is_accepted(gql, document, field, node) -> None:
    query = document.replace("nodes {", "pageInfo { endCursor } nodes {")
    first = gql(query, {"orderBy": {"field": field, "direction": "DESC"}})
    assert not first.errors, first.body
    connection = next(iter(first.data.values()))
    after = connection["pageInfo"]["endCursor"]
    second = gql(query, {"orderBy": {"field": field, "direction": "DESC"}, "after": after})
    assert not second.errors, second.body
    seen = {n[node] for n in connection["nodes"]}
    assert seen.isdisjoint(n[node] for n in next(iter(second.data.values()))["nodes"])


# --- joinedAt ----------------------------------------------------------------------------

JOINED_RULE = "must be between 1945-10-24"


@pytest.mark.parametrize(
    "joined_at",
    [
        "9999-12-31T00:00:00Z",
        "2999-01-01T00:00:00Z",
        "1900-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
    ],
)
def test_create_country_refuses_an_impossible_joined_at(gql, unchanged, joined_at) -> None:
    reply = gql(
        CREATE_COUNTRY,
        {"input": _country(covenantStatus="ACTIVE", joinedAt=joined_at)},
        claims=ADMIN,
    )
    _bad_input(reply, "input.joinedAt", JOINED_RULE)


def test_update_country_refuses_a_joined_at_in_the_future(gql, unchanged) -> None:
    reply = gql(
        UPDATE_COUNTRY,
        {"code": "NOR", "input": {"joinedAt": "9999-12-31T23:59:59-14:00"}},
        claims=ADMIN,
    )
    _bad_input(reply, "input.joinedAt", JOINED_RULE)


def test_a_plausible_joined_at_is_accepted(gql) -> None:
    try:
        reply = gql(
            CREATE_COUNTRY.replace("{ code }", "{ code joinedAt }"),
            {"input": _country(covenantStatus="ACTIVE", joinedAt="1945-10-24T00:00:00Z")},
            claims=ADMIN,
        )
        assert not reply.errors, reply.body
        assert reply.data["createCountry"]["joinedAt"] == "1945-10-24T00:00:00.000Z"
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM countries WHERE code = 'XHI'")
            session.run("DELETE FROM tombstones WHERE record_id = 'XHI'")


# --- tokens never reach the logs ---------------------------------------------------------


def _token() -> str:
    def segment(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    header = segment({"alg": "RS256", "kid": "k1", "typ": "JWT"})
    payload = segment({"sub": str(uuid.uuid4()), "token_use": "access", "secret": "s3cr3t"})
    return f"{header}.{payload}.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


@pytest.mark.parametrize(
    "shape",
    ["{t} x", "{t} {t}", "Basic {t}", "{t}:{t} Bearer", "Bearer {t} trailing", "{t}\u0000 x"],
)
def test_a_refused_token_never_reaches_the_log(gql, log_lines, shape) -> None:
    token = _token()
    reply = gql(
        SECTORS,
        headers={"Authorization": shape.format(t=token)},
        environment={"COGNITO_USER_POOL_ID": "us-east-1_Hostile1", "COGNITO_CLIENT_ID": "c1"},
    )
    assert reply.status == 401
    assert reply.codes == ["UNAUTHENTICATED"]
    logged = json.dumps(log_lines())
    assert "token refused" in logged
    for part in token.split("."):
        assert part not in logged
        assert part not in json.dumps(reply.body)

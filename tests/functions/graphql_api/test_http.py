"""GraphQL over HTTP: methods, bodies, content negotiation, request errors, protection limits,
introspection, explorer, CORS, internal errors and regions, in-process and over real HTTP."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from covenant.regions import region_codes
from devstack import functions
from devstack.gateway import Gateway
from devstack.processes import free_port

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}

GRAPHQL_RESPONSE = "application/graphql-response+json; charset=utf-8"
JSON = "application/json; charset=utf-8"
REGIONS = list(region_codes())
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SECTORS = "{ sectors { id } }"


def request_error(message: str, **extensions) -> dict:
    """The body of a request error (no `data` entry: nothing was executed)."""
    return {
        "errors": [{"message": message, "extensions": {"code": "BAD_USER_INPUT", **extensions}}]
    }


@pytest.fixture
def sent(gql, monkeypatch):
    """gql, with `edit(event)` applied to the event just before the handler receives it: for
    what make_event cannot express (no Accept header, a base64 body, a given request id)."""

    def run(edit, *args, **kwargs):
        load_handler = functions.load_handler

        def load(spec):
            handler = load_handler(spec)

            def edited(event, context):
                edit(event)
                return handler(event, context)

            return edited

        with monkeypatch.context() as patch:
            patch.setattr(functions, "load_handler", load)
            return gql(*args, **kwargs)

    return run


def _with_request_id(request_id: str):
    def edit(event):
        event["requestContext"]["requestId"] = request_id

    return edit


# --- methods -------------------------------------------------------------------------------


def test_post_query_answers_graphql_response_json(gql) -> None:
    reply = gql(SECTORS)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.body == {
        "data": {
            "sectors": [
                {"id": s}
                for s in ("agriculture", "education", "energy", "health", "minerals", "technology")
            ]
        }
    }


def test_get_runs_a_query_with_variables_and_operation_name(gql) -> None:
    reply = gql(
        method="GET",
        query_params={
            "query": "query Other { sectors { id } } "
            "query ByCode($code: String!) { countryByCode(code: $code) { code name } }",
            "variables": json.dumps({"code": "ken"}),
            "operationName": "ByCode",
        },
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {"data": {"countryByCode": {"code": "KEN", "name": "Kenya"}}}


def test_get_with_variables_that_are_not_json_is_400(gql) -> None:
    reply = gql(method="GET", query_params={"query": SECTORS, "variables": "{code: 1"})
    assert reply.status == 400
    assert reply.body == request_error("'variables' must be JSON-encoded")
    reply = gql(method="GET", query_params={"query": SECTORS, "variables": "[1, 2]"})
    assert reply.status == 400
    assert reply.body == request_error("'variables' must be a JSON object")


def test_get_takes_extensions_as_a_json_encoded_object(gql) -> None:
    # GraphQL over HTTP: `extensions` in the query string is JSON, as `variables` is; the one
    # this API reads (minPosition) is served from it as from a POST body.
    reply = gql(method="GET", query_params={"query": SECTORS, "extensions": '{"x": 1}'})
    assert reply.status == 200
    reply = gql(method="GET", query_params={"query": SECTORS, "extensions": "{x"})
    assert reply.status == 400
    assert reply.body == request_error("'extensions' must be JSON-encoded")
    reply = gql(method="GET", query_params={"query": SECTORS, "extensions": '"text"'})
    assert reply.status == 400
    assert reply.body == request_error("'extensions' must be a JSON object")
    reply = gql(
        method="GET",
        query_params={"query": SECTORS, "extensions": json.dumps({"minPosition": "nonsense"})},
    )
    assert reply.status == 400  # read, not ignored: an unreadable position is refused


def test_get_may_not_run_a_mutation(gql, servers) -> None:
    reply = gql(
        method="GET",
        claims=EDITOR,
        query_params={"query": 'mutation { deleteProject(id: "x") { id } }'},
    )
    assert reply.status == 405
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == request_error("Mutations need POST: GET may only run queries.")


def test_get_chooses_the_operation_before_refusing_a_mutation(gql) -> None:
    document = 'query Read { sectors { id } } mutation Write { deleteProject(id: "x") { id } }'
    read = gql(method="GET", query_params={"query": document, "operationName": "Read"})
    assert read.status == 200 and read.data == {"sectors": read.data["sectors"]}
    write = gql(method="GET", query_params={"query": document, "operationName": "Write"})
    assert write.status == 405


def test_get_mutation_405_names_the_allowed_method(gql) -> None:
    reply = gql(method="GET", query_params={"query": 'mutation { deleteProject(id: "x") { id } }'})
    assert reply.headers.get("Allow") == "POST"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(gql, method) -> None:
    reply = gql(SECTORS, method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, POST"
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == request_error(f"{method} is not allowed: use POST, or GET for queries")


def test_get_without_query_is_400(gql) -> None:
    for params in ({}, {"query": ""}, {"variables": "{}"}):
        reply = gql(method="GET", query_params=params)
        assert reply.status == 400, params
        assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
        assert reply.body == request_error("GET requests need a 'query' parameter")


# --- POST bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "{not json",
            "The body is not valid JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        ("", "The body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ('["{ sectors { id } }"]', "The body must be a JSON object"),
        ('"{ sectors { id } }"', "The body must be a JSON object"),
        ("{}", "The body needs a 'query' string holding a GraphQL document"),
        ('{"query": ""}', "The body needs a 'query' string holding a GraphQL document"),
        ('{"query": "  \\n "}', "The body needs a 'query' string holding a GraphQL document"),
        ('{"query": 42}', "The body needs a 'query' string holding a GraphQL document"),
        ('{"query": "{ sectors { id } }", "variables": [1]}', "'variables' must be a JSON object"),
        ('{"query": "{ sectors { id } }", "variables": "{}"}', "'variables' must be a JSON object"),
        ('{"query": "{ sectors { id } }", "operationName": 5}', "'operationName' must be a string"),
    ],
)
def test_unusable_bodies_are_400_naming_the_problem(gql, body, message) -> None:
    reply = gql(body=body)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == request_error(message)


def test_null_variables_and_operation_name_are_absent(gql) -> None:
    reply = gql(body=json.dumps({"query": SECTORS, "variables": None, "operationName": None}))
    assert reply.status == 200 and len(reply.data["sectors"]) == 6


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_json_is_415(gql, content_type) -> None:
    reply = gql(SECTORS, headers={"Content-Type": content_type})
    assert reply.status == 415
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == request_error("POST bodies must be 'Content-Type: application/json'")


def test_json_content_type_with_charset_is_accepted(gql) -> None:
    reply = gql(SECTORS, headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200 and len(reply.data["sectors"]) == 6


def test_a_base64_body_is_decoded(sent) -> None:
    def encode(event):
        event["body"] = base64.b64encode(event["body"].encode()).decode()
        event["isBase64Encoded"] = True

    reply = sent(encode, SECTORS)
    assert reply.status == 200
    assert len(reply.data["sectors"]) == 6


def test_a_body_that_is_not_base64_is_400(sent) -> None:
    def garble(event):
        event["body"] = "not base64!"
        event["isBase64Encoded"] = True

    reply = sent(garble, SECTORS)
    assert reply.status == 400
    assert reply.body == request_error("The body is not valid base64")


def test_a_body_over_the_limit_is_413(gql) -> None:
    limit = {"GRAPHQL_MAX_BODY_BYTES": "100"}

    def body(size: int) -> str:
        raw = json.dumps({"query": SECTORS})
        return raw[:-1] + " " * (size - len(raw)) + "}"

    assert len(body(100)) == 100
    at_limit = gql(body=body(100), environment=limit)
    assert at_limit.status == 200, at_limit.body
    over = gql(body=body(101), environment=limit)
    assert over.status == 413
    assert over.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert over.body == request_error("The body is over 100 bytes")
    default = gql(body=body(65_537))
    assert default.status == 413
    assert default.body == request_error("The body is over 65536 bytes")


# --- Accept negotiation --------------------------------------------------------------------

SYNTAX_ERROR = [
    {
        "message": "Syntax Error: Expected Name, found <EOF>.",
        "locations": [{"line": 1, "column": 17}],
        "extensions": {"code": "BAD_USER_INPUT"},
    }
]


def test_graphql_response_json_makes_a_syntax_error_400(gql) -> None:
    reply = gql("{ sectors { id }", headers={"Accept": "application/graphql-response+json"})
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {"errors": SYNTAX_ERROR}


def test_application_json_only_gets_200_for_a_syntax_error(gql) -> None:
    reply = gql("{ sectors { id }", headers={"Accept": "application/json"})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON
    assert reply.body == {"errors": SYNTAX_ERROR}


def test_no_accept_header_means_application_json(sent) -> None:
    def drop_accept(event):
        del event["headers"]["accept"]

    reply = sent(drop_accept, "{ sectors { id }")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON
    assert reply.body == {"errors": SYNTAX_ERROR}
    ok = sent(drop_accept, SECTORS)
    assert ok.status == 200
    assert ok.headers["Content-Type"] == JSON
    assert len(ok.data["sectors"]) == 6


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/graphql-response+json, application/json", GRAPHQL_RESPONSE),
        ("application/json, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("application/json;q=0.9", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("*/*, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("Application/GraphQL-Response+JSON", GRAPHQL_RESPONSE),
    ],
)
def test_accept_picks_the_response_type(gql, accept, content_type) -> None:
    reply = gql(SECTORS, headers={"Accept": accept})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == content_type


def test_a_media_type_with_q_0_is_not_chosen(gql) -> None:
    reply = gql(
        SECTORS, headers={"Accept": "application/graphql-response+json;q=0, application/json"}
    )
    assert reply.headers["Content-Type"] == JSON


def test_an_accept_we_cannot_serve_is_406(gql) -> None:
    for method, args in (
        ("POST", {"query": SECTORS}),
        ("GET", {"query_params": {"query": SECTORS}}),
    ):
        reply = gql(method=method, headers={"Accept": "text/plain"}, **args)
        assert reply.status == 406
        assert reply.headers["Content-Type"] == JSON
        assert reply.body == request_error(
            "Accept must allow application/graphql-response+json or application/json"
        )


# --- request errors ------------------------------------------------------------------------


def test_a_validation_error_is_400_with_code_and_locations(gql) -> None:
    reply = gql("{ sectors { id nope } }")
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {
        "errors": [
            {
                "message": "Cannot query field 'nope' on type 'Sector'. Did you mean 'name'?",
                "locations": [{"line": 1, "column": 16}],
                "extensions": {"code": "BAD_USER_INPUT"},
            }
        ]
    }


def test_an_unknown_operation_name_is_400(gql) -> None:
    reply = gql("query A { sectors { id } }", operation_name="X")
    assert reply.status == 400
    assert reply.body == request_error("Unknown operation named 'X'.")


def test_an_empty_operation_name_means_none(gql) -> None:
    reply = gql(SECTORS, operation_name="")
    assert reply.status == 200


def test_two_operations_need_an_operation_name(gql) -> None:
    document = "query A { sectors { id } } query B { regions { code } }"
    reply = gql(document)
    assert reply.status == 400
    assert reply.body == request_error(
        "The document holds several operations: name one in operationName."
    )
    chosen = gql(document, operation_name="B")
    assert chosen.status == 200
    assert [r["code"] for r in chosen.data["regions"]] == REGIONS


def test_a_variable_of_the_wrong_type_is_400(gql) -> None:
    reply = gql("query ($first: Int) { projects(first: $first) { totalCount } }", {"first": "ten"})
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {
        "errors": [
            {
                "message": "Variable '$first' has invalid value: "
                "Int cannot represent non-integer value: 'ten'",
                "locations": [{"line": 1, "column": 8}],
                "extensions": {"code": "BAD_USER_INPUT"},
            }
        ]
    }


def test_a_missing_required_variable_is_400(gql) -> None:
    reply = gql("query ($code: String!) { countryByCode(code: $code) { code } }")
    assert reply.status == 400
    assert reply.errors[0]["message"] == (
        "Variable '$code' has invalid value: "
        "Expected a value of non-null type 'String!' to be provided."
    )
    assert reply.codes == ["BAD_USER_INPUT"]


MONEY_RANGE = (
    "Money must be between 0 and 9007199254740991 (a budget: between 1 and 9007199254740991)"
)
MONEY_QUERY = "query ($min: Money) { projects(filter: { budgetMin: $min }) { totalCount } }"


@pytest.mark.parametrize(
    ("value", "found", "rule"),
    [
        (1.5, "1.5", "Money must be a whole number of US dollars (no cents)"),
        (2**53, "9007199254740992", MONEY_RANGE),
        (-1, "-1", MONEY_RANGE),
        ("1000", "'1000'", "Money must be a whole number of US dollars"),
        (True, "True", "Money must be a whole number of US dollars"),
    ],
)
def test_a_money_variable_must_be_whole_dollars_below_2_53(gql, value, found, rule) -> None:
    reply = gql(MONEY_QUERY, {"min": value})
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    (error,) = reply.errors
    assert error["message"] == (
        "Variable '$min' has invalid value: Expected value of type 'Money', "
        f"but encountered error '{rule}'; found: {found}."
    )
    assert "data" not in reply.body


def test_a_money_variable_at_2_53_minus_1_is_accepted(gql) -> None:
    reply = gql(MONEY_QUERY, {"min": 2**53 - 1})
    assert reply.status == 200
    assert reply.data == {"projects": {"totalCount": 0}}


def test_a_money_literal_over_2_53_is_400(gql) -> None:
    reply = gql(f"{{ projects(filter: {{ budgetMin: {2**53} }}) {{ totalCount }} }}")
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    assert MONEY_RANGE in reply.errors[0]["message"]


def test_contribution_is_not_an_input(gql) -> None:
    """contributionUsd is derived from GDP: no input type has it, so a client cannot send it."""
    variables = {
        "input": {
            "code": "ZZZ",
            "iso2": "ZZ",
            "name": "Nowhere",
            "continent": "AFRICA",
            "region": "jnb",
            "gdpUsd": 1_000_000,
            "contributionUsd": 5,
        }
    }
    reply = gql(
        "mutation ($input: CreateCountryInput!) { createCountry(input: $input) { code } }",
        variables,
        claims=ADMIN,
    )
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["message"].startswith(
        "Variable '$input' has invalid value: Expected value of type 'CreateCountryInput' "
        "not to include unknown field 'contributionUsd'"
    )
    literal = gql(
        'mutation { updateCountry(code: "KEN", input: { contributionUsd: 5 }) { code } }',
        claims=ADMIN,
    )
    assert literal.status == 400
    assert literal.errors[0]["message"] == (
        "Expected value of type 'UpdateCountryInput' not to include unknown field "
        "'contributionUsd', found: { contributionUsd: 5 }."
    )
    assert gql('{ country(code: "ZZZ") { code } }').data == {"country": None}


# --- protection ----------------------------------------------------------------------------

DEEP = "{ regions { countries { nodes { code } } } }"  # regions 1, countries 2, nodes 3, code 4


def too_complex(message: str, **extensions) -> dict:
    return {
        "errors": [{"message": message, "extensions": {"code": "BAD_USER_INPUT", **extensions}}]
    }


def test_a_query_deeper_than_the_limit_is_400(gql) -> None:
    limit = {"GRAPHQL_MAX_DEPTH": "3"}
    reply = gql(DEEP, environment=limit)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == too_complex(
        "Query depth 4 exceeds the maximum of 3.", limit="depth", depth=4, maximum=3
    )
    at_limit = gql("{ regions { countries { totalCount } } }", environment=limit)
    assert at_limit.status == 200, at_limit.body
    assert gql(DEEP, environment={"GRAPHQL_MAX_DEPTH": "4"}).status == 200


def test_the_default_depth_limit_is_12(gql) -> None:
    def nested(levels: int) -> str:
        # sectors 1, then projects > nodes > sector per three levels, ending with id
        inner = "id"
        for _ in range(levels):
            inner = f"projects(first: 1) {{ nodes {{ sector {{ {inner} }} }} }}"
        return f"{{ sectors {{ {inner} }} }}"

    assert gql(nested(3)).status == 200  # depth 1 + 9 + 1 = 11
    reply = gql(nested(4))  # depth 14
    assert reply.status == 400
    assert reply.errors[0]["message"] == "Query depth 14 exceeds the maximum of 12."


def test_fragments_cannot_hide_depth(gql) -> None:
    document = """
    query { ...Root }
    fragment Root on Query { regions { ...Countries } }
    fragment Countries on Region { countries { nodes { ... on Country { code } } } }
    """
    reply = gql(document, environment={"GRAPHQL_MAX_DEPTH": "3"})
    assert reply.status == 400
    assert reply.body == too_complex(
        "Query depth 4 exceeds the maximum of 3.", limit="depth", depth=4, maximum=3
    )


NESTED_LISTS = """
query ($outer: Int, $inner: Int) {
  countries(first: $outer) { nodes { projects(first: $inner) { nodes { id } } } }
}
"""


def test_cost_multiplies_by_first(gql) -> None:
    limit = {"GRAPHQL_MAX_COST": "1000"}
    # projects: 1 + 10 x (nodes 1 + id 1) = 21; countries: 1 + 10 x (nodes 1 + 21) = 221
    small = gql(NESTED_LISTS, {"outer": 10, "inner": 10}, environment=limit)
    assert small.status == 200, small.body
    # projects: 1 + 100 x 2 = 201; countries: 1 + 100 x 202 = 20201
    reply = gql(NESTED_LISTS, {"outer": 100, "inner": 100}, environment=limit)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == too_complex(
        "Query cost 20201 exceeds the maximum of 1000.", limit="cost", cost=20201, maximum=1000
    )
    literal = gql(
        "{ countries(first: 100) { nodes { projects(first: 100) { nodes { id } } } } }",
        environment=limit,
    )
    assert literal.body == reply.body


def test_the_default_cost_limit_stops_nested_pages(gql) -> None:
    reply = gql(NESTED_LISTS, {"outer": 200, "inner": 200})  # 1 + 200 x (1 + 401) = 80401
    assert reply.status == 400
    assert reply.errors[0]["message"] == "Query cost 80401 exceeds the maximum of 50000."


def test_aliases_each_count_toward_cost(gql) -> None:
    limit = {"GRAPHQL_MAX_COST": "1000"}

    def aliased(count: int) -> str:
        # each alias: 1 + 20 x (nodes 1 + id 1 + name 1) = 61
        fields = " ".join(
            f"a{i}: projects(first: 20) {{ nodes {{ id name }} }}" for i in range(count)
        )
        return "{ " + fields + " }"

    assert gql(aliased(1), environment=limit).status == 200
    assert gql(aliased(16), environment=limit).status == 200  # 976
    reply = gql(aliased(30), environment=limit)  # 1830
    assert reply.status == 400
    assert reply.body == too_complex(
        "Query cost 1830 exceeds the maximum of 1000.", limit="cost", cost=1830, maximum=1000
    )


def test_a_variable_default_cannot_hide_cost(gql) -> None:
    document = NESTED_LISTS.replace(
        "$outer: Int, $inner: Int", "$outer: Int = 200, $inner: Int = 200"
    )
    reply = gql(document)  # executes 200 x 200 projects: cost 80401
    assert reply.status == 400


def test_a_float_page_size_cannot_hide_cost(gql) -> None:
    reply = gql(NESTED_LISTS, {"outer": 200.0, "inner": 200.0})
    assert reply.status == 400


def test_too_many_operations_is_400(gql) -> None:
    document = " ".join(f"query Q{i} {{ sectors {{ id }} }}" for i in range(3))
    limit = {"GRAPHQL_MAX_OPERATIONS": "2"}
    reply = gql(document, operation_name="Q0", environment=limit)
    assert reply.status == 400
    assert reply.body == too_complex(
        "Documents may hold at most 2 operations; this one holds 3.", limit="operations"
    )
    assert (
        gql(document, operation_name="Q0", environment={"GRAPHQL_MAX_OPERATIONS": "3"}).status
        == 200
    )
    eleven = " ".join(f"query Q{i} {{ sectors {{ id }} }}" for i in range(11))
    default = gql(eleven, operation_name="Q0")
    assert default.status == 400
    assert default.errors[0]["message"] == (
        "Documents may hold at most 10 operations; this one holds 11."
    )


# --- introspection -------------------------------------------------------------------------

INTROSPECTION = "{ __schema { queryType { name } } }"


def test_introspection_works_locally(gql) -> None:
    reply = gql(INTROSPECTION)
    assert reply.status == 200
    assert reply.data == {"__schema": {"queryType": {"name": "Query"}}}
    typed = gql('{ __type(name: "Money") { kind } }')
    assert typed.data == {"__type": {"kind": "SCALAR"}}


@pytest.mark.parametrize(
    "environment",
    [{"GRAPHQL_INTROSPECTION": "false"}, {"COVENANT_STAGE": "prod"}],
)
def test_introspection_can_be_switched_off(gql, environment) -> None:
    for query, field in (
        (INTROSPECTION, "__schema"),
        ('{ __type(name: "Money") { kind } }', "__type"),
    ):
        reply = gql(query, environment=environment)
        assert reply.status == 400
        assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
        assert set(reply.codes) == {"BAD_USER_INPUT"}
        assert reply.errors[0]["message"] == (
            "GraphQL introspection has been disabled, but the requested query contained "
            f"the field '{field}'."
        )
    # __typename is not introspection: clients (Apollo, Relay) add it everywhere.
    typename = gql("{ __typename sectors { __typename id } }", environment=environment)
    assert typename.status == 200
    assert typename.data["__typename"] == "Query"


def test_introspection_can_be_switched_on_in_prod(gql) -> None:
    reply = gql(INTROSPECTION, environment={"COVENANT_STAGE": "prod", "GRAPHQL_INTROSPECTION": "1"})
    assert reply.status == 200
    assert reply.data == {"__schema": {"queryType": {"name": "Query"}}}


# --- explorer ------------------------------------------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_a_browser_gets_the_explorer(gql, region) -> None:
    reply = gql(method="GET", headers={"Accept": BROWSER_ACCEPT}, region=region)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "graphiql" in reply.body.lower()
    assert f"<title>Covenant GraphQL ({region})</title>" in reply.body


def test_a_browser_with_a_query_gets_the_result(gql) -> None:
    reply = gql(method="GET", headers={"Accept": BROWSER_ACCEPT}, query_params={"query": SECTORS})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON  # a browser names no GraphQL type: */*
    assert len(reply.data["sectors"]) == 6


def test_the_explorer_is_only_for_get(gql) -> None:
    reply = gql(body="{}", headers={"Accept": BROWSER_ACCEPT})
    assert reply.status == 400
    assert reply.headers["Content-Type"] == JSON  # a browser names no GraphQL type: */*


@pytest.mark.parametrize("environment", [{"GRAPHQL_EXPLORER": "false"}, {"COVENANT_STAGE": "prod"}])
def test_the_explorer_can_be_switched_off(gql, environment) -> None:
    reply = gql(method="GET", headers={"Accept": BROWSER_ACCEPT}, environment=environment)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == JSON  # a browser names no GraphQL type: */*
    assert reply.body == request_error("GET requests need a 'query' parameter")
    # A client that accepts nothing but HTML is told what it can have instead.
    html_only = gql(method="GET", headers={"Accept": "text/html"}, environment=environment)
    assert html_only.status == 406


# --- CORS ----------------------------------------------------------------------------------

CORS = {"CORS_ALLOWED_ORIGINS": "https://app.example,https://admin.example"}


def test_an_allowed_origin_is_echoed(gql) -> None:
    reply = gql(SECTORS, headers={"Origin": "https://admin.example"}, environment=CORS)
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    assert reply.headers["Vary"] == "Origin"


def test_an_allowed_origin_is_echoed_on_errors_too(gql) -> None:
    reply = gql("{ nope }", headers={"Origin": "https://app.example"}, environment=CORS)
    assert reply.status == 400
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
    transport_error = gql(body="[]", headers={"Origin": "https://app.example"}, environment=CORS)
    assert transport_error.status == 400
    assert transport_error.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_another_origin_gets_no_cors_headers(gql) -> None:
    for environment in (CORS, {}):
        reply = gql(SECTORS, headers={"Origin": "https://evil.example"}, environment=environment)
        assert reply.status == 200
        assert not [h for h in reply.headers if h.lower().startswith("access-control-")]


def test_a_wildcard_allows_every_origin(gql) -> None:
    reply = gql(
        SECTORS,
        headers={"Origin": "https://anywhere.example"},
        environment={"CORS_ALLOWED_ORIGINS": "*"},
    )
    assert reply.headers["Access-Control-Allow-Origin"] == "https://anywhere.example"


def test_preflight_is_204_with_the_allow_headers(gql) -> None:
    reply = gql(
        method="OPTIONS",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
        environment=CORS,
    )
    assert reply.status == 204
    assert reply.body == ""
    assert reply.headers == {
        "Access-Control-Allow-Origin": "https://app.example",
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": (
            "Authorization, Content-Type, Idempotency-Key, Covenant-Min-Position"
        ),
        "Access-Control-Expose-Headers": "Covenant-Position",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }
    refused = gql(method="OPTIONS", headers={"Origin": "https://evil.example"}, environment=CORS)
    assert refused.status == 204
    assert refused.headers == {}


# --- internal errors -----------------------------------------------------------------------


def test_an_internal_error_reaches_the_client_as_a_request_id(sent, monkeypatch, log_lines) -> None:
    import graphql_api.repository as repository

    def broken(session):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(repository, "global_stats", broken)
    request_id = f"test-{uuid.uuid4()}"
    reply = sent(_with_request_id(request_id), "{ sectors { id } globalStats { countryCount } }")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    assert reply.body == {
        "data": None,
        "errors": [
            {
                "message": f"Internal server error. Request id: {request_id}",
                "locations": [{"line": 1, "column": 18}],
                "path": ["globalStats"],
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
            }
        ],
    }
    assert "secret detail" not in json.dumps(reply.body)
    # The full error is in the function's log, under the request's correlation id.
    (logged,) = [line for line in log_lines() if "secret detail" in line.get("exception", "")]
    assert logged["level"] == "ERROR"
    assert logged["correlation_id"] == request_id
    assert logged["message"] == "unexpected error in globalStats"
    assert "Traceback" in logged["exception"]
    assert "RuntimeError: secret detail" in logged["exception"]


def test_an_unavailable_database_says_retry_and_nothing_more(sent, log_lines) -> None:
    closed = "postgresql://postgres:hunter2@127.0.0.1:1/covenant"
    request_id = f"test-{uuid.uuid4()}"
    reply = sent(
        _with_request_id(request_id),
        "{ globalStats { countryCount } }",
        environment={"DATABASE_READER_URL": closed, "DB_CONNECT_TIMEOUT_S": "1"},
    )
    assert reply.status == 200
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    (error,) = reply.errors
    assert error["message"] == (
        f"The database is unavailable; retry shortly. Request id: {request_id}"
    )
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    text = json.dumps(reply.body)
    for detail in ("127.0.0.1", "postgres", "hunter2", "covenant", "refused"):
        assert detail not in text
    logged = log_lines()
    assert any(
        line["message"].startswith("database unavailable: cannot connect to the reader")
        and line["correlation_id"] == request_id
        for line in logged
    ), logged
    assert "hunter2" not in json.dumps(logged)  # the log names the server, never its password


# --- regions -------------------------------------------------------------------------------


def test_the_six_regions_are_the_region_table() -> None:
    assert list(region_codes()) == REGIONS


@pytest.mark.parametrize("region", REGIONS)
def test_every_region_serves_the_contract(gql, region) -> None:
    reply = gql(
        '{ regions { code primary } countryByCode(code: "KE") { code region { code } } }',
        region=region,
    )
    assert reply.status == 200, reply.body
    assert [r["code"] for r in reply.data["regions"]] == REGIONS
    assert [r["code"] for r in reply.data["regions"] if r["primary"]] == ["iad"]
    assert reply.data["countryByCode"] == {"code": "KEN", "region": {"code": "jnb"}}


# --- over real HTTP, through the local gateway ---------------------------------------------


@pytest.fixture(scope="module")
def gateway(servers) -> Iterator[Gateway]:
    server = Gateway(
        free_port(),
        {"DATABASE_URL": servers.writer_url, "DATABASE_READER_URL": servers.reader_url},
    )
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()


def _http(url: str, *, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_post_over_http(gateway) -> None:
    status, headers, body = _http(
        f"{gateway.url}/ams/graphql",
        data=json.dumps(
            {
                "query": "query ($code: String!) { countryByCode(code: $code) { code } }",
                "variables": {"code": "nld"},
            }
        ).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/graphql-response+json",
        },
    )
    assert status == 200, body
    assert headers["Content-Type"] == GRAPHQL_RESPONSE
    assert body == {"data": {"countryByCode": {"code": "NLD"}}}


def test_get_over_http(gateway) -> None:
    params = urllib.parse.urlencode(
        {
            "query": "query Q($code: String!) { countryByCode(code: $code) { code name } }",
            "variables": json.dumps({"code": "AUS"}),
            "operationName": "Q",
        }
    )
    status, headers, body = _http(
        f"{gateway.url}/syd/graphql?{params}",
        headers={"Accept": "application/graphql-response+json"},
    )
    assert status == 200, body
    assert headers["Content-Type"] == GRAPHQL_RESPONSE
    assert body == {"data": {"countryByCode": {"code": "AUS", "name": "Australia"}}}


def test_request_errors_over_http(gateway) -> None:
    status, headers, body = _http(
        f"{gateway.url}/sin/graphql?{urllib.parse.urlencode({'query': '{ nope }'})}",
        headers={"Accept": "application/graphql-response+json"},
    )
    assert status == 400
    assert headers["Content-Type"] == GRAPHQL_RESPONSE
    assert body["errors"][0]["message"] == "Cannot query field 'nope' on type 'Query'."
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    mutation = urllib.parse.urlencode({"query": 'mutation { deleteProject(id: "x") { id } }'})
    status, headers, body = _http(f"{gateway.url}/sin/graphql?{mutation}")
    assert status == 405
    assert headers["Content-Type"] == JSON  # urllib sends no Accept header
    assert headers["Cache-Control"] == "no-store"
    assert body == request_error("Mutations need POST: GET may only run queries.")

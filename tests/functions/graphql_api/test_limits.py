"""Depth, cost, operation-count, repeat, token, mutation-count and statement limits: exact
figures, and no way around them."""

from __future__ import annotations

import uuid

import pytest
from graphql import GraphQLObjectType, parse, validate

from covenant import db
from graphql_api.engine import mutation_count_rule
from graphql_api.executor import RowKey
from graphql_api.limits import (
    NO_STATEMENTS,
    ONCE_PER_REQUEST,
    STATEMENTS,
    cost_limit_rule,
    depth_limit_rule,
    estimate_statements,
    shape_errors,
    statement_limit_rule,
)
from graphql_api.schema import executable_schema

from .conftest import EDITOR, Reply


def _errors(query: str, *, depth: int = 50, cost: int = 10**9, operations: int = 10, **kw):
    document = parse(query)
    shape = shape_errors(document, max_operations=operations, max_repeats=10**6)
    rules = [
        depth_limit_rule(depth),
        cost_limit_rule(cost, default_list_size=50, max_list_size=200, **kw),
    ]
    return shape or validate(executable_schema(), document, rules)


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


def _repeats(query: str, maximum: int) -> list[str]:
    return [e.message for e in shape_errors(parse(query), max_operations=10, max_repeats=maximum)]


def test_repeats_count_in_every_selection_set_with_inline_fragments_merged() -> None:
    # countries twice at the root (1), code three times in one nodes (2), name in the inline
    # fragment beside name (1), the spread of F twice (1): 5 repeats.
    query = (
        "{ countries { nodes { code code ... on Country { name code } name } } countries "
        "{ nodes { ...F ...F } } } fragment F on Country { iso2 }"
    )
    assert _repeats(query, 5) == []
    assert _repeats(query, 4) == [
        "The document repeats selections 5 times (at most 4): 'code' is selected 3 times in "
        "one selection set. Select each field or fragment once per selection set; execution "
        "would merge the copies anyway."
    ]


def test_aliases_and_fields_in_different_selection_sets_are_no_repeats() -> None:
    query = (
        "{ a: regions { code } b: regions { code } countries { nodes { code region { code } } } }"
    )
    assert _repeats(query, 0) == []


def test_a_document_of_hostile_repeats_is_refused_before_validation(gql, monkeypatch) -> None:
    """666 copies of one alias in a 2 000-token document cost validation 0.7 s of CPU (issue
    15, item 9); counted on the syntax tree it is refused before validation starts."""
    import graphql_api.engine as engine

    def no_validation(*args, **kwargs):
        raise AssertionError("validation ran on a document the repeat limit refuses")

    monkeypatch.setattr(engine, "validate", no_validation)
    reply = gql("{ regions {" + " a: code a: name" * 150 + " } }")
    assert reply.status == 400, reply.body
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["limit"] == "repeats"
    assert reply.errors[0]["extensions"]["repeats"] == 299
    assert "'a' is selected 300 times" in reply.errors[0]["message"]


def test_a_document_over_the_token_limit_is_refused_while_it_is_read(gql) -> None:
    def aliases(count: int) -> str:  # 2 + 3 x count tokens
        return "{" + "".join(f" a{i}: __typename" for i in range(count)) + " }"

    assert gql(aliases(332)).status == 200  # 998 tokens
    over = aliases(333)  # 1 001 tokens
    reply = gql(over)
    assert reply.status == 400, reply.body
    assert reply.errors[0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "limit": "tokens",
        "maximum": 1000,
    }
    assert reply.errors[0]["message"].startswith("The document has more than 1000 tokens")


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


def _ran(reply: Reply, fields: int) -> None:
    """The mutation was accepted and ran: every one of its `fields` deletes ran (a failed
    root field nulls only itself), answered NOT_FOUND and wrote nothing."""
    assert reply.status == 200, reply.body
    assert reply.codes == ["NOT_FOUND"] * fields
    results = {k: v for k, v in (reply.data or {}).items() if k != "__typename"}
    assert len(results) == fields and set(results.values()) == {None}
    assert any("projects" in s for s in reply.statements)
    assert _writes(reply.statements) == []


def test_ten_mutations_run(gql) -> None:
    _ran(gql(f"mutation {{ {_deletes(10)} }}", claims=EDITOR), 10)


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
    _ran(gql(document, claims=EDITOR, environment={"GRAPHQL_MAX_MUTATIONS": "4"}), 4)


def test_the_mutation_limit_comes_from_the_environment(gql) -> None:
    limit = {"GRAPHQL_MAX_MUTATIONS": "2"}
    reply = gql(f"mutation {{ {_deletes(3)} }}", claims=EDITOR, environment=limit)
    assert reply.status == 400
    assert reply.body == _too_many(3, 2)
    assert reply.statements == []
    _ran(gql(f"mutation {{ {_deletes(2)} }}", claims=EDITOR, environment=limit), 2)


def test_only_the_operation_that_runs_counts(gql) -> None:
    document = (
        f"query Read {{ sectors {{ id }} }} "
        f"mutation Many {{ {_deletes(3)} }} mutation Few {{ {_deletes(1)} }}"
    )
    limit = {"GRAPHQL_MAX_MUTATIONS": "2"}
    _ran(gql(document, operation_name="Few", claims=EDITOR, environment=limit), 1)
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


# --- statements: the SQL a document makes the database run ---------------------------------

DEFAULT_MAX_STATEMENTS = 64


def _statements(query: str, operation_name: str | None = None) -> int:
    return estimate_statements(executable_schema(), parse(query), operation_name)


def _aliased(count: int, field: str, prefix: str = "a") -> str:
    return " ".join(f"{prefix}{i}: {field}" for i in range(count))


def _too_many_statements(count: int, maximum: int) -> dict:
    message = f"The operation may run {count} SQL statements; at most {maximum} run in one request."
    extensions = {"code": "BAD_USER_INPUT", "limit": "statements", "statements": count}
    return {"errors": [{"message": message, "extensions": {**extensions, "maximum": maximum}}]}


@pytest.mark.parametrize(
    ("field", "each"),
    [
        # Cost 7 each (1 + 6 sectors x 1), yet an aggregate over all projects each.
        ("sectoralStats { projectCount }", 1),
        # Cost 1 each: an empty page, then its count in a statement of its own.
        ("projects(first: 0) { totalCount }", 2),
    ],
)
def test_aliased_cheap_fields_cannot_run_hundreds_of_statements(gql, field, each) -> None:
    document = "{ " + _aliased(90, field) + " }"  # within the token limit too
    assert _cost(document) < 50_000  # within the cost limit: cost does not stop it
    reply = gql(document)
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/graphql-response+json; charset=utf-8"
    assert reply.body == _too_many_statements(90 * each, DEFAULT_MAX_STATEMENTS)
    assert reply.statements == []  # refused before anything ran


def test_the_statement_limit_answers_200_to_a_plain_json_client(gql) -> None:
    reply = gql(
        "{ " + _aliased(65, "globalStats { projectCount }") + " }",
        headers={"Accept": "application/json"},
    )
    assert reply.status == 200
    assert reply.body == _too_many_statements(65, DEFAULT_MAX_STATEMENTS)
    assert reply.statements == []


def test_a_document_at_the_default_limit_runs(gql) -> None:
    # 32 empty pages, each with its count: exactly 64 statements, all of them run.
    at_limit = "{ " + _aliased(32, "projects(first: 0) { totalCount }") + " }"
    assert _statements(at_limit) == DEFAULT_MAX_STATEMENTS
    reply = gql(at_limit)
    assert reply.status == 200 and not reply.errors, reply.body
    assert len(reply.statements) == DEFAULT_MAX_STATEMENTS
    over = "{ globalStats { projectCount } " + at_limit[2:]
    refused = gql(over)
    assert refused.status == 400
    assert refused.body == _too_many_statements(65, DEFAULT_MAX_STATEMENTS)
    assert refused.statements == []


def test_the_statement_limit_comes_from_the_environment(gql) -> None:
    document = "{ globalStats { projectCount } sectoralStats { projectCount } }"
    reply = gql(document, environment={"GRAPHQL_MAX_STATEMENTS": "1"})
    assert reply.status == 400
    assert reply.body == _too_many_statements(2, 1)
    assert reply.statements == []
    at_limit = gql(document, environment={"GRAPHQL_MAX_STATEMENTS": "2"})
    assert at_limit.status == 200 and not at_limit.errors, at_limit.body
    assert len(at_limit.statements) == 2
    many = "{ " + _aliased(100, "globalStats { projectCount }") + " }"
    assert gql(many, environment={"GRAPHQL_MAX_STATEMENTS": "100"}).status == 200


def test_a_mutation_over_the_statement_limit_writes_nothing(gql) -> None:
    # Each delete is a transaction of up to 5 statements; the caller's sign-out check is one,
    # the position after the commits another.
    document = f"mutation {{ {_deletes(4)} }}"
    assert _statements(document) == 4 * 5 + 2
    reply = gql(document, claims=EDITOR, environment={"GRAPHQL_MAX_STATEMENTS": "21"})
    assert reply.status == 400
    assert reply.body == _too_many_statements(22, 21)
    assert reply.statements == []
    _ran(gql(document, claims=EDITOR, environment={"GRAPHQL_MAX_STATEMENTS": "22"}), 4)


def test_fragments_and_aliases_are_counted_as_execution_resolves_them() -> None:
    plain = "{ countries { totalCount nodes { projects { nodes { sector { id } } } } } }"
    hidden = """
    { ...Q } fragment Q on Query { countries { ...C } }
    fragment C on CountryConnection { totalCount nodes { ... on Country { ...P } } }
    fragment P on Country { projects { nodes { sector { id } } } }
    """
    assert _statements(plain) == _statements(hidden) == 4  # page, count, projects, sectors
    # The same response key twice (directly or through a fragment) resolves once: its
    # selections merge.
    merged = """
    { countries { totalCount } countries { nodes { code } } ...Q }
    fragment Q on Query { countries { totalCount } }
    """
    assert _statements(merged) == 2
    # Aliases are fields of their own, whatever their arguments.
    assert _statements("{ a: countries { totalCount } b: countries { totalCount } }") == 4
    assert _statements('{ a: project(id: "1") { id } b: project(id: "2") { id } }') == 2
    # nodes and edges are loaded each for their own path.
    both = """{ countries { nodes { projects { nodes { id } } }
                edges { node { projects { nodes { id } } } } } }"""
    assert _statements(both) == 3


def test_what_runs_no_statement_costs_nothing() -> None:
    # Regions come from configuration; sectors are read once per request, whoever asks.
    assert _statements("{ regions { code awsRegion } __typename }") == 0
    assert _statements("{ a: sectors { id } b: sectors { name } }") == 1
    sectors_everywhere = """{ sectors { id } projects { nodes { sector { name } } }
        sectoralStats { sector { name } projectsByStatus { count } } }"""
    assert _statements(sectors_everywhere) == 3  # sectors, projects, sectoralStats
    assert _statements("{ regionalStats { region { code } projectsByStatus { count } } }") == 1


def test_only_the_operation_that_runs_counts_statements() -> None:
    document = (
        "query One { globalStats { projectCount } } "
        "query Three { a: globalStats { projectCount } b: globalStats { projectCount } "
        "c: globalStats { projectCount } }"
    )
    assert _statements(document, "One") == 1
    assert _statements(document, "Three") == 3
    rule = statement_limit_rule(2, "One")
    assert validate(executable_schema(), parse(document), [rule]) == []
    (error,) = validate(executable_schema(), parse(document), [statement_limit_rule(2, "Three")])
    assert error.extensions == {
        "code": "BAD_USER_INPUT",
        "limit": "statements",
        "statements": 3,
        "maximum": 2,
    }


def test_mutations_count_their_transactions() -> None:
    assert _statements(f"mutation {{ {_deletes(10)} }}") == 10 * 5 + 2
    nested = """mutation { createProject(input: {name: "n", sectorId: "energy",
        countryCode: "KEN", budgetUsd: 1}) { id sector { name } country { name } region { code } } }"""
    # write, sectors, country, sign-out check, position after the commit
    assert _statements(nested) == 5 + 1 + 1 + 1 + 1


def test_a_fragment_spread_everywhere_is_estimated_once_per_shape() -> None:
    # 40 levels, each spreading the next under two aliases: 2^40 response paths, counted in
    # linear time.
    levels = 40
    fragments = " ".join(
        f"fragment F{i} on Country {{ a: projects {{ nodes {{ country {{ ...F{i + 1} }} }} }} "
        f"b: projects {{ nodes {{ country {{ ...F{i + 1} }} }} }} }}"
        for i in range(levels)
    )
    document = f'{{ country(code: "KEN") {{ ...F0 }} }} {fragments} fragment F{levels} on Country {{ code }}'
    # S(i), below a country spreading F<i>: 2 x (projects 1 + country 1 + S(i + 1)), S(40) = 0.
    assert _statements(document) == 1 + 4 * (2**levels - 1)


def test_every_field_that_runs_sql_is_known() -> None:
    """A resolver of its own may run SQL: each must be listed, with its statements or as
    running none. Plain reads of the parent row (RowKey) run none."""
    schema = executable_schema()
    tables = {*STATEMENTS, *ONCE_PER_REQUEST, *NO_STATEMENTS}
    unknown, listed_reads, coordinates = [], [], set()
    for type_name, named in schema.type_map.items():
        if type_name.startswith("__") or not isinstance(named, GraphQLObjectType):
            continue
        for field_name, field in named.fields.items():
            coordinate = f"{type_name}.{field_name}"
            coordinates.add(coordinate)
            if isinstance(field.resolve, RowKey):
                if coordinate in tables:
                    listed_reads.append(coordinate)
            elif coordinate not in tables:
                unknown.append(coordinate)
    assert unknown == []
    assert listed_reads == []
    assert tables <= coordinates  # nothing stale


# Legitimate documents of every shape: the estimate is never below what really runs.
READS = {
    "nested": """{ countries(first: 20, filter: {region: "ams"}) { totalCount pageInfo { hasNextPage }
        nodes { code projects(first: 3) { totalCount nodes { name sector { name }
        country { name region { code } } } } } } }""",
    "fragments": """query Fragments { ...Root }
        fragment Root on Query { countries(first: 5) { ...Page } sectors { ...Sector } }
        fragment Page on CountryConnection { totalCount nodes { ... on Country { code ...Projects } } }
        fragment Projects on Country { projects(first: 2) { nodes { id ...Project } } }
        fragment Sector on Sector { id projects(first: 1) { totalCount nodes { ...Project } } }
        fragment Project on Project { name sector { id } country { code } }""",
    "aliases": """{ active: projects(first: 2, filter: {status: ACTIVE}) { totalCount nodes { id } }
        none: projects(first: 0) { totalCount }
        past: projects(first: 5, filter: {nameContains: "no such project name"}) { totalCount }
        big: countries(first: 3, orderBy: {field: GDP, direction: DESC}) { nodes { code } }
        small: countries(first: 3, orderBy: {field: GDP}) { nodes { code } } }""",
    "merged": """{ countries(first: 2) { nodes { code } }
        countries(first: 2) { totalCount nodes { projects(first: 1) { nodes { id } } } } }""",
    "stats": """{ regionalStats { region { code countries(first: 2) { totalCount nodes { code } } }
        projectsByStatus { status count } }
        globalStats { projectCount averageProgress projectsByStatus { count } }
        energy: sectoralStats(sector: "energy") { sector { id name
            projects(first: 2) { totalCount nodes { id country { code } } } } projectCount }
        all: sectoralStats { sector { id } countryCount } }""",
    "edges_and_nodes": """{ countries(first: 5) { pageInfo { endCursor }
        edges { cursor node { projects(first: 1) { nodes { id } } } }
        nodes { projects(first: 1) { nodes { id } } } } }""",
    "regions": """{ regions { code countries(first: 2) { totalCount nodes { region { code }
        projects(first: 1) { nodes { sector { name } } } } } } }""",
    "lookups": """{ country(code: "KEN") { name projects(first: 2) { nodes { id } } }
        countryByCode(code: "ke") { code } project(id: "00000000-0000-0000-0000-000000000000") { id }
        sectors { id name } }""",
}


@pytest.mark.parametrize("name", sorted(READS))
def test_the_estimate_bounds_the_statements_a_read_runs(gql, name) -> None:
    reply = gql(READS[name])
    assert reply.status == 200 and not reply.errors, reply.body
    assert reply.statements
    assert _statements(READS[name]) >= len(reply.statements), reply.statements


def test_the_estimate_bounds_the_statements_a_mutation_runs(gql) -> None:
    nested = """id name sector { name projects(first: 2) { nodes { id } } }
        country { name projects(first: 2) { totalCount nodes { id sector { id } } } }
        region { code countries(first: 1) { nodes { code } } }"""
    create = f"""mutation ($input: CreateProjectInput!) {{
        createProject(input: $input) {{ {nested} }} }}"""
    project = {
        "name": f"Statements {uuid.uuid4().hex}",
        "sectorId": "energy",
        "countryCode": "KEN",
        "budgetUsd": 1_000,
    }
    created = gql(create, {"input": project}, claims=EDITOR)
    assert created.status == 200 and not created.errors, created.body
    project_id = created.data["createProject"]["id"]
    try:
        assert _statements(create) >= len(created.statements), created.statements
        documents = [
            f"""mutation ($id: ID!) {{ updateProject(id: $id, input: {{progress: 10}}) {{ {nested} }}
            again: updateProject(id: $id, input: {{progress: 10}}, expectedVersion: 1) {{ id }} }}""",
            "mutation ($id: ID!) { deleteProject(id: $id) { id } }",
            "mutation ($id: ID!) { deleteProject(id: $id) { id } }",  # NOT_FOUND
        ]
        for document in documents:
            reply = gql(document, {"id": project_id}, claims=EDITOR)
            assert reply.status == 200, reply.body
            assert reply.statements
            assert _statements(document) >= len(reply.statements), reply.statements
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project_id)


def _fragment_bomb(levels: int, branches: int = 4) -> str:
    """Each fragment spreads the one below it through `branches` aliases: a few KB whose
    fully expanded tree has branches**levels paths."""
    aliases = "abcdefgh"[:branches]
    fragments = ["fragment F0 on Project { country { code } }"]
    for level in range(1, levels + 1):
        body = " ".join(
            f"{alias}: country {{ projects {{ nodes {{ ...F{level - 1} }} }} }}"
            for alias in aliases
        )
        fragments.append(f"fragment F{level} on Project {{ {body} }}")
    operation = f"{{ projects {{ nodes {{ ...F{levels} }} }} }}"
    return "\n".join([operation, *fragments])


def test_a_fragment_bomb_is_measured_in_linear_time(gql, monkeypatch) -> None:
    """Depth and cost measure each fragment's selection set once per place, so a document
    that expands to 4**9 paths costs a few hundred walks, not hundreds of thousands (the
    limit rules must not be the denial of service they guard against)."""
    from graphql_api import limits

    walks = 0
    original = limits._Walker.fields

    def counted(self, *args, **kwargs):
        nonlocal walks
        walks += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(limits._Walker, "fields", counted)
    document = _fragment_bomb(9)
    assert len(document) < 3000
    reply = gql(document)
    assert reply.status == 400, reply.body
    assert "depth" in {e["extensions"].get("limit") for e in reply.errors}
    assert reply.statements == []
    assert 0 < walks < 1000, walks


def _doubling_fragments(levels: int, on: str, leaf: str) -> str:
    """Each fragment spreads the next one twice: 2**levels expansions if nothing merges."""
    fragments = [f"fragment F{levels} on {on} {{ {leaf} }}"]
    fragments += [f"fragment F{i} on {on} {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    return "\n".join(fragments)


def _two_fragment_levels(levels: int) -> str:
    """Each level spreads two different fragments of the next: no name repeats in a selection
    set, yet 2**levels paths."""
    fragments = []
    for i in range(levels):
        nxt = f"...X{i + 1} ...Y{i + 1}" if i + 1 < levels else "code"
        for name in ("X", "Y"):
            fragments.append(
                f"fragment {name}{i} on Country {{ projects {{ nodes {{ country {{ {nxt} }} }} }} }}"
            )
    return "{ countries { nodes { ...X0 ...Y0 } } }\n" + "\n".join(fragments)


def _counting(monkeypatch, owner, name: str) -> list[int]:
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_fragments_spread_twice_at_every_level_are_expanded_once(gql, monkeypatch) -> None:
    from graphql_api import limits

    walks = _counting(monkeypatch, limits._Walker, "fields")
    document = "{ ...F0 }\n" + _doubling_fragments(30, "Query", "sectors { id }")
    reply = gql(document)
    assert reply.status == 200 and not reply.errors, reply.body
    assert len(reply.data["sectors"]) == 6
    assert 0 < walks[0] < 200, walks


def test_two_fragments_per_level_are_measured_once_each(gql, monkeypatch) -> None:
    from graphql_api import limits

    walks = _counting(monkeypatch, limits._Walker, "fields")
    reply = gql(_two_fragment_levels(24))
    assert reply.status == 400, reply.body
    assert "depth" in {e["extensions"].get("limit") for e in reply.errors}
    assert reply.statements == []
    assert 0 < walks[0] < 2000, walks


def test_mutation_fields_are_counted_without_expanding_a_fragment_twice(gql, monkeypatch) -> None:
    from graphql_api import engine

    calls = _counting(monkeypatch, engine, "_response_keys")
    leaf = 'deleteProject(id: "00000000-0000-4000-8000-000000000000") { id }'
    document = "mutation { ...F0 }\n" + _doubling_fragments(30, "Mutation", leaf)
    reply = gql(document, claims=EDITOR)
    assert reply.codes == ["NOT_FOUND"], reply.body  # one field, run once
    assert 0 < calls[0] < 200, calls

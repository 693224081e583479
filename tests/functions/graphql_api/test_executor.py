"""The executor's short path gives exactly what graphql-core gives: the same data, and the same
errors at the same paths, for plain rows and for every way a value can go wrong."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from ariadne import EnumType, ObjectType, QueryType, make_executable_schema
from graphql import ExecutionResult, GraphQLSchema, execute, parse

from graphql_api.executor import RowExecutor, RowLookup, RowResolver, bind_row_keys
from graphql_api.resolvers.scalars import money
from graphql_api.schema import executable_schema, row_key, snake_case

SDL = """
scalar Money
enum Colour { RED GREEN }
type Query { rows: [Row!]!  loose: [Row]  one: Row!  maybe: Row }
type Row {
  id: ID!
  label: String
  strictLabel: String!
  count: Int
  budgetUsd: Money
  colour: Colour
  kind: Kind!
  parent: Row
  children: [Row!]!
  computed: String
  failing: String
  failingStrict: String!
  lostKind: Kind
  lostKindStrict: Kind!
  kindOf: Kind
  kindOfMissingKey: Kind
  kindOfLostTable: Kind!
}
type Kind { name: String! }
"""

KINDS = {"a": {"name": "Alpha"}, "b": {"name": None}}


def _schema() -> GraphQLSchema:
    query = QueryType()
    row = ObjectType("Row")
    colour = EnumType("Colour", {"RED": "red", "GREEN": "green"})
    query.set_field("rows", lambda *_: ROWS)
    query.set_field("loose", lambda *_: [ROWS[0], None, ROWS[1]])
    query.set_field("one", lambda *_: ROWS[0])
    query.set_field("maybe", lambda *_: None)
    row.set_field("kind", RowResolver(lambda r, context: KINDS[r["kind_id"]]))

    def fail(r: dict[str, Any], context: Any) -> Any:
        raise ValueError(f"no luck for {r['id']}")

    row.set_field("failing", RowResolver(fail))
    row.set_field("lostKind", RowResolver(fail))
    row.set_field("lostKindStrict", RowResolver(fail))
    row.set_field("kindOf", RowLookup("kind_id", lambda context: KINDS))
    row.set_field("kindOfMissingKey", RowLookup("no_such_key", lambda context: KINDS))

    def lost_table(context: Any) -> dict[str, Any]:
        raise ValueError("no table")

    row.set_field("kindOfLostTable", RowLookup("kind_id", lost_table))
    row.set_field("failingStrict", RowResolver(fail))
    schema = make_executable_schema(SDL, query, row, money, colour, convert_names_case=snake_case)
    bind_row_keys(schema, row_key)
    return schema


ROWS: list[dict[str, Any]] = [
    {
        "id": "1",
        "label": "first",
        "strict_label": "one",
        "count": 3,
        "budget_usd": 10**12,
        "colour": "red",
        "kind_id": "a",
        "parent": None,
        "children": [],
        "computed": lambda info: f"computed at {info.path.as_list()}",
    },
    {
        "id": "2",
        "label": None,
        "strict_label": None,  # null in a non-null field
        "count": 2**40,  # beyond GraphQL's Int
        "budget_usd": Decimal("1.5"),  # not whole dollars: Money refuses it
        "colour": "purple",  # no such enum value
        "kind_id": "b",  # its name is null in a non-null field
        "parent": None,
        "children": [],
        "computed": None,
    },
]
ROWS[0]["children"] = [ROWS[1]]
ROWS[1]["parent"] = ROWS[0]
SCHEMA = _schema()

QUERIES = [
    "{ rows { id label count budgetUsd colour } }",
    "{ rows { id strictLabel } }",
    "{ rows { id kind { name } } }",
    "{ loose { id label kind { name } } }",
    "{ one { id label parent { id } children { id label colour } } }",
    "{ maybe { id } one { children { parent { id label } } } }",
    "{ rows { id computed } }",
    "{ rows { id failing } }",
    "{ rows { id failingStrict } }",
    "{ rows { __typename a: id b: label ...F ... on Row { count } } } fragment F on Row { id }",
    "{ one { id first: children { id } again: children { label } } }",
    # Rows of copied leaves and found rows (completed without a path per row), and errors there.
    "{ rows { id budgetUsd kind { name } } }",
    "{ rows { id lostKind { name } kind { name } } }",
    "{ rows { id lostKindStrict { name } } }",
    "{ loose { id lostKindStrict { name } } }",
    "{ one { id lostKind { name } } maybe { id } }",
    "{ rows { id kindOf { name } } one { kindOf { name } } }",
    "{ rows { id kindOfMissingKey { name } } }",
    "{ rows { id kindOfLostTable { name } } }",
    "{ loose { id kindOf { name } kindOfLostTable { name } } }",
]


def _run(query: str, executor: type[Any] | None) -> ExecutionResult:
    result = execute(SCHEMA, parse(query), executor_class=executor)
    assert isinstance(result, ExecutionResult)
    return result


def _errors(result: ExecutionResult) -> list[tuple[str, Any, Any]]:
    return [(e.message, e.path, e.locations) for e in result.errors or []]


@pytest.mark.parametrize("query", QUERIES)
def test_same_data_and_errors_as_graphql_core(query: str) -> None:
    expected = _run(query, None)
    got = _run(query, RowExecutor)
    assert got.data == expected.data
    assert _errors(got) == _errors(expected)
    assert got.data is not None or got.errors  # each query exercises something


def test_the_short_path_is_taken_for_plain_leaves_and_rows() -> None:
    """With graphql-core's per-field path refused below the root, a query of plain fields
    still completes: it never needed it."""
    result = execute(
        SCHEMA,
        parse("{ one { id label count budgetUsd colour kind { name } children { id } } }"),
        executor_class=_OnlyRootField,
    )
    assert not result.errors, result.errors
    assert result.data == {
        "one": {
            "id": "1",
            "label": "first",
            "count": 3,
            "budgetUsd": 10**12,
            "colour": "RED",
            "kind": {"name": "Alpha"},
            "children": [{"id": "2"}],
        }
    }


class _OnlyRootField(RowExecutor):
    """Lets graphql-core resolve the root field (a resolver of its own) and nothing else."""

    def execute_field(self, parent_type: Any, *args: Any) -> Any:
        if parent_type.name != "Query":
            raise AssertionError("graphql-core's per-field path was used below the root")
        return super(RowExecutor, self).execute_field(parent_type, *args)


def test_every_field_of_the_api_without_its_own_resolver_reads_its_row_key() -> None:
    """What the schema binds: the keys rows carry (snake_case of the field name)."""
    project = executable_schema().type_map["Project"]
    assert project.fields["budgetUsd"].resolve.key == "budget_usd"  # type: ignore[union-attr]
    assert project.fields["name"].resolve.key == "name"  # type: ignore[union-attr]
    assert type(project.fields["sector"].resolve) is RowLookup  # type: ignore[union-attr]

"""The executor's short path gives exactly what graphql-core gives: the same data, and the same
errors at the same paths, for plain rows and for every way a value can go wrong."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

import pytest
from ariadne import EnumType, ObjectType, QueryType, make_executable_schema
from graphql import ExecutionResult, GraphQLSchema, execute, parse

from graphql_api import executor
from graphql_api.executor import RowDerived, RowExecutor, RowLookup, RowResolver, bind_row_keys
from graphql_api.resolvers.scalars import money
from graphql_api.schema import executable_schema, row_key, snake_case

SDL = """
scalar Money
enum Colour { RED GREEN }
type Query {
  rows: [Row!]!  loose: [Row]  one: Row!  maybe: Row  plain: [Row!]!  derived: [Row]!
}
input Style { case: String = "upper", marks: [String!] }
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
  kindOrNone: Kind
  labelled(prefix: String!, style: Style, budget: Money): String
  score: Float
  stats: [Stat!]!
  maybeStats: [Stat]
  nested: Row
  strictNested: Row!
}
type Kind { name: String! }
type Stat { colour: Colour!  count: Int! }
"""

KINDS = {"a": {"name": "Alpha"}, "b": {"name": None}}
NONE_KIND = {"name": "of None"}


def _schema() -> GraphQLSchema:
    query = QueryType()
    row = ObjectType("Row")
    colour = EnumType("Colour", {"RED": "red", "GREEN": "green"})
    query.set_field("rows", lambda *_: ROWS)
    query.set_field("loose", lambda *_: [ROWS[0], None, ROWS[1]])
    query.set_field("one", lambda *_: ROWS[0])
    query.set_field("maybe", lambda *_: None)
    query.set_field("plain", lambda *_: PLAIN)
    query.set_field("derived", lambda *_: DERIVED)
    row.set_field("labelled", _labelled)
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
    # A table with a None key: a row without the key is not found there (KeyError, as the
    # resolver says), a row whose key is None is.
    row.set_field("kindOrNone", RowLookup("kind_id", lambda context: {**KINDS, None: NONE_KIND}))
    row.set_field("failingStrict", RowResolver(fail))
    row.set_field("stats", RowDerived(_stats))
    schema = make_executable_schema(SDL, query, row, money, colour, convert_names_case=snake_case)
    bind_row_keys(schema, row_key)
    return schema


def _stats(r: dict[str, Any], context: Any) -> list[Any]:
    if "stat_fail" in r:
        raise ValueError(f"no stats for {r['id']}")
    return [
        {"colour": colour, "count": count} if colour != "gap" else None
        for colour, count in r.get("pairs", ())
    ]


def _labelled(
    r: dict[str, Any],
    info: Any,
    prefix: str,
    style: dict[str, Any] | None = None,
    budget: int | None = None,
) -> str:
    if style is None:
        return f"{prefix}{r['id']}/{budget}"
    marks = ",".join(style.get("marks") or ["-"])
    return f"{prefix}{r['id']}/{style['case']}/{marks}/{sorted(style)}/{budget}"


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
# Rows whose fields are all copies and lookups (a compiled row function completes them), with
# values that leave it: a null label, a kind whose name is null, a kind not in the table, a
# kind id of another type, an item that is not a row.
PLAIN: list[Any] = [
    *({"id": f"p{n}", "label": f"plain {n}", "kind_id": "a"} for n in range(20)),
    {"id": "p20", "label": None, "kind_id": "a"},
    {"id": "p21", "label": "b-kind", "kind_id": "b"},
    {"id": "p22", "label": "lost", "kind_id": "zzz"},
    {"id": "p23", "label": "odd key", "kind_id": 7},
    {"id": 24, "label": "odd id", "kind_id": "a"},
    *({"id": f"p{n}", "label": f"plain {n}", "kind_id": "a"} for n in range(25, 30)),
    {"id": "p30", "label": "a list for a key", "kind_id": ["a"]},
    {"id": "p31", "label": "no kind id"},
    {"id": "p32", "label": "a None kind id", "kind_id": None},
    {"id": "p33", "label": "after them", "kind_id": "a"},
]
ROWS[1]["parent"] = ROWS[0]
# Rows whose fields compile with leaves coerced by their type (Int, Float, enums), rows and
# lists of rows read by key or derived from the row (RowDerived), and values that leave the
# compiled function: each completes as graphql-core completes it.
_PAIRS = [("red", 1), ("green", 2)]
_NESTED = {"id": "n", "label": "inner", "count": 5, "stats": [], "pairs": []}
DERIVED: list[Any] = [
    *(
        {
            "id": f"d{n}",
            "count": n,
            "score": n / 4,
            "colour": "green",
            "pairs": _PAIRS,
            "maybe_stats": [{"colour": "red", "count": n}, None],
            "nested": _NESTED,
            "strict_nested": _NESTED,
        }
        for n in range(12)
    ),
    {"id": "d12", "count": 2**40, "pairs": _PAIRS, "strict_nested": _NESTED},  # beyond Int
    {"id": "d13", "colour": "purple", "pairs": _PAIRS, "strict_nested": _NESTED},  # no enum
    {"id": "d14", "pairs": [("red", None)], "strict_nested": _NESTED},  # null in Int!
    {"id": "d15", "pairs": [("blue", 1)], "strict_nested": _NESTED},  # no such colour
    {"id": "d16", "pairs": [("gap", 0)], "strict_nested": _NESTED},  # null item of [Stat!]!
    {"id": "d17", "stat_fail": True, "strict_nested": _NESTED},  # the derivation raises
    {"id": "d18", "pairs": _PAIRS, "strict_nested": None},  # null in Row!
    {"id": "d19", "pairs": _PAIRS, "nested": "not a row", "strict_nested": _NESTED},
    {"id": "d20", "score": float("nan"), "pairs": _PAIRS, "strict_nested": _NESTED},
    {"id": "d21", "count": True, "score": 3, "pairs": _PAIRS, "strict_nested": _NESTED},
    {"id": "d22", "count": lambda info: 7, "pairs": _PAIRS, "strict_nested": _NESTED},
    {"id": "d23", "pairs": _PAIRS, "maybe_stats": "odd", "strict_nested": _NESTED},
    {"id": "d24", "pairs": _PAIRS, "strict_nested": {**_NESTED, "count": 1.5}},
    *({"id": f"d{n}", "pairs": [], "strict_nested": _NESTED} for n in range(25, 28)),
]
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
    # Compiled row functions: copies and lookups, and every way of leaving them.
    "{ plain { id kindOf { name } } }",
    "{ plain { label id k: kindOf { name } again: kindOf { name } } }",
    "{ plain { id label kindOfMissingKey { name } } }",
    "{ plain { id kindOfLostTable { name } } }",
    "{ plain { id kindOf { name } kind { name } } }",
    "{ plain { id kindOrNone { name } } }",
    '{ plain { id kindOrNone { name } labelled(prefix: "general") } }',
    "{ loose { id kindOrNone { name } } one { kindOf { name } } }",
    # Compiled row functions with coerced leaves, nested rows and derived lists.
    "{ derived { id count score colour stats { colour count } } }",
    "{ derived { id maybeStats { count colour } nested { id label count } } }",
    "{ derived { strictNested { id count stats { count } } id } }",
    "{ derived { id s: stats { count } t: stats { colour } kindOf { name } } }",
    "{ derived { id stats { count } failing } }",
    # Arguments coerced once per field node: literals, input objects, defaults.
    '{ rows { labelled(prefix: ">") } plain { labelled(prefix: "<", style: {case: "x"}) } }',
    '{ plain { a: labelled(prefix: "a") b: labelled(prefix: "b", style: {marks: ["m"]}) } }',
    # ... and an argument a scalar refuses: the error at each field, as graphql-core reports.
    '{ plain { id labelled(prefix: "$", budget: 1.5) } }',
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


def test_arguments_with_variables_answer_what_graphql_core_answers() -> None:
    document = parse(
        "query ($p: String!, $s: Style) { plain { labelled(prefix: $p, style: $s) } "
        "rows { labelled(prefix: $p) } }"
    )
    for variables in ({"p": "v"}, {"p": "w", "s": {"marks": ["x", "y"], "case": None}}):
        expected = execute(SCHEMA, document, variable_values=variables)
        got = execute(SCHEMA, document, variable_values=variables, executor_class=RowExecutor)
        assert isinstance(expected, ExecutionResult) and isinstance(got, ExecutionResult)
        assert got.data == expected.data
        assert _errors(got) == _errors(expected)
        assert not got.errors


def test_arguments_are_coerced_once_per_field_node(monkeypatch) -> None:
    coerced: list[str] = []
    real = executor.get_argument_values

    def counted(field: Any, node: Any, *args: Any) -> Any:
        coerced.append(node.name.value)
        return real(field, node, *args)

    monkeypatch.setattr(executor, "get_argument_values", counted)
    result = _run('{ plain { a: labelled(prefix: "a") b: labelled(prefix: "b") } }', RowExecutor)
    assert not result.errors
    assert coerced == ["labelled", "labelled"]  # a and b: one each for the 30 rows


def test_rows_of_copies_and_lookups_complete_by_their_compiled_function() -> None:
    """Only the rows the compiled function leaves (the first, whose kind is not completed
    yet, and those with an odd value) go through the general per-row path."""
    result = execute(
        SCHEMA, parse("{ plain { id label kindOf { name } } }"), executor_class=_CountingRows
    )
    assert isinstance(result, ExecutionResult)
    # p0 (its kind not yet completed), p21 (a new kind), p22 (no such kind), p23 (no kind
    # for 7), 24 (an id that is not a string), p30 (a list for a key), p31 (no kind id), p32
    # (a None kind id); not p20, whose null label is a null in a nullable field
    assert _CountingRows.general == {"p0", "p21", "p22", "p23", 24, "p30", "p31", "p32"}
    assert result.data is not None
    assert len(result.data["plain"]) == len(PLAIN)


def test_coerced_leaves_nested_rows_and_derived_lists_complete_by_their_compiled_function() -> None:
    """Only the rows with a value the compiled function leaves go the general way (field by
    field): the others complete in one call each, their derived lists and nested rows too."""
    _CountingFields.general.clear()
    result = execute(
        SCHEMA,
        parse(
            "{ derived { id count score colour stats { colour count } maybeStats { count } "
            "nested { id count } strictNested { label } } }"
        ),
        executor_class=_CountingFields,
    )
    assert isinstance(result, ExecutionResult)
    # d12-d20, d22, d23: each with a value the general path must complete (or refuse); d21's
    # True for an Int and 3 for a Float are coerced as graphql-core coerces them (1, 3.0),
    # and d24's odd count is not selected here
    assert _CountingFields.general == {f"d{n}" for n in (*range(12, 21), 22, 23)}
    assert result.data is not None
    assert result.data["derived"][21]["count"] == 1
    assert result.data["derived"][0] == {
        "id": "d0",
        "count": 0,
        "score": 0.0,
        "colour": "GREEN",
        "stats": [{"colour": "RED", "count": 1}, {"colour": "GREEN", "count": 2}],
        "maybeStats": [{"count": 0}, None],
        "nested": {"id": "n", "count": 5},
        "strictNested": {"label": "inner"},
    }


class _CountingFields(RowExecutor):
    """Records the rows of `derived` completed field by field (the general path)."""

    general: ClassVar[set[Any]] = set()

    def execute_fields(
        self, parent_type: Any, source: Any, path: Any, grouped_field_set: Any, *args: Any
    ) -> Any:
        if parent_type.name == "Row" and path is not None and isinstance(path.key, int):
            plan = self._plan(parent_type, grouped_field_set)
            bound = self._bound(plan)
            if plan.compiled is None or bound is None or plan.compiled(source, *bound) is None:
                type(self).general.add(source["id"])
        return super().execute_fields(parent_type, source, path, grouped_field_set, *args)


class _CountingRows(RowExecutor):
    general: ClassVar[set[Any]] = set()

    def _direct(self, parent_type: Any, row: dict[str, Any], *args: Any) -> Any:
        if parent_type.name == "Row":
            type(self).general.add(row["id"])
        return super()._direct(parent_type, row, *args)


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

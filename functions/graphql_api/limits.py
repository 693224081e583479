"""Protection against expensive documents, as validation rules that run before execution.

- Depth: the nesting of fields below an operation's root (a root field is depth 1).
- Cost: cost(field) = 1 + multiplier x sum(cost(children)), where the multiplier of a field
  returning a connection (a type named *Connection) or a list is its page size: the `first`
  argument (a literal or a variable), else the list's known size (regions, sectors), else the
  default page size, capped at the maximum page size; `nodes` and `edges` of a connection do
  not multiply again; every other field has multiplier 1. The document's cost is the sum over
  its operations' root fields.
- Operations: a document may hold only a few operations.
- Statements: an upper bound of the SQL statements the operation that runs makes the database
  execute (see `estimate_statements`): cost bounds the rows a document reads, not the number of
  statements, and a root field that reads no rows per page (`projects(first: 0) { totalCount }`,
  `sectoralStats { projectCount }`) costs almost nothing yet runs a full count or aggregate.

Fragments (named and inline) are expanded where they are spread and aliases each count, so
neither can hide depth, cost or statements. `__typename` is free; the introspection fields
`__schema` and `__type` are not counted (introspection is switched on or off as a whole).
Cyclic fragments are reported by graphql's own rule; these rules stop at a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    Visitor,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_list_type,
    visit,
)

_FREE = ("__typename",)
_INTROSPECTION = ("__schema", "__type")
_CONNECTION_LISTS = ("nodes", "edges")


def _too_complex(message: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "BAD_USER_INPUT", **extensions})


class _Walker:
    """Walks a selection set with fragments expanded, knowing each field's type."""

    def __init__(self, context: ValidationContext) -> None:
        self.context = context

    def fields(
        self,
        selection_set: SelectionSetNode | None,
        parent: Any,
        visiting: frozenset[str],
        spread: set[str] | None = None,
    ) -> list[tuple[FieldNode, GraphQLOutputType | None, frozenset[str]]]:
        """The fields of one level: `visiting` holds the fragments being expanded on the path
        (a cycle stops there); `spread` the fragments already expanded at this level, which
        a second spread adds nothing to (as execution merges them): without it, a fragment
        spread twice in each of twenty nested fragments is expanded 2**20 times."""
        found: list[tuple[FieldNode, GraphQLOutputType | None, frozenset[str]]] = []
        if selection_set is None:
            return found
        spread = set() if spread is None else spread
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                field_type = None
                if isinstance(parent, GraphQLObjectType) or hasattr(parent, "fields"):
                    definition = parent.fields.get(name)
                    field_type = definition.type if definition else None
                found.append((selection, field_type, visiting))
            elif isinstance(selection, InlineFragmentNode):
                condition = parent
                if selection.type_condition is not None:
                    condition = self.context.schema.get_type(selection.type_condition.name.value)
                found.extend(self.fields(selection.selection_set, condition, visiting, spread))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.context.get_fragment(name)
                if fragment is None or name in visiting or name in spread:
                    continue  # unknown or cyclic (graphql's own rules report it), or merged
                spread.add(name)
                condition = self.context.schema.get_type(fragment.type_condition.name.value)
                found.extend(
                    self.fields(fragment.selection_set, condition, visiting | {name}, spread)
                )
        return found


def _root_type(context: ValidationContext, operation: OperationDefinitionNode) -> Any:
    return context.schema.get_root_type(operation.operation)


def depth_limit_rule(max_depth: int) -> type[ValidationRule]:
    class DepthLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            walker = _Walker(self.context)
            # Each selection set is measured once per parent type: a fragment spread many
            # times (aliases, or other fragments, branching at every level) would otherwise
            # cost exponential time in a document of a few kilobytes. Not keyed by the path's
            # fragments: they only matter to a cycle, and a cyclic document is refused anyway.
            known: dict[tuple[int, str], int] = {}

            def depth(
                selection_set: SelectionSetNode | None, parent: Any, seen: frozenset[str]
            ) -> int:
                key = (id(selection_set), getattr(parent, "name", ""))
                if key in known:
                    return known[key]
                deepest = 0
                for field, field_type, visiting in walker.fields(selection_set, parent, seen):
                    name = field.name.value
                    if name in _FREE or name in _INTROSPECTION:
                        continue
                    child = get_named_type(field_type) if field_type is not None else None
                    deepest = max(deepest, 1 + depth(field.selection_set, child, visiting))
                known[key] = deepest
                return deepest

            found = depth(node.selection_set, _root_type(self.context, node), frozenset())
            if found > max_depth:
                self.report_error(
                    _too_complex(
                        f"Query depth {found} exceeds the maximum of {max_depth}.",
                        limit="depth",
                        depth=found,
                        maximum=max_depth,
                    )
                )

    return DepthLimit


def cost_limit_rule(
    max_cost: int,
    *,
    default_list_size: int,
    max_list_size: int,
    variables: Mapping[str, Any] | None = None,
    list_size_argument: str = "first",
    known_sizes: Mapping[str, int] | None = None,
) -> type[ValidationRule]:
    """`known_sizes` gives the length of lists that are bounded by the data, not by an
    argument, keyed "Type.field" (e.g. "Query.regions": 6)."""
    values = dict(variables or {})
    sizes = dict(known_sizes or {})

    def page_size(field: FieldNode, parent: Any) -> int:
        known = sizes.get(f"{getattr(parent, 'name', '')}.{field.name.value}")
        if known is not None:
            return known
        for argument in field.arguments or ():
            if argument.name.value != list_size_argument:
                continue
            node = argument.value
            raw: Any = None
            if isinstance(node, IntValueNode):
                raw = int(node.value)
            elif isinstance(node, VariableNode):
                raw = values.get(node.name.value)
            if isinstance(raw, int) and not isinstance(raw, bool):
                return max(0, min(raw, max_list_size))
        return min(default_list_size, max_list_size)

    class CostLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.total = 0

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            walker = _Walker(self.context)
            # As in the depth rule: each selection set once per parent type and place.
            known: dict[tuple[int, str, bool], int] = {}

            def cost(
                selection_set: SelectionSetNode | None,
                parent: Any,
                seen: frozenset[str],
                inside_connection: bool,
            ) -> int:
                key = (id(selection_set), getattr(parent, "name", ""), inside_connection)
                if key not in known:
                    known[key] = measure(selection_set, parent, seen, inside_connection)
                return known[key]

            def measure(
                selection_set: SelectionSetNode | None,
                parent: Any,
                seen: frozenset[str],
                inside_connection: bool,
            ) -> int:
                total = 0
                for field, field_type, visiting in walker.fields(selection_set, parent, seen):
                    name = field.name.value
                    if name in _FREE or name in _INTROSPECTION:
                        continue
                    named = get_named_type(field_type) if field_type is not None else None
                    is_connection = named is not None and named.name.endswith("Connection")
                    is_list = field_type is not None and is_list_type(get_nullable_type(field_type))
                    multiplier = 1
                    if is_connection or (
                        is_list and not (inside_connection and name in _CONNECTION_LISTS)
                    ):
                        multiplier = page_size(field, parent)
                    children = cost(field.selection_set, named, visiting, is_connection)
                    total += 1 + multiplier * children
                return total

            self.total += cost(
                node.selection_set, _root_type(self.context, node), frozenset(), False
            )

        def leave_document(self, *_: Any) -> None:
            if self.total > max_cost:
                self.report_error(
                    _too_complex(
                        f"Query cost {self.total} exceeds the maximum of {max_cost}.",
                        limit="cost",
                        cost=self.total,
                        maximum=max_cost,
                    )
                )

    return CostLimit


def page_size_variables(document: DocumentNode, list_size_argument: str = "first") -> set[str]:
    """The variables the document passes as a page size: the only values its cost depends on."""
    found: set[str] = set()

    class PageSizes(Visitor):
        def enter_argument(self, node: ArgumentNode, *_: Any) -> None:
            if node.name.value == list_size_argument and isinstance(node.value, VariableNode):
                found.add(node.value.name.value)

    visit(document, PageSizes())
    return found


def operation_count_rule(max_operations: int) -> type[ValidationRule]:
    class OperationCount(ValidationRule):
        def enter_document(self, node: Any, *_: Any) -> None:
            count = sum(1 for d in node.definitions if isinstance(d, OperationDefinitionNode))
            if count > max_operations:
                self.report_error(
                    _too_complex(
                        f"Documents may hold at most {max_operations} operations; "
                        f"this one holds {count}.",
                        limit="operations",
                    )
                )

    return OperationCount


# --- Statements ----------------------------------------------------------------------------
#
# What each field makes the database run, read from the resolvers (resolvers/*.py) and the
# repository: nested lists and many-to-one fields are batched per list level (one statement
# for every parent at once), keyed by the field's response path and arguments
# (context.field_key), so a field costs its statements once per response path, whatever the
# number of rows above it; aliases are different paths, and so are `nodes` and `edges`.
# `tests/functions/graphql_api/test_limits.py` checks that every field with a resolver of its
# own appears in one of the three tables below, and that the estimate is never below the
# statements a request really runs.

STATEMENTS: Mapping[str, int] = {
    # Root lists and look-ups: one statement each (a page reads one row beyond it, for
    # pageInfo, in the same statement).
    "Query.countries": 1,
    "Query.projects": 1,
    "Query.country": 1,
    "Query.countryByCode": 1,
    "Query.project": 1,
    # The aggregates: one statement each, over whole tables (not weighted: see the README).
    "Query.regionalStats": 1,
    "Query.globalStats": 1,
    "Query.sectoralStats": 1,
    # The ANALYTICS series: one statement over analytics_hourly, at most 1 000 points.
    "Query.statsHistory": 1,
    # A subscription's figures, read once per change delivered (shared by every subscriber
    # of that change asking the same).
    "StatsChange.global": 1,
    "StatsChange.regional": 1,
    "StatsChange.sectoral": 1,
    # Nested lists and many-to-one fields: one statement per level.
    "Country.projects": 1,
    "Sector.projects": 1,
    "Region.countries": 1,
    "Project.country": 1,
    # A separate count: per level for a nested list; for a top-level list the count rides
    # with the page's statement, except when the page is empty (`first: 0`, or past the end).
    "CountryConnection.totalCount": 1,
    "ProjectConnection.totalCount": 1,
    # Each mutation is a transaction: BEGIN, the write, the outbox insert (or, when nothing
    # was written, the version check), COMMIT, and ROLLBACK should the COMMIT fail; an
    # updateCountry that moves the country to another region also reads the projects it
    # moved; setUserRole also takes an advisory lock (two when the admin set changes), revokes
    # the user's tokens and, when the COMMIT fails after Cognito changed, checks whether the
    # audit event was recorded.
    "Mutation.createCountry": 5,
    "Mutation.updateCountry": 6,
    "Mutation.createProject": 5,
    "Mutation.updateProject": 5,
    "Mutation.deleteProject": 5,
    "Mutation.setUserRole": 8,
}

# Fields served by one load per request, whoever asks first: the sectors (`sectors`, and every
# project's `sector`) are read once.
ONCE_PER_REQUEST: Mapping[str, str] = {
    "Query.sectors": "sectors",
    "Project.sector": "sectors",
}

# Fields with a resolver of their own that run no SQL: regions come from configuration, a
# connection's nodes, edges and pageInfo from the page already read, the status counts from
# the aggregate's row.
NO_STATEMENTS: frozenset[str] = frozenset(
    {
        "Query.regions",
        # The audit trail is DynamoDB (a bounded page, admins only), not SQL.
        "Query.auditLog",
        # A subscription's root field and its change's actor come from the event itself.
        "Subscription.projectChanged",
        "Subscription.countryChanged",
        "Subscription.statsChanged",
        "ProjectChange.changedBy",
        "CountryChange.changedBy",
        "Country.region",
        "Project.region",
        "RegionalStats.region",
        *(
            f"{connection}.{field}"
            for connection in ("CountryConnection", "ProjectConnection")
            for field in ("nodes", "edges", "pageInfo")
        ),
        *(
            f"{stats}.projectsByStatus"
            for stats in ("RegionalStats", "GlobalStats", "SectoralStats")
        ),
    }
)

# Statements a request runs once per operation of a kind: before a mutation runs, the API
# checks that the caller's token was not revoked (api._signed_out); after it committed, it
# reads the primary's position for the answer (covenant.position, read-your-writes).
OPERATION_STATEMENTS: Mapping[str, int] = {"mutation": 2}


class _StatementEstimate:
    """Counts the statements of an operation's fields as graphql-core executes them: fields
    are grouped by response key (the same key selected twice, directly or through fragments,
    resolves once: its selections merge), a named fragment is expanded once per selection
    set, `@skip` and `@include` are ignored (a field they may drop still counts)."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        statements: Mapping[str, int],
        once: Mapping[str, str],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.statements = statements
        self.once = once
        # A merged selection's statements, by type and the selection sets merged: a fragment
        # spread in many places is counted once, however the document nests it.
        self._known: dict[tuple[str, frozenset[int]], tuple[int, frozenset[str]]] = {}

    def operation(self, node: OperationDefinitionNode) -> int:
        root = self.schema.get_root_type(node.operation)
        counted, loads = self._selection(root, [(node.selection_set, frozenset())])
        return counted + len(loads) + OPERATION_STATEMENTS.get(node.operation.value, 0)

    def _fields(
        self, groups: Iterable[tuple[SelectionSetNode, frozenset[str]]]
    ) -> dict[str, list[tuple[FieldNode, frozenset[str]]]]:
        """The fields of merged selection sets, by response key, fragments expanded."""
        found: dict[str, list[tuple[FieldNode, frozenset[str]]]] = {}
        spread: set[str] = set()

        def add(selection_set: SelectionSetNode, visiting: frozenset[str]) -> None:
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    key = (selection.alias or selection.name).value
                    found.setdefault(key, []).append((selection, visiting))
                elif isinstance(selection, InlineFragmentNode):
                    add(selection.selection_set, visiting)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None or name in spread or name in visiting:
                        continue  # spread already, unknown or cyclic
                    spread.add(name)
                    add(fragment.selection_set, visiting | {name})

        for selection_set, visiting in groups:
            add(selection_set, visiting)
        return found

    def _selection(
        self,
        parent: GraphQLNamedType | None,
        groups: list[tuple[SelectionSetNode, frozenset[str]]],
    ) -> tuple[int, frozenset[str]]:
        """The statements below a merged selection on `parent`, and the once-per-request
        loads it asks for."""
        if not isinstance(parent, GraphQLObjectType):
            return 0, frozenset()
        key = (parent.name, frozenset(id(selection_set) for selection_set, _ in groups))
        known = self._known.get(key)
        if known is not None:
            return known
        counted = 0
        loads: set[str] = set()
        for nodes in self._fields(groups).values():
            name = nodes[0][0].name.value
            if name in _FREE or name in _INTROSPECTION:
                continue
            coordinate = f"{parent.name}.{name}"
            counted += self.statements.get(coordinate, 0)
            if coordinate in self.once:
                loads.add(self.once[coordinate])
            definition = parent.fields.get(name)
            children = {
                id(node.selection_set): (node.selection_set, visiting)
                for node, visiting in nodes
                if node.selection_set is not None
            }
            if definition is not None and children:
                below, asked = self._selection(
                    get_named_type(definition.type), list(children.values())
                )
                counted += below
                loads |= asked
        result = (counted, frozenset(loads))
        self._known[key] = result
        return result


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


def estimate_statements(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None = None,
    *,
    statements: Mapping[str, int] = STATEMENTS,
    once: Mapping[str, str] = ONCE_PER_REQUEST,
) -> int:
    """An upper bound of the SQL statements running the operation `operation_name` of a valid
    document executes: the sum of `statements` over its fields, counted once per response
    path (after fragments are expanded and fields of the same response key merged), plus one
    per load of `once` it asks for, plus the operation's own (`OPERATION_STATEMENTS`). It
    depends on neither variables nor data: a field's statements do not depend on how many
    rows are above it, and fields under `@skip`/`@include` count. Not counted: a request's
    idempotency record (a mutation sent with an Idempotency-Key), and a read's wait for the
    replica to reach the Covenant-Min-Position it sent (bounded in time, not in statements)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        raise ValueError(f"no operation {operation_name!r} to run in the document")
    return _StatementEstimate(schema, _fragments(document), statements, once).operation(operation)


def statement_limit_rule(
    max_statements: int,
    operation_name: str | None,
    *,
    statements: Mapping[str, int] = STATEMENTS,
    once: Mapping[str, str] = ONCE_PER_REQUEST,
) -> type[ValidationRule]:
    """At most `max_statements` SQL statements (as `estimate_statements` bounds them) in the
    operation that will run (the one `operation_name` selects): the others do not run."""

    class StatementLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            document = self.context.document
            if get_operation_ast(document, operation_name) is not node:
                return
            estimate = _StatementEstimate(
                self.context.schema, _fragments(document), statements, once
            )
            found = estimate.operation(node)
            if found > max_statements:
                self.report_error(
                    _too_complex(
                        f"The operation may run {found} SQL statements; "
                        f"at most {max_statements} run in one request.",
                        limit="statements",
                        statements=found,
                        maximum=max_statements,
                    )
                )

    return StatementLimit

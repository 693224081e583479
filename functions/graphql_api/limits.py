"""Protection against expensive documents, as validation rules that run before execution.

- Depth: the nesting of fields below an operation's root (a root field is depth 1).
- Cost: cost(field) = 1 + multiplier x sum(cost(children)), where the multiplier of a field
  returning a connection (a type named *Connection) or a list is its page size: the `first`
  argument (a literal or a variable), else the list's known size (regions, sectors), else the
  default page size, capped at the maximum page size; `nodes` and `edges` of a connection do
  not multiply again; every other field has multiplier 1. The document's cost is the sum over
  its operations' root fields.
- Operations: a document may hold only a few operations.

Fragments (named and inline) are expanded where they are spread and aliases each count, so
neither can hide depth or cost. `__typename` is free; the introspection fields `__schema` and
`__type` are not counted (introspection is switched on or off as a whole). Cyclic fragments are
reported by graphql's own rule; these rules stop at a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLOutputType,
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
    ) -> list[tuple[FieldNode, GraphQLOutputType | None, frozenset[str]]]:
        found: list[tuple[FieldNode, GraphQLOutputType | None, frozenset[str]]] = []
        if selection_set is None:
            return found
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
                found.extend(self.fields(selection.selection_set, condition, visiting))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.context.get_fragment(name)
                if fragment is None or name in visiting:
                    continue  # unknown or cyclic: graphql's own rules report it
                condition = self.context.schema.get_type(fragment.type_condition.name.value)
                found.extend(self.fields(fragment.selection_set, condition, visiting | {name}))
        return found


def _root_type(context: ValidationContext, operation: OperationDefinitionNode) -> Any:
    return context.schema.get_root_type(operation.operation)


def depth_limit_rule(max_depth: int) -> type[ValidationRule]:
    class DepthLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            walker = _Walker(self.context)

            def depth(
                selection_set: SelectionSetNode | None, parent: Any, seen: frozenset[str]
            ) -> int:
                deepest = 0
                for field, field_type, visiting in walker.fields(selection_set, parent, seen):
                    name = field.name.value
                    if name in _FREE or name in _INTROSPECTION:
                        continue
                    child = get_named_type(field_type) if field_type is not None else None
                    deepest = max(deepest, 1 + depth(field.selection_set, child, visiting))
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

            def cost(
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

"""Execution with a short path for fields that only read their parent row.

Most of a list response is fields read straight from a row (`name`, `budgetUsd`) or found from
it (`sector`). For each of them graphql-core builds a path, a resolve-info object and the
argument map, calls the resolver, and walks the completion steps (non-null, list, leaf or
object) one call at a time: about 5 us per field, three quarters of the execution time of a
list of 2 000 projects. Here the fields whose resolver needs only the parent row and the
request context (`RowKey`, `RowResolver`: no arguments, no path, no selection) are resolved
and completed in place, rows of an object type go straight to their fields, and lists of rows
are walked in one loop. A row whose fields are all values that are their own serialisation or
rows found from it (`RowLookup`: a sector by the project's sector id) completes in one pass,
without a path per row (docs/performance.md). Whenever a value is not a plain one (null in a
non-null field, a value its type refuses, an error, an awaitable), the value is completed by
graphql-core's own code, so results and errors are exactly graphql-core's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from ariadne.resolvers import is_default_resolver
from graphql import (
    FieldNode,
    GraphQLBoolean,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLString,
    Undefined,
    is_leaf_type,
)
from graphql.execution import Executor
from graphql.execution.collect_fields import FieldDetails, FieldDetailsList, GroupedFieldSet
from graphql.execution.executor import StreamUsage, to_nodes
from graphql.execution.values import get_argument_values
from graphql.pyutils import AwaitableOrValue, Path


class RowKey:
    """The resolver of a field that is one key of its parent row (or one attribute of its
    parent object): what ariadne's `resolve_to` and graphql-core's default resolver do."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, parent: Any, info: Any, **arguments: Any) -> Any:
        if isinstance(parent, Mapping):
            value = parent.get(self.key)
        else:
            value = getattr(parent, self.key, None)
        return value(info, **arguments) if callable(value) else value

    def __repr__(self) -> str:
        return f"RowKey({self.key!r})"


class RowResolver:
    """A resolver that needs only the parent row and the request context: bound as
    `RowResolver(lambda row, context: ...)`, it takes no arguments."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Any, Any], Any]) -> None:
        self.function = function

    def __call__(self, parent: Any, info: GraphQLResolveInfo[Any]) -> Any:
        return self.function(parent, info.context)


class RowLookup(RowResolver):
    """A RowResolver finding the row under the parent's `key` in a mapping that is the same for
    every parent of a request (`table(context)`, e.g. the sectors by id): the executor reads
    the mapping once per request, then each parent's row with one dict lookup."""

    __slots__ = ("key", "table")

    def __init__(self, key: str, table: Callable[[Any], Mapping[Any, Any]]) -> None:
        super().__init__(lambda row, context: table(context)[row[key]])
        self.key = key
        self.table = table


class RowDerived(RowResolver):
    """A RowResolver that is a pure function of the parent row (`projectsByStatus` from a
    stats row's counts): no side effect, nothing read but the row, so that a compiled row
    function may call it and, when the row then leaves the short path, the general path
    calls it again."""

    __slots__ = ()


# Leaf types whose serialisation of a value of one exact Python type is that value itself.
_ITSELF: dict[str, type] = {GraphQLString.name: str, GraphQLID.name: str, GraphQLBoolean.name: bool}


def serialised_as_itself(scalar: str, python_type: type) -> None:
    """Declares that the scalar named `scalar` serialises a value of exactly `python_type` as
    that value, so that rows pass such values through unchanged."""
    _ITSELF[scalar] = python_type


def bind_row_keys(schema: GraphQLSchema, key_of: Callable[[str], str]) -> None:
    """Gives every field without a resolver of its own (graphql-core's default resolver, or
    the alias ariadne binds when it converts names) a RowKey reading `key_of(field name)`, so
    that the executor can recognise plain reads."""
    for type_name, named in schema.type_map.items():
        if type_name.startswith("__") or not isinstance(named, GraphQLObjectType):
            continue
        for field_name, field in named.fields.items():
            if is_default_resolver(field.resolve):
                field.resolve = RowKey(key_of(field_name))


class _Step(NamedTuple):
    """How to produce one field of a row in place."""

    field: GraphQLField
    key: str | None  # a RowKey's key
    function: Callable[[Any, Any], Any] | None  # a RowResolver's function
    leaf: GraphQLLeafType | None
    row_type: GraphQLObjectType | None  # an object type whose values are rows
    row_items: GraphQLOutputType | None  # the item type of a list of such rows
    nullable: bool
    passes: type | None  # values of this Python type are their own serialisation


class _Found(NamedTuple):
    """A field whose value is a row found from the parent row (a project's sector)."""

    name: str
    step: _Step
    field_details_list: FieldDetailsList
    grouped_field_set: GroupedFieldSet  # the found row's selection
    lookup: RowLookup | None


class _Plan(NamedTuple):
    """The fields of one selection on one object type that can be produced in place."""

    steps: dict[str, _Step]
    leaves_only: bool  # every field is a plain key read of a leaf
    names: tuple[str, ...]  # the response names, in the selection's order
    # Key reads of a leaf whose values of one Python type are their own serialisation:
    # (response name, key, that type).
    copies: tuple[tuple[str, str, type], ...]
    found: tuple[_Found, ...]
    direct: bool  # every field is one of copies or found
    # The row's fields in one generated function (_compiled_row), or None: when every field
    # is a key read of a leaf, a RowLookup, or a row or list of rows (read by key or
    # RowDerived) whose own selection compiles without lookups.
    compiled: Callable[..., dict[str, Any] | None] | None
    lookups: tuple[_Found, ...]  # the compiled function's lookups, in its parameters' order

    def __bool__(self) -> bool:
        return bool(self.steps)


def _step(field: GraphQLField, has_arguments: bool) -> _Step | None:
    resolver = field.resolve
    if has_arguments or field.args:
        return None
    key = resolver.key if type(resolver) is RowKey else None
    function = resolver.function if isinstance(resolver, RowResolver) else None
    if key is None and function is None:
        return None
    nullable = not isinstance(field.type, GraphQLNonNull)
    inner = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if is_leaf_type(inner):
        passes = _ITSELF.get(inner.name)
        return _Step(field, key, function, inner, None, None, nullable, passes)
    row_type = _row_type(inner)
    if row_type is not None:
        return _Step(field, key, function, None, row_type, None, nullable, None)
    if isinstance(inner, GraphQLList) and _row_type(inner.of_type) is not None:
        return _Step(field, key, function, None, None, inner.of_type, nullable, None)
    return None


def _row_type(return_type: GraphQLOutputType) -> GraphQLObjectType | None:
    inner = return_type.of_type if type(return_type) is GraphQLNonNull else return_type
    if type(inner) is GraphQLObjectType and inner.is_type_of is None:
        return inner
    return None


class RowExecutor(Executor[Any]):
    """graphql-core's executor, with fields that only read their parent row produced in
    place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keyed by the identity of a grouped field set, which graphql-core memoises per
        # (type, field group) and keeps alive for the whole execution.
        self._plans: dict[int, tuple[GroupedFieldSet, _Plan]] = {}
        # Rows whose selection is only plain leaves, completed: (row, grouped field set) ids.
        self._completed: dict[tuple[int, int], tuple[dict[str, Any], dict[str, Any]]] = {}
        # The mappings of RowLookup resolvers, by the resolver's identity: one per request.
        self._tables: dict[int, Mapping[Any, Any]] = {}
        # collect_subfields by the identity of the field group (kept alive here).
        self._collected: dict[int, tuple[GraphQLObjectType, FieldDetailsList, GroupedFieldSet]] = {}
        # Field groups without @stream (get_stream_usage), kept alive here.
        self._unstreamed: dict[int, FieldDetailsList] = {}
        # What compiled row functions read besides the row, by plan (_bound).
        self._bound_values: dict[int, tuple[Any, ...]] = {}
        # Argument values by field node, when they are all immutable scalars (_arguments).
        self._argument_values: dict[
            int, tuple[FieldNode, GraphQLObjectType, GraphQLField, dict[str, Any]]
        ] = {}

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        plan = self._plan(parent_type, grouped_field_set) if type(source_value) is dict else None
        if not plan:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        if plan.leaves_only:
            known = self._completed.get((id(source_value), id(grouped_field_set)))
            if known is not None and known[0] is source_value:
                return known[1]
        if plan.compiled is not None:
            bound = self._bound(plan)
            fast = plan.compiled(source_value, *bound) if bound is not None else None
            if fast is not None:
                if plan.leaves_only:
                    self._completed[(id(source_value), id(grouped_field_set))] = (
                        source_value,
                        fast,
                    )
                return fast
        if plan.direct:
            direct = self._direct(parent_type, source_value, plan, path, None)
            if type(direct) is dict and plan.leaves_only:
                self._completed[(id(source_value), id(grouped_field_set))] = (source_value, direct)
            if direct is not None:
                return direct
        results: dict[str, Any] = {}
        pending: list[str] = []
        in_place = True
        for response_name, field_details_list in grouped_field_set.items():
            step = plan.steps.get(response_name)
            if step is not None and step.key is not None and step.leaf is not None:
                value = source_value.get(step.key)
                if value is None:
                    if step.nullable:
                        results[response_name] = None
                        continue
                elif type(value) is step.passes:
                    results[response_name] = value
                    continue
                elif not callable(value):
                    coerced = _coerced(step.leaf, value)
                    if coerced is not Undefined:
                        results[response_name] = coerced
                        continue
            in_place = False
            if step is None or (step.key is not None and callable(source_value.get(step.key))):
                # A resolver of its own, or a callable value the resolver calls.
                result = self.execute_field(
                    parent_type,
                    source_value,
                    field_details_list,
                    Path(path, response_name, parent_type.name),
                    position_context,
                )
                if result is Undefined:
                    continue
            elif step.key is not None:
                result = self._complete(
                    parent_type,
                    step,
                    field_details_list,
                    path,
                    response_name,
                    source_value.get(step.key),
                )
            else:
                assert step.function is not None
                try:
                    value = self._resolved(step, source_value)
                except Exception as raw_error:
                    self.handle_field_error(
                        raw_error,
                        step.field.type,
                        field_details_list,
                        Path(path, response_name, parent_type.name),
                    )
                    result = None
                else:
                    result = self._complete(
                        parent_type, step, field_details_list, path, response_name, value
                    )
            results[response_name] = result
            if type(result) not in _PLAIN and self.is_awaitable(result):
                pending.append(response_name)
        if pending:
            return _awaited_fields(results, pending)
        if plan.leaves_only and in_place:
            # The same row under the same selection completes to the same values wherever
            # it appears (a sector under each of 2 000 projects): computed once.
            self._completed[(id(source_value), id(grouped_field_set))] = (source_value, results)
        return results

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any,
    ) -> AwaitableOrValue[Any] | Any:
        """graphql-core's execute_field, with the argument values of a field node coerced
        once per request instead of once per parent (195 times for a nested list under 195
        countries): the values cannot change within a request (its variables are fixed).
        Each call gets its own dict of them; the values themselves are shared, as
        graphql-core already shares a variable's value and a default between calls, so a
        resolver must not change an input object or list it is sent (none here does)."""
        first = field_details_list[0]
        arguments = (
            self._arguments(parent_type, first)
            if first.node.arguments
            and first.fragment_variable_values is None
            and not self.middleware_manager
            else None
        )
        if arguments is None:
            return super().execute_field(
                parent_type, source, field_details_list, path, position_context
            )
        field_def, args = arguments
        return_type = field_def.type
        resolve_fn = field_def.resolve or self.field_resolver
        info = self.build_resolve_info(field_def, to_nodes(field_details_list), parent_type, path)
        try:
            result = resolve_fn(source, info, **args)
            if type(result) not in _PLAIN and self.is_awaitable(result):
                return self.complete_awaitable_value(
                    return_type, field_details_list, info, path, result, position_context
                )
            completed = self.complete_value(
                return_type, field_details_list, info, path, result, position_context
            )
            if type(completed) not in _PLAIN and self.is_awaitable(completed):
                return self._awaited_field(completed, return_type, field_details_list, path)
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None
        return completed

    def _arguments(
        self, parent_type: GraphQLObjectType, details: FieldDetails
    ) -> tuple[GraphQLField, dict[str, Any]] | None:
        """The field's definition and its argument values, coerced once per request; None
        when a value is not made of scalars, lists and dicts (an input type's own class), or
        they cannot be coerced: graphql-core's own path then coerces them, or reports the
        error, as always."""
        node = details.node
        known = self._argument_values.get(id(node))
        if known is not None and known[0] is node and known[1] is parent_type:
            return known[2], known[3]
        field_def = self.schema.get_field(parent_type, node.name.value)
        if field_def is None:
            return None
        try:
            args = get_argument_values(
                field_def, node, self.variable_values, None, self.hide_suggestions
            )
        except Exception:
            return None
        if not all(_plain_value(value) for value in args.values()):
            return None
        self._argument_values[id(node)] = (node, parent_type, field_def, args)
        return field_def, args

    def _complete(
        self,
        parent_type: GraphQLObjectType,
        step: _Step,
        field_details_list: FieldDetailsList,
        path: Path | None,
        response_name: str,
        value: Any,
    ) -> AwaitableOrValue[Any]:
        """Completes a resolved value as graphql-core's execute_field does after the resolver."""
        if value is None and step.nullable:
            return None
        if step.leaf is not None and value is not None and not isinstance(value, Exception):
            coerced = _coerced(step.leaf, value)
            if coerced is not Undefined:
                return coerced
        if step.row_type is not None and type(value) is dict:
            grouped_field_set = self._subfields(step.row_type, field_details_list)
            known = self._completed.get((id(value), id(grouped_field_set)))
            if known is not None and known[0] is value:
                return known[1]
        field_path = Path(path, response_name, parent_type.name)
        completed: AwaitableOrValue[Any]
        try:
            if step.row_type is not None and type(value) is dict:
                completed = self.execute_fields(
                    step.row_type, value, field_path, grouped_field_set, None
                )
            elif (
                step.row_items is not None
                and type(value) is list
                and self.get_stream_usage(field_details_list, field_path) is None
            ):
                completed = self._complete_rows(
                    step.row_items,
                    field_details_list,
                    field_path,
                    value,
                    lambda: self._info(parent_type, step, field_details_list, field_path),
                )
            else:
                completed = self.complete_value(
                    step.field.type,
                    field_details_list,
                    self._info(parent_type, step, field_details_list, field_path),
                    field_path,
                    value,
                    None,
                )
        except Exception as raw_error:
            self.handle_field_error(raw_error, step.field.type, field_details_list, field_path)
            return None
        if type(completed) not in _PLAIN and self.is_awaitable(completed):
            return self._awaited_field(completed, step.field.type, field_details_list, field_path)
        return completed

    def _info(
        self,
        parent_type: GraphQLObjectType,
        step: _Step,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> GraphQLResolveInfo[Any]:
        """The resolve info graphql-core's own completion needs (errors name the field)."""
        return self.build_resolve_info(
            step.field, [details.node for details in field_details_list], parent_type, path
        )

    async def _awaited_field(
        self,
        completed: Any,
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> Any:
        try:
            return await completed
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None

    def complete_value(
        self,
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[Any]:
        # A row of an object type goes straight to its fields, as in graphql-core once it
        # has unwrapped non-null (a row is not null) and asked is_type_of (none is set here).
        if type(result) is dict:
            row_type = _row_type(return_type)
            if row_type is not None:
                # collect_and_execute_subfields, its collection memoised by _subfields
                return self.execute_fields(
                    row_type, result, path, self._subfields(row_type, field_details_list), None
                )
        return super().complete_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def complete_list_value(
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[list[Any]]:
        item_type = return_type.of_type
        row_type = _row_type(item_type)
        if (
            type(result) is not list
            or row_type is None
            or self.get_stream_usage(field_details_list, path) is not None
        ):
            return super().complete_list_value(
                return_type, field_details_list, info, path, result, position_context
            )
        return self._complete_rows(item_type, field_details_list, path, result, lambda: info)

    def _complete_rows(
        self,
        item_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
        items: list[Any],
        info: Callable[[], GraphQLResolveInfo[Any]],
    ) -> AwaitableOrValue[list[Any]]:
        """A list whose items are of a row type: each row straight to its fields, in one loop
        (anything but a row, e.g. null, through graphql-core's item completion)."""
        row_type = _row_type(item_type)
        assert row_type is not None
        grouped_field_set = self._subfields(row_type, field_details_list)
        plan = self._plan(row_type, grouped_field_set)
        completed: list[Any] = []
        pending: list[int] = []
        compiled = plan.compiled
        bound: tuple[Any, ...] | None = None
        for index, item in enumerate(items):
            if compiled is not None and type(item) is dict:
                if bound is None:
                    bound = self._bound(plan)
                if bound is not None:
                    fast = compiled(item, *bound)
                    if fast is not None:
                        completed.append(fast)
                        continue
            if plan.direct and type(item) is dict:
                try:
                    value = self._direct(row_type, item, plan, path, index)
                except Exception as raw_error:
                    item_path = path.add_key(index, None)
                    self.handle_field_error(raw_error, item_type, field_details_list, item_path)
                    value = None
                    completed.append(value)
                    continue
                if type(value) is dict:
                    completed.append(value)
                    continue
                if value is not None:  # awaitable
                    item_path = path.add_key(index, None)
                    value = self._awaited_field(value, item_type, field_details_list, item_path)
                    pending.append(index)
                    completed.append(value)
                    continue
            item_path = path.add_key(index, None)
            if type(item) is not dict:
                if self.complete_list_item_value(
                    item, completed, item_type, field_details_list, info(), item_path, None
                ):
                    pending.append(index)
                continue
            try:
                value = self.execute_fields(row_type, item, item_path, grouped_field_set, None)
            except Exception as raw_error:
                self.handle_field_error(raw_error, item_type, field_details_list, item_path)
                value = None
            if type(value) is not dict and self.is_awaitable(value):
                value = self._awaited_field(value, item_type, field_details_list, item_path)
                pending.append(index)
            completed.append(value)
        return _awaited_items(completed, pending) if pending else completed

    def _direct(
        self,
        parent_type: GraphQLObjectType,
        row: dict[str, Any],
        plan: _Plan,
        path: Path | None,
        index: int | None,
    ) -> AwaitableOrValue[dict[str, Any]] | None:
        """The fields of a row whose plan is direct, without a path per row (built only for
        an error or a found row's first completion); None, having called nothing, when a
        copied value is not of its type (the general path completes the row then)."""
        if not plan.found:
            copied: dict[str, Any] = {}
            for name, key, passes in plan.copies:
                value = row.get(key)
                if type(value) is not passes:
                    return None
                copied[name] = value
            return copied
        results: dict[str, Any] = dict.fromkeys(plan.names)
        for name, key, passes in plan.copies:
            value = row.get(key)
            if type(value) is not passes:
                return None
            results[name] = value
        pending: list[str] = []
        for found in plan.found:
            step = found.step
            assert step.function is not None
            try:
                value = self._resolved(step, row)
            except Exception as raw_error:
                row_path = path if index is None else path.add_key(index, None)  # type: ignore[union-attr]
                self.handle_field_error(
                    raw_error,
                    step.field.type,
                    found.field_details_list,
                    Path(row_path, found.name, parent_type.name),
                )
                results[found.name] = None
                continue
            if type(value) is dict:
                known = self._completed.get((id(value), id(found.grouped_field_set)))
                if known is not None and known[0] is value:
                    results[found.name] = known[1]
                    continue
            row_path = path if index is None else path.add_key(index, None)  # type: ignore[union-attr]
            result = self._complete(
                parent_type, step, found.field_details_list, row_path, found.name, value
            )
            results[found.name] = result
            if type(result) not in _PLAIN and self.is_awaitable(result):
                pending.append(found.name)
        if pending:
            return _awaited_fields(results, pending)
        return results

    def _resolved(self, step: _Step, row: dict[str, Any]) -> Any:
        """What a RowResolver step resolves to for this row. A RowLookup reads its mapping
        once per request (kept for compiled row functions: _bound) and then only looks the
        row up; a row not found there goes to the resolver, which says what that means."""
        assert step.function is not None
        lookup = step.field.resolve
        if type(lookup) is RowLookup and lookup.key in row:  # a missing key: the resolver's
            table = self._tables.get(id(lookup))
            if table is None:
                table = self._tables[id(lookup)] = lookup.table(self.context_value)
            value = table.get(row[lookup.key])  # an unhashable key raises as the resolver would
            if value is not None:
                return value
        return step.function(row, self.context_value)

    def _bound(self, plan: _Plan) -> tuple[Any, ...] | None:
        """What a compiled row function reads besides the row: the completed found rows, the
        request context, the mappings of its lookups. None until every mapping has been read
        (by the general path, which reports a mapping's error as graphql-core would)."""
        bound = self._bound_values.get(id(plan))
        if bound is not None:
            return bound
        tables = []
        for found in plan.lookups:
            table = self._tables.get(id(found.lookup))
            if table is None:
                return None
            tables.append(table)
        bound = (
            self._completed,
            self.context_value,
            *(
                value
                for found, table in zip(plan.lookups, tables, strict=True)
                for value in (table, id(found.grouped_field_set))
            ),
        )
        self._bound_values[id(plan)] = bound  # the plan lives as long as the execution
        return bound

    def get_stream_usage(
        self, field_details_list: FieldDetailsList, path: Path
    ) -> StreamUsage | None:
        """graphql-core's, with a field group found without @stream remembered as such
        (graphql-core remembers only the streamed ones, and reads the directive again for
        every list of every parent)."""
        known = self._unstreamed.get(id(field_details_list))
        if known is not None and known is field_details_list:
            return None
        usage = super().get_stream_usage(field_details_list, path)
        if usage is None and not isinstance(path.key, int):
            self._unstreamed[id(field_details_list)] = field_details_list
        return usage

    def _subfields(
        self, row_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> GroupedFieldSet:
        """graphql-core's memoised collect_subfields, without building its key every row."""
        cached = self._collected.get(id(field_details_list))
        if cached is not None and cached[0] is row_type:
            return cached[2]
        grouped_field_set = self.collect_subfields(row_type, field_details_list)[0]
        self._collected[id(field_details_list)] = (row_type, field_details_list, grouped_field_set)
        return grouped_field_set

    def _plan(self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet) -> _Plan:
        cached = self._plans.get(id(grouped_field_set))
        if cached is not None:
            return cached[1]
        steps: dict[str, _Step] = {}
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            field = parent_type.fields.get(node.name.value)
            step = _step(field, bool(node.arguments)) if field is not None else None
            if step is not None:
                steps[response_name] = step
        leaves_only = len(steps) == len(grouped_field_set) and all(
            step.key is not None and step.leaf is not None for step in steps.values()
        )
        copies = tuple(
            (name, step.key, step.passes)
            for name, step in steps.items()
            if step.key is not None and step.passes is not None
        )
        found = tuple(
            _Found(
                name,
                step,
                grouped_field_set[name],
                self._subfields(step.row_type, grouped_field_set[name]),
                resolver if type(resolver := step.field.resolve) is RowLookup else None,
            )
            for name, step in steps.items()
            if step.function is not None and step.row_type is not None
        )
        direct = len(copies) + len(found) == len(grouped_field_set)
        compiled, lookups = self._compile(grouped_field_set, steps, found)
        plan = _Plan(
            steps, leaves_only, tuple(grouped_field_set), copies, found, direct, compiled, lookups
        )
        self._plans[id(grouped_field_set)] = (grouped_field_set, plan)
        return plan

    def _compile(
        self,
        grouped_field_set: GroupedFieldSet,
        steps: dict[str, _Step],
        found: tuple[_Found, ...],
    ) -> tuple[Callable[..., dict[str, Any] | None] | None, tuple[_Found, ...]]:
        """The compiled row function of a selection and the lookups it reads, or (None, ())
        when a field cannot be produced by one (a resolver of its own, arguments, @stream)."""
        found_by_name = {item.name: item for item in found}
        lookups: list[_Found] = []
        fields: list[tuple[Any, ...]] = []
        for name, field_details_list in grouped_field_set.items():
            step = steps.get(name)
            if step is None:
                return None, ()
            resolver = step.field.resolve
            if step.leaf is not None:
                if step.key is None:
                    return None, ()
                if step.passes is not None:
                    fields.append(("copy", name, step.key, step.passes, step.nullable))
                else:
                    fields.append(("leaf", name, step.key, step.leaf, step.nullable))
                continue
            if type(resolver) is RowLookup and name in found_by_name:
                found_row = found_by_name[name]
                assert step.row_type is not None
                sub = self._plan(step.row_type, found_row.grouped_field_set)
                complete = sub.compiled if sub.compiled is not None and not sub.lookups else None
                fields.append(("lookup", name, resolver.key, len(lookups), complete))
                lookups.append(found_row)
                continue
            if step.key is not None:
                source: tuple[str, Any] = ("key", step.key)
            elif type(resolver) is RowDerived:
                source = ("derived", resolver.function)
            else:
                return None, ()
            item_type = step.row_type or step.row_items
            row_type = _row_type(item_type) if item_type is not None else None
            if row_type is None or any(
                directive.name.value == "stream"
                for details in field_details_list
                for directive in details.node.directives or ()
            ):
                return None, ()
            sub = self._plan(row_type, self._subfields(row_type, field_details_list))
            if sub.compiled is None or sub.lookups:
                return None, ()
            if step.row_type is not None:
                fields.append(("row", name, source, sub.compiled, step.nullable))
            else:
                items_nullable = not isinstance(item_type, GraphQLNonNull)
                fields.append(("rows", name, source, sub.compiled, step.nullable, items_nullable))
        return _compiled_row(tuple(fields)), tuple(lookups)


_COMPILED: dict[tuple[Any, ...], Callable[..., dict[str, Any] | None]] = {}

# The Python types a leaf value is completed from in a compiled row function; any other (a
# callable the resolver would call, an exception) leaves the short path.
_LEAF_VALUES = frozenset({str, int, float, bool, Decimal, datetime, date})


# For Int and Float: the values graphql-core's coercion returns as they are (serialize_int
# returns an int within 32 bits unchanged, serialize_float a finite float), tested inline.
_ITSELF_WHEN = {
    GraphQLInt.name: "type({v}) is int and -2147483648 <= {v} <= 2147483647",
    GraphQLFloat.name: "type({v}) is float and {v} - {v} == 0.0",  # neither inf nor nan
}


def _compiled_row(fields: tuple[tuple[Any, ...], ...]) -> Callable[..., dict[str, Any] | None]:
    """A function completing a row whose fields are all of these kinds, in the selection's
    order:

    - ("copy", name, key, type, nullable): a value of exactly `type` is its serialisation;
    - ("leaf", name, key, leaf type, nullable): the value as the leaf type coerces it, as
      graphql-core's complete_leaf_value does;
    - ("lookup", name, key, index, sub): a row found in the lookup's table, its completion
      taken from `completed`, computed once per request: by `sub`, the compiled function of
      its selection, if it has one, else by the general path;
    - ("row", name, source, sub, nullable) and ("rows", name, source, sub, nullable, items
      nullable): a row, or a list of rows, read by key or from a RowDerived function
      (source: ("key", key) or ("derived", function)), each completed by `sub`, the compiled
      function of its own selection.

    It returns None, having changed nothing but `completed` (found rows it completed, as
    the general path would have), whenever a value is not plain (null in a non-null field, a
    value of another type, a value its type refuses, a lookup key missing or unhashable, a
    found row missing, a derived function that raises): the general path then completes the
    row, errors and all, exactly as graphql-core does.

    Generated once per shape (names, keys, types), not per request: a list of 2 000 rows
    costs one call per row instead of a loop over the fields per row. Its parameters: the
    row, `completed`, the request context, then a (table, selection id) pair per lookup."""
    found = _COMPILED.get(fields)
    if found is not None:
        return found
    namespace: dict[str, Any] = {"Undefined": Undefined, "leaf_values": _LEAF_VALUES}
    parameters = ["row", "completed", "context"]
    lines: list[str] = []

    def null(variable: str, nullable: bool, indent: str) -> None:
        lines.append(f"{indent}    {variable} = None" if nullable else f"{indent}    return None")

    for index, spec in enumerate(fields):
        kind = spec[0]
        v = f"v{index}"
        if kind == "copy":
            _, _, key, passes, nullable = spec
            namespace[f"{v}_type"] = passes
            lines.append(f"    {v} = row.get({key!r})")
            lines.append(f"    if type({v}) is not {v}_type:")
            refused = f"if {v} is not None: return None" if nullable else "return None"
            lines.append(f"        {refused}")
        elif kind == "leaf":
            _, _, key, leaf, nullable = spec
            namespace[f"{v}_coerce"] = leaf.coerce_output_value
            lines += [f"    {v} = row.get({key!r})", f"    if {v} is None:"]
            null(v, nullable, "    ")
            itself = _ITSELF_WHEN.get(leaf.name) if leaf in (GraphQLInt, GraphQLFloat) else None
            if itself is not None:  # what graphql-core's coercion gives back unchanged
                lines.append(f"    elif {itself.format(v=v)}: pass")
            lines += [
                f"    elif type({v}) not in leaf_values: return None",
                "    else:",
                f"        try: {v} = {v}_coerce({v})",
                "        except Exception: return None",
                f"        if {v} is None or {v} is Undefined: return None",
            ]
        elif kind == "lookup":
            _, _, key, at, complete = spec
            parameters += [f"table{at}", f"selection{at}"]
            lines += [  # a missing or unhashable key: the general path says what it means
                f"    try: found{index} = table{at}.get(row[{key!r}])",
                "    except Exception: return None",
                f"    if type(found{index}) is not dict: return None",
                f"    {v} = completed.get((id(found{index}), selection{at}))",
                f"    if {v} is not None and {v}[0] is found{index}:",
                f"        {v} = {v}[1]",
            ]
            if complete is None:
                lines.append("    else: return None")
            else:  # completed here the first time, and kept for the next rows finding it
                namespace[f"{v}_sub"] = complete
                lines += [
                    "    else:",
                    f"        {v} = {v}_sub(found{index}, completed, context)",
                    f"        if {v} is None: return None",
                    f"        completed[(id(found{index}), selection{at})] = (found{index}, {v})",
                ]
        else:
            source, sub, nullable = spec[2], spec[3], spec[4]
            namespace[f"{v}_sub"] = sub
            if source[0] == "key":
                lines.append(f"    {v} = row.get({source[1]!r})")
            else:
                namespace[f"{v}_derive"] = source[1]
                lines += [
                    f"    try: {v} = {v}_derive(row, context)",
                    "    except Exception: return None",
                ]
            lines.append(f"    if {v} is None:")
            null(v, nullable, "    ")
            if kind == "row":
                lines += [
                    f"    elif type({v}) is not dict: return None",
                    "    else:",
                    f"        {v} = {v}_sub({v}, completed, context)",
                    f"        if {v} is None: return None",
                ]
            else:
                lines += [
                    f"    elif type({v}) is not list: return None",
                    "    else:",
                    f"        items{index} = []",
                    f"        for item in {v}:",
                    "            if type(item) is not dict:",
                ]
                if spec[5]:  # a null item of a list whose items may be null
                    lines += [
                        "                if item is not None: return None",
                        f"                items{index}.append(None)",
                        "                continue",
                    ]
                else:
                    lines.append("                return None")
                lines += [
                    f"            done = {v}_sub(item, completed, context)",
                    "            if done is None: return None",
                    f"            items{index}.append(done)",
                    f"        {v} = items{index}",
                ]
    result = ", ".join(f"{spec[1]!r}: v{index}" for index, spec in enumerate(fields))
    source_text = "\n".join(
        [f"def row_fields({', '.join(parameters)}):", *lines, f"    return {{{result}}}"]
    )
    exec(compile(source_text, "<graphql_api.executor compiled row>", "exec"), namespace)  # noqa: S102
    function: Callable[..., dict[str, Any] | None] = namespace["row_fields"]
    if len(_COMPILED) >= 256:
        _COMPILED.clear()
    _COMPILED[fields] = function
    return function


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain_value(value: Any) -> bool:
    """Whether an argument value is made of plain scalars, lists and dicts only."""
    if type(value) in _SCALARS:
        return True
    if type(value) is dict:
        return all(_plain_value(item) for item in value.values())
    if type(value) is list:
        return all(_plain_value(item) for item in value)
    return False


# Values that are never awaitable: checking these types first skips is_awaitable's probing.
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})


def _coerced(leaf: GraphQLLeafType, value: Any) -> Any:
    """The value as its type serialises it; Undefined when the type refuses it (graphql-core's
    path then reports the error)."""
    try:
        coerced = leaf.coerce_output_value(value)
    except Exception:
        return Undefined
    return Undefined if coerced is None else coerced


async def _awaited_fields(results: dict[str, Any], pending: Iterable[str]) -> dict[str, Any]:
    """No resolver of this API is asynchronous; kept so that one would still work."""
    for name in pending:
        results[name] = await results[name]
    return results


async def _awaited_items(items: list[Any], pending: Iterable[int]) -> list[Any]:
    for index in pending:
        items[index] = await items[index]
    return items

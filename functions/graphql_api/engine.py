"""Runs one GraphQL request against the schema: parse, validate (with the protection limits),
select the operation, coerce variables, execute, and shape errors for the client.

Request errors (the document or its variables are unusable) come back as `RequestErrors`;
execution errors travel inside the result. Internal details never reach the client.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.validation import NoSchemaIntrospectionCustomRule
from pg8000.exceptions import DatabaseError

from covenant.db import CommitOutcomeUnknown, DatabaseUnavailable, gave_up
from graphql_api.context import RequestContext
from graphql_api.errors import ApiError
from graphql_api.executor import RowExecutor
from graphql_api.limits import (
    cost_limit_rule,
    depth_limit_rule,
    page_size_variables,
    shape_errors,
    statement_limit_rule,
)
from graphql_api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from graphql_api.users import DirectoryUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_cost: int
    max_operations: int
    max_mutations: int
    max_statements: int
    introspection: bool
    known_list_sizes: dict[str, int]
    # Lexical tokens (names, punctuators, values; comments not counted): the parser's and
    # validation's work grow with them, faster than linearly in the worst documents.
    max_tokens: int = 1000
    # Selections repeated within one selection set, in the whole document (limits.py).
    max_repeats: int = 50

    def key(self) -> tuple[Any, ...]:
        return (
            self.max_tokens,
            self.max_repeats,
            self.max_depth,
            self.max_cost,
            self.max_operations,
            self.max_mutations,
            self.max_statements,
            self.introspection,
            tuple(sorted(self.known_list_sizes.items())),
        )


@dataclass
class RequestErrors(Exception):
    """The request cannot run: 400 for graphql-response+json clients."""

    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class Prepared:
    document: DocumentNode
    operation: OperationDefinitionNode
    variables: dict[str, Any]  # as sent: execution coerces them (already checked here)

    @property
    def is_mutation(self) -> bool:
        return self.operation.operation == OperationType.MUTATION


def _request_error(message: str, **extensions: Any) -> RequestErrors:
    return RequestErrors(
        [{"message": message, "extensions": {"code": "BAD_USER_INPUT", **extensions}}]
    )


def _formatted(error: GraphQLError, code: str = "BAD_USER_INPUT") -> dict[str, Any]:
    formatted = error.formatted
    formatted["extensions"] = {"code": code, **(error.extensions or {})}
    return dict(formatted)


@dataclass(frozen=True)
class _Checked:
    """A query text parsed and validated against the schema and the limits that do not
    depend on variable values."""

    document: DocumentNode | None
    errors: list[dict[str, Any]]
    # The depth, cost and statements verdict (statements: of the operation the request
    # names), when no page size is a variable (the cost of `first: $n` depends on the value
    # sent).
    limit_errors: list[dict[str, Any]] | None


class DocumentCache:
    """Parsed and validated documents by query text, least recently used first out.

    Clients send the same few query texts again and again; parsing and validating them is
    most of the cost of a small request. A syntax tree takes about 110 bytes per character
    of its text, so the cache is bounded by the characters it holds (`max_chars`, 128 KiB:
    about 14 MiB of trees at most, whatever clients send) as well as by its entries; a text
    longer than `max_text` is not kept."""

    def __init__(
        self, max_entries: int = 256, max_chars: int = 128 * 1024, max_text: int = 8192
    ) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_text = max_text
        self._entries: OrderedDict[tuple[Any, ...], tuple[int, _Checked]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> _Checked | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: tuple[Any, ...], query: str, checked: _Checked) -> None:
        if len(query) > self.max_text:
            return
        with self._lock:
            replaced = self._entries.pop(key, None)
            if replaced is not None:
                self._chars -= replaced[0]
            self._entries[key] = (len(query), checked)
            self._chars += len(query)
            while len(self._entries) > self.max_entries or self._chars > self.max_chars:
                size, _ = self._entries.popitem(last=False)[1]
                self._chars -= size

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0


documents = DocumentCache()


def _response_keys(
    context: ValidationContext, selection_set: SelectionSetNode, spread: set[str]
) -> set[str]:
    """The response keys (alias, else field name) a selection set resolves, with named and
    inline fragments expanded where they are spread; `__typename` resolves nothing. Every
    fragment here spreads into the same level, so each is expanded once (`spread`): a second
    spread adds nothing (execution merges it), and expanding it again would make a document
    of fragments that each spread the next twice cost exponential time."""
    keys: set[str] = set()
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value != "__typename":
                keys.add((selection.alias or selection.name).value)
        elif isinstance(selection, InlineFragmentNode):
            keys |= _response_keys(context, selection.selection_set, spread)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = context.get_fragment(name)
            if fragment is None or name in spread:
                continue  # unknown (graphql's own rules report it), already expanded, or a cycle
            spread.add(name)
            keys |= _response_keys(context, fragment.selection_set, spread)
    return keys


def mutation_count_rule(max_mutations: int, operation_name: str | None) -> type[ValidationRule]:
    """At most `max_mutations` root fields in the mutation that will run (the one
    `operation_name` selects; the document's other operations do not run): each root mutation
    field is its own transaction, and costs only 1 in the cost rule.

    Fields count by response key, as execution resolves them: aliases each count, fragments
    count where they are spread, the same key selected twice resolves (and counts) once. A
    field under `@skip` or `@include` counts: the limit does not depend on variable values."""

    class MutationCount(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            if node.operation != OperationType.MUTATION:
                return
            if get_operation_ast(self.context.document, operation_name) is not node:
                return
            count = len(_response_keys(self.context, node.selection_set, set()))
            if count > max_mutations:
                self.report_error(
                    GraphQLError(
                        f"The mutation has {count} fields; "
                        f"at most {max_mutations} run in one request.",
                        extensions={
                            "code": "BAD_USER_INPUT",
                            "limit": "mutations",
                            "mutations": count,
                            "maximum": max_mutations,
                        },
                    )
                )

    return MutationCount


def _check(
    schema: GraphQLSchema, query: str, limits: Limits, operation_name: str | None
) -> _Checked:
    # The operation name is part of the key: the statements limit is that operation's.
    key = (id(schema), limits.key(), operation_name, query)
    found = documents.get(key)
    if found is not None:
        return found
    try:
        document = parse(query, max_lexical_tokens=limits.max_tokens)
    except GraphQLError as error:
        checked = _Checked(None, [_parse_error(error, limits.max_tokens)], None)
    else:
        hide = not limits.introspection  # suggestions would reveal the schema
        rules = [*specified_rules]
        if not limits.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        too_much = shape_errors(
            document, max_operations=limits.max_operations, max_repeats=limits.max_repeats
        )
        errors = [
            _formatted(e)
            for e in too_much or validate(schema, document, rules, hide_suggestions=hide)
        ]
        # The depth and the statements are the document's (and the named operation's); its
        # cost, too, unless a page size is a variable.
        fixed_cost = not errors and not page_size_variables(document)
        limit_errors = (
            _limit_errors(schema, document, limits, {}, operation_name) if fixed_cost else None
        )
        checked = _Checked(document, errors, limit_errors)
    documents.put(key, query, checked)
    return checked


def _parse_error(error: GraphQLError, max_tokens: int) -> dict[str, Any]:
    if "tokens. Parsing aborted" not in error.message:
        return _formatted(error)
    return _formatted(
        GraphQLError(
            f"The document has more than {max_tokens} tokens (names, punctuation and values); "
            "send a smaller one: fewer fields, or repeated parts as one fragment or variable.",
            extensions={"limit": "tokens", "maximum": max_tokens},
        )
    )


def _limit_errors(
    schema: GraphQLSchema,
    document: DocumentNode,
    limits: Limits,
    variables: dict[str, Any],
    operation_name: str | None,
) -> list[dict[str, Any]]:
    errors = validate(
        schema,
        document,
        [
            depth_limit_rule(limits.max_depth),
            cost_limit_rule(
                limits.max_cost,
                default_list_size=DEFAULT_PAGE_SIZE,
                max_list_size=MAX_PAGE_SIZE,
                variables=variables,
                known_sizes=limits.known_list_sizes,
            ),
            statement_limit_rule(limits.max_statements, operation_name),
        ],
    )
    return [_formatted(e) for e in errors]


def prepare(
    schema: GraphQLSchema,
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    limits: Limits,
) -> Prepared:
    checked = _check(schema, query, limits, operation_name)
    if checked.errors or checked.document is None:
        raise RequestErrors(copy.deepcopy(checked.errors))  # the cached entry stays intact
    document = checked.document
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        if operation_name:
            raise _request_error(f"Unknown operation named '{operation_name}'.")
        raise _request_error("The document holds several operations: name one in operationName.")
    coerced = get_variable_values(
        schema,
        operation.variable_definitions or (),
        variables or {},
        hide_suggestions=not limits.introspection,
    )
    if isinstance(coerced, list):
        raise RequestErrors([_formatted(e) for e in coerced])
    # Costed with the values execution will use: coerced, operation defaults included.
    limit_errors = checked.limit_errors
    if limit_errors is None:
        limit_errors = _limit_errors(schema, document, limits, coerced.coerced, operation_name)
    if operation.operation == OperationType.MUTATION:
        rule = mutation_count_rule(limits.max_mutations, operation_name)
        too_many = [_formatted(e) for e in validate(schema, document, [rule])]
        limit_errors = [*limit_errors, *too_many]
    if limit_errors:
        raise RequestErrors(copy.deepcopy(limit_errors))
    return Prepared(document, operation, variables or {})


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a request executes (docs/performance.md).

    An execution allocates a tree of dicts and lists (2 150 objects and 275 KB of answer for
    the largest query of the mix) that reference counting frees when the request ends; while
    the tree grows, every collection the allocations trigger walks the part built so far, and
    finds nothing to free. An execution environment runs one request at a time, so the
    pause is bounded by the request's own limits (page sizes, cost); what cycles a request
    leaves are collected by the first collection after it. Whoever paused the collector
    resumes it: a caller that had paused it already finds it paused still. The Lambda
    handler pauses it for the whole request (resumed once the answer's tree is freed, so
    that no collection walks it then); `run` pauses it for callers that do not."""
    paused_here = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused_here:
            gc.enable()


def run(schema: GraphQLSchema, prepared: Prepared, context: Any, request_id: str) -> dict[str, Any]:
    with collector_paused():
        result: ExecutionResult = execute(  # type: ignore[assignment]
            schema,
            prepared.document,
            context_value=context,
            variable_values=prepared.variables,
            operation_name=prepared.operation.name.value if prepared.operation.name else None,
            executor_class=RowExecutor,
        )
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [format_error(error, request_id) for error in result.errors]
        applied = context.applied if isinstance(context, RequestContext) else {}
        if applied:
            _say_applied(body, applied)
    return body


def _say_applied(body: dict[str, Any], applied: dict[str, str]) -> None:
    """A root mutation field is null when it fails, and then it wrote nothing; but a write can
    commit and its answer still fail below it (reading back its country, say), which nulls the
    field too. Its errors then say that it was applied, and what it wrote, so the null never
    hides a committed write from the client."""
    data = body["data"] or {}
    for error in body["errors"]:
        path = error.get("path") or []
        key = path[0] if path else None
        if isinstance(key, str) and key in applied and data.get(key) is None:
            extensions = error["extensions"]
            if extensions.get("code") == "INTERNAL_SERVER_ERROR":
                # "The database is unavailable; retry shortly" would invite a second write.
                error["message"] = (
                    f"This change was applied ({applied[key]}), but its answer could not be "
                    "completed: read the data instead of sending it again. Request id: "
                    f"{extensions.get('requestId')}"
                )
            error["extensions"] = {**extensions, "applied": True, "id": applied[key]}


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    original = error.original_error
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [
            {"line": loc.line, "column": loc.column} for loc in error.locations
        ]
    if error.path:
        formatted["path"] = error.path
    if isinstance(original, ApiError):
        formatted["message"] = original.message
        formatted["extensions"] = original.extensions
        return formatted
    if isinstance(original, CommitOutcomeUnknown):
        logger.error("commit outcome unknown: %s", original)
        formatted["message"] = (
            "The database connection was lost while this change was being committed; it may "
            "have been applied. Send the request again with the same Idempotency-Key to find "
            f"out, or read the data before sending it anew. Request id: {request_id}"
        )
        formatted["extensions"] = {
            "code": "INTERNAL_SERVER_ERROR",
            "requestId": request_id,
            "mayHaveBeenApplied": True,
        }
        return formatted
    elif isinstance(original, DatabaseError) and gave_up(original):
        logger.warning("database gave up: %s", original)
        formatted["message"] = (
            f"The database {gave_up(original)}, so this field changed nothing; send the "
            f"request again in a few seconds. Request id: {request_id}"
        )
        formatted["extensions"] = {
            "code": "INTERNAL_SERVER_ERROR",
            "requestId": request_id,
            "retryable": True,
        }
        return formatted
    elif isinstance(original, DatabaseUnavailable):
        logger.error("database unavailable: %s", original)
        formatted["message"] = (
            f"The database is unavailable; retry shortly. Request id: {request_id}"
        )
    elif isinstance(original, DirectoryUnavailable):
        logger.error("user directory unavailable: %s", original, exc_info=original)
        formatted["message"] = (
            f"The user directory is unavailable; retry shortly. Request id: {request_id}"
        )
    else:
        logger.error(
            "unexpected error in %s",
            ".".join(str(p) for p in error.path or []),
            exc_info=original or error,
        )
        formatted["message"] = f"Internal server error. Request id: {request_id}"
    formatted["extensions"] = {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    return formatted

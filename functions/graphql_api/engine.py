"""Runs one GraphQL request against the schema: parse, validate (with the protection limits),
select the operation, coerce variables, execute, and shape errors for the client.

Request errors (the document or its variables are unusable) come back as `RequestErrors`;
execution errors travel inside the result. Internal details never reach the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.validation import NoSchemaIntrospectionCustomRule

from covenant.db import DatabaseUnavailable
from graphql_api.errors import ApiError
from graphql_api.limits import cost_limit_rule, depth_limit_rule, operation_count_rule
from graphql_api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_cost: int
    max_operations: int
    introspection: bool
    known_list_sizes: dict[str, int]


@dataclass
class RequestErrors(Exception):
    """The request cannot run: 400 for graphql-response+json clients."""

    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class Prepared:
    document: Any
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


def prepare(
    schema: GraphQLSchema,
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    limits: Limits,
) -> Prepared:
    try:
        document = parse(query)
    except GraphQLError as error:
        raise RequestErrors([_formatted(error)]) from None
    hide = not limits.introspection  # suggestions would reveal the schema
    rules = [*specified_rules, operation_count_rule(limits.max_operations)]
    if not limits.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    errors = validate(schema, document, rules, hide_suggestions=hide)
    if errors:
        raise RequestErrors([_formatted(e) for e in errors])
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        if operation_name:
            raise _request_error(f"Unknown operation named '{operation_name}'.")
        raise _request_error("The document holds several operations: name one in operationName.")
    coerced = get_variable_values(
        schema, operation.variable_definitions or (), variables or {}, hide_suggestions=hide
    )
    if isinstance(coerced, list):
        raise RequestErrors([_formatted(e) for e in coerced])
    # Costed with the values execution will use: coerced, operation defaults included.
    limit_errors = validate(
        schema,
        document,
        [
            depth_limit_rule(limits.max_depth),
            cost_limit_rule(
                limits.max_cost,
                default_list_size=DEFAULT_PAGE_SIZE,
                max_list_size=MAX_PAGE_SIZE,
                variables=coerced.coerced,
                known_sizes=limits.known_list_sizes,
            ),
        ],
    )
    if limit_errors:
        raise RequestErrors([_formatted(e) for e in limit_errors])
    return Prepared(document, operation, variables or {})


def run(schema: GraphQLSchema, prepared: Prepared, context: Any, request_id: str) -> dict[str, Any]:
    result: ExecutionResult = execute(  # type: ignore[assignment]
        schema,
        prepared.document,
        context_value=context,
        variable_values=prepared.variables,
        operation_name=prepared.operation.name.value if prepared.operation.name else None,
    )
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [format_error(error, request_id) for error in result.errors]
    return body


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
    if isinstance(original, DatabaseUnavailable):
        logger.error("database unavailable: %s", original)
        formatted["message"] = (
            f"The database is unavailable; retry shortly. Request id: {request_id}"
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

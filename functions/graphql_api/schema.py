"""The executable schema: schema.graphql with its resolvers bound, names mapped to snake_case.

Built once per execution environment, at init. `_make_executable_schema` is ariadne's
`make_executable_schema` (ariadne 1.1.1, pinned) less the parsing and validating of the SDL at
every cold start: the document comes parsed from packaging (`schema_cache`, which validated
it), and ariadne's `load_schema_from_path` no longer parses the file a first time only to
check its syntax. test_schema.py checks that this schema equals ariadne's own; the schema
validation proper (`assert_valid_schema`) still runs here, as in ariadne.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, wraps
from typing import Any

from ariadne.enums_default_values import (
    repair_schema_default_enum_values,
    validate_schema_default_enum_values,
)
from ariadne.executable_schema import SchemaBindables, normalize_bindables
from ariadne.schema_names import SchemaNameConverter, convert_schema_names
from aws_lambda_powertools import Tracer
from graphql import DocumentNode, GraphQLSchema, assert_valid_schema, build_ast_schema

from graphql_api.executor import bind_row_keys
from graphql_api.resolvers import audit as _audit  # noqa: F401 - registers Query.auditLog
from graphql_api.resolvers import stats_history as _stats  # noqa: F401 - Query.statsHistory
from graphql_api.resolvers.connection import country_connection, project_connection
from graphql_api.resolvers.enums import ENUMS
from graphql_api.resolvers.mutation import mutation
from graphql_api.resolvers.query import query
from graphql_api.resolvers.scalars import date_time, money, money_total
from graphql_api.resolvers.subscription import SUBSCRIPTION_TYPES
from graphql_api.resolvers.types import TYPES
from graphql_api.schema_cache import SCHEMA_FILE, parsed_schema

tracer = Tracer()
_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")


def row_key(name: str) -> str:
    """gdpUsd -> gdp_usd, iso2 -> iso2 (ariadne's default would give iso_2)."""
    return _CAPITAL.sub("_", name).lower()


def snake_case(name: str, schema: GraphQLSchema, path: tuple[str, ...]) -> str:
    return row_key(name)


# What is bound to schema.graphql, in this order (as make_executable_schema takes them).
BINDABLES: tuple[SchemaBindables, ...] = (
    query,
    mutation,
    money,
    money_total,
    date_time,
    country_connection,
    project_connection,
    *ENUMS,
    *TYPES,
    *SUBSCRIPTION_TYPES,
)


@cache
def executable_schema() -> GraphQLSchema:
    document = parsed_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    schema = _make_executable_schema(document, *BINDABLES, convert_names_case=snake_case)
    bind_row_keys(schema, row_key)
    _trace_root_fields(schema)
    return schema


def _make_executable_schema(
    document: DocumentNode, *bindables: SchemaBindables, convert_names_case: SchemaNameConverter
) -> GraphQLSchema:
    """ariadne.make_executable_schema(sdl, *bindables, convert_names_case=...) from the SDL's
    document, parsed and validated at packaging (see the module's docstring)."""
    schema = build_ast_schema(document, assume_valid_sdl=True)
    for bindable in normalize_bindables(*bindables):
        bindable.bind_to_schema(schema)
    convert_schema_names(schema, convert_names_case)
    validate_schema_default_enum_values(schema)
    assert_valid_schema(schema)
    repair_schema_default_enum_values(schema)
    return schema


def _trace_root_fields(schema: GraphQLSchema) -> None:
    """An X-Ray subsegment per query and mutation field, around the SQL subsegments of the
    repository. Nested fields are not wrapped: they run once per row,
    and the statements they cause (one per list level) have subsegments of their own."""
    for root in (schema.query_type, schema.mutation_type):
        for field in root.fields.values() if root else ():
            if callable(field.resolve) and hasattr(field.resolve, "__name__"):
                field.resolve = _traced(field.resolve)


def _traced(resolve: Callable[..., Any]) -> Callable[..., Any]:
    # Not tracer.capture_method: that also logs every exception, and a BAD_USER_INPUT or a
    # FORBIDDEN is the client's answer, not an error of the function. The subsegment still
    # records the exception.
    name = f"## {resolve.__module__}.{resolve.__qualname__}"  # as Powertools names them

    @wraps(resolve)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with tracer.provider.in_subsegment(name=name):
            return resolve(*args, **kwargs)

    return traced

"""The executable schema: schema.graphql with its resolvers bound, names mapped to snake_case."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, wraps
from pathlib import Path
from typing import Any

from ariadne import load_schema_from_path, make_executable_schema
from aws_lambda_powertools import Tracer
from graphql import GraphQLSchema

from graphql_api.executor import bind_row_keys
from graphql_api.resolvers import audit as _audit  # noqa: F401 - registers Query.auditLog
from graphql_api.resolvers import stats_history as _stats  # noqa: F401 - Query.statsHistory
from graphql_api.resolvers.connection import country_connection, project_connection
from graphql_api.resolvers.enums import ENUMS
from graphql_api.resolvers.mutation import mutation
from graphql_api.resolvers.query import query
from graphql_api.resolvers.scalars import date_time, money
from graphql_api.resolvers.subscription import SUBSCRIPTION_TYPES
from graphql_api.resolvers.types import TYPES

SCHEMA_FILE = Path(__file__).with_name("schema.graphql")
tracer = Tracer()
_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")


def row_key(name: str) -> str:
    """gdpUsd -> gdp_usd, iso2 -> iso2 (ariadne's default would give iso_2)."""
    return _CAPITAL.sub("_", name).lower()


def snake_case(name: str, schema: GraphQLSchema, path: tuple[str, ...]) -> str:
    return row_key(name)


@cache
def executable_schema() -> GraphQLSchema:
    schema = make_executable_schema(
        load_schema_from_path(str(SCHEMA_FILE)),
        query,
        mutation,
        money,
        date_time,
        country_connection,
        project_connection,
        *ENUMS,
        *TYPES,
        *SUBSCRIPTION_TYPES,
        convert_names_case=snake_case,
    )
    bind_row_keys(schema, row_key)
    _trace_root_fields(schema)
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

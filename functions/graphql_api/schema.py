"""The executable schema: schema.graphql with its resolvers bound, names mapped to snake_case."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from ariadne import load_schema_from_path, make_executable_schema
from graphql import GraphQLSchema

from graphql_api.executor import bind_row_keys
from graphql_api.resolvers.connection import country_connection, project_connection
from graphql_api.resolvers.enums import ENUMS
from graphql_api.resolvers.mutation import mutation
from graphql_api.resolvers.query import query
from graphql_api.resolvers.scalars import date_time, money
from graphql_api.resolvers.types import TYPES

SCHEMA_FILE = Path(__file__).with_name("schema.graphql")
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
        convert_names_case=snake_case,
    )
    bind_row_keys(schema, row_key)
    return schema

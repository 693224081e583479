"""The schema built at init (the SDL's document parsed and validated at packaging) is the
schema ariadne's public `make_executable_schema` builds from the same file and bindables; the
packaged document is used only when it is of this very SDL; an invalid SDL fails packaging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ariadne import load_schema_from_path, make_executable_schema
from graphql import (
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    parse,
    print_ast,
    print_schema,
)

from graphql_api import schema_cache
from graphql_api.schema import BINDABLES, SCHEMA_FILE, _make_executable_schema, snake_case

SDL = SCHEMA_FILE.read_text(encoding="utf-8")


def test_schema_file_is_valid_sdl() -> None:
    assert schema_cache.sdl_errors(SDL) == []


def test_packaging_refuses_an_invalid_sdl(tmp_path: Path) -> None:
    sdl_file = tmp_path / "schema.graphql"
    sdl_file.write_text("type Query { a: Int }\ntype Query { b: Int }", encoding="utf-8")
    with pytest.raises(GraphQLError, match="There can be only one type named 'Query'"):
        schema_cache.write(sdl_file, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_packaged_document_is_used_only_for_its_own_sdl(tmp_path: Path) -> None:
    cache = schema_cache.write(SCHEMA_FILE, tmp_path / "cache")
    assert schema_cache.write(SCHEMA_FILE, cache).read_bytes() == cache.read_bytes()
    document = schema_cache.parsed_schema(SDL, cache)
    assert document.loc is None  # from the cache (parsing now would record locations)
    assert print_ast(document) == print_ast(parse(SDL))
    edited = SDL + "\nscalar Added\n"
    fresh = schema_cache.parsed_schema(edited, cache)
    assert fresh.loc is not None and print_ast(fresh) == print_ast(parse(edited))
    cache.write_bytes(b"not a pickle")
    assert schema_cache.parsed_schema(SDL, cache).loc is not None


def _function(value: Any) -> Any:
    """A function by what it does: a closure ariadne made per field (`resolve_to(name)`) is
    a new object in each schema, equal in code and captured values."""
    closure = getattr(value, "__closure__", None)
    if closure is None:
        return value
    return (value.__code__, tuple(_function(cell.cell_contents) for cell in closure))


def _bound(named: GraphQLNamedType) -> dict[str, Any]:
    """Everything a binding or the name conversion sets on a type: what execution reads."""
    found: dict[str, Any] = {"kind": type(named).__name__}
    if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
        found["is_type_of"] = getattr(named, "is_type_of", None)
        found["resolve_type"] = getattr(named, "resolve_type", None)
        for name, field in named.fields.items():
            found[name] = (
                _function(field.resolve),
                _function(field.subscribe),
                {arg: (a.out_name, a.default_value) for arg, a in field.args.items()},
            )
    elif isinstance(named, GraphQLInputObjectType):
        found["out_type"] = named.out_type
        for name, input_field in named.fields.items():
            found[name] = (input_field.out_name, input_field.default_value)
    elif isinstance(named, GraphQLEnumType):
        found["values"] = {name: value.value for name, value in named.values.items()}
    elif isinstance(named, GraphQLScalarType):
        found["serialize"] = named.serialize
        found["parse_value"] = named.parse_value
        found["parse_literal"] = named.parse_literal
    elif isinstance(named, GraphQLUnionType):
        found["resolve_type"] = named.resolve_type
    return found


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[GraphQLSchema, GraphQLSchema]:
    cache = schema_cache.write(SCHEMA_FILE, tmp_path_factory.mktemp("packaged") / "cache")
    document = schema_cache.parsed_schema(SDL, cache)
    assert document.loc is None  # the packaged document, as init reads it
    ours = _make_executable_schema(document, *BINDABLES, convert_names_case=snake_case)
    ariadnes = make_executable_schema(
        load_schema_from_path(str(SCHEMA_FILE)), *BINDABLES, convert_names_case=snake_case
    )
    return ours, ariadnes


def test_init_schema_prints_as_ariadnes(both: tuple[GraphQLSchema, GraphQLSchema]) -> None:
    ours, ariadnes = both
    assert print_schema(ours) == print_schema(ariadnes)


def test_init_schema_binds_what_ariadne_binds(both: tuple[GraphQLSchema, GraphQLSchema]) -> None:
    ours, ariadnes = both
    assert ours.type_map.keys() == ariadnes.type_map.keys()
    for name, named in ariadnes.type_map.items():
        assert _bound(ours.type_map[name]) == _bound(named), name
    # The comparison sees the bindings: resolvers were bound and names converted.
    project = ariadnes.type_map["Project"]
    assert isinstance(project, GraphQLObjectType)
    assert project.fields["budgetUsd"].resolve is not None

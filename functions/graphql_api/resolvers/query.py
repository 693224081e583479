"""Query: every read of the contract. Runs on the region's reader."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ariadne import QueryType

from covenant.db import Row
from covenant.project_rules import SECTOR_IDS
from graphql_api import repository
from graphql_api.context import Info, context_of, mark_siblings
from graphql_api.errors import BadUserInput
from graphql_api.resolvers.lists import COUNTRY_LIST, PROJECT_LIST, top_level
from graphql_api.resolvers.types import region_by_code, sectors_by_id
from graphql_api.selection import object_fields

query = QueryType()

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ALPHA3 = re.compile(r"^[A-Za-z]{3}$")
_ALPHA2_OR_3 = re.compile(r"^[A-Za-z]{2,3}$")


def check_project_id(value: str, argument: str = "id") -> str:
    if not _UUID.match(value):
        raise BadUserInput(argument, "must be a project id (a UUID)")
    return value.lower()


def _known_region(info: Info, code: str | None, argument: str) -> str | None:
    codes = context_of(info).region_codes
    if code is not None and code not in codes:
        raise BadUserInput(argument, f"must be one of {', '.join(codes)}")
    return code


@query.field("countries")
def resolve_countries(_: Any, info: Info, **args: Any) -> dict[str, Any]:
    return top_level(COUNTRY_LIST, info, args)


@query.field("country")
def resolve_country(_: Any, info: Info, code: str) -> Row | None:
    if not _ALPHA3.match(code):
        raise BadUserInput("code", "must be an ISO 3166 alpha-3 code, e.g. KEN")
    found = repository.countries_by_code(
        context_of(info).session, [code.upper()], object_fields(info)
    )
    return next(iter(found.values()), None)  # one row: its own list level


@query.field("countryByCode")
def resolve_country_by_code(_: Any, info: Info, code: str) -> Row | None:
    if not _ALPHA2_OR_3.match(code):
        raise BadUserInput("code", "must be an ISO 3166 alpha-2 or alpha-3 code, e.g. KE or KEN")
    return repository.country_by_any_code(context_of(info).session, code, object_fields(info))


@query.field("projects")
def resolve_projects(_: Any, info: Info, **args: Any) -> dict[str, Any]:
    return top_level(PROJECT_LIST, info, args)


@query.field("project")
def resolve_project(_: Any, info: Info, id: str) -> Row | None:
    return repository.project_by_id(
        context_of(info).session, check_project_id(id), object_fields(info)
    )


@query.field("regions")
def resolve_regions(_: Any, info: Info) -> list[dict[str, Any]]:
    context = context_of(info)
    return [region_by_code(context, r.code) for r in context.regions]


@query.field("sectors")
def resolve_sectors(_: Any, info: Info) -> list[Row]:
    return list(sectors_by_id(context_of(info)).values())


def _stats_once(info: Info, key: tuple[Any, ...], load: Callable[[], list[Row]]) -> list[Row]:
    """A stats aggregate runs once per request and arguments: aliases asking for the same
    stats again (`a: sectoralStats ... b: sectoralStats ...`) share its rows, each alias with
    copies of its own (resolvers below add fields to them)."""
    rows = context_of(info).batch(("stats", *key), load)
    return [dict(row) for row in rows]


@query.field("regionalStats")
def resolve_regional_stats(_: Any, info: Info, region: str | None = None) -> list[Row]:
    code = _known_region(info, region, "region")
    session = context_of(info).session
    return _stats_once(info, ("regional", code), lambda: repository.regional_stats(session, code))


@query.field("globalStats")
def resolve_global_stats(_: Any, info: Info) -> Row:
    session = context_of(info).session
    return _stats_once(info, ("global",), lambda: [repository.global_stats(session)])[0]


@query.field("sectoralStats")
def resolve_sectoral_stats(_: Any, info: Info, sector: str | None = None) -> list[Row]:
    # Refused before any SQL: an unknown id (NUL and all) is no sector of the fixed six.
    if sector is not None and sector not in SECTOR_IDS:
        raise BadUserInput("sector", "is not a sector id (agriculture, minerals, energy, ...)")
    session = context_of(info).session
    rows = _stats_once(
        info, ("sectoral", sector), lambda: repository.sectoral_stats(session, sector)
    )
    sectors = mark_siblings(
        context_of(info),
        (
            {"id": r["sector_id"], "name": r["sector_name"], "description": r["sector_description"]}
            for r in rows
        ),
    )
    for row, found in zip(rows, sectors, strict=True):
        row["sector"] = found
    return rows

"""Country, Project, Sector, Region and the stats types: their non-trivial fields."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType

from covenant.db import Row
from covenant.regions import Region
from graphql_api import repository
from graphql_api.context import (
    Info,
    RequestContext,
    context_of,
    field_key,
    mark_siblings,
    siblings,
    unique,
)
from graphql_api.executor import RowDerived, RowLookup
from graphql_api.resolvers.lists import COUNTRY_LIST, PROJECT_LIST, Parent, nested
from graphql_api.selection import object_fields

country = ObjectType("Country")
project = ObjectType("Project")
sector = ObjectType("Sector")
region = ObjectType("Region")
regional_stats = ObjectType("RegionalStats")
global_stats = ObjectType("GlobalStats")
sectoral_stats = ObjectType("SectoralStats")

_PROJECTS_OF_COUNTRY = Parent(lambda r: r["code"], "country_code", "bpchar")
_PROJECTS_OF_SECTOR = Parent(lambda r: r["id"], "sector_id", "text")
_COUNTRIES_OF_REGION = Parent(lambda r: r["code"], "region", "text")
STATUSES = ("planning", "active", "completed", "cancelled")


def region_row(found: Region) -> dict[str, Any]:
    return {"code": found.code, "aws_region": found.aws_region, "primary": found.primary}


def regions_by_code(context: RequestContext) -> dict[str, dict[str, Any]]:
    """Regions come from the region table (configuration): no SQL."""
    return context.batch(
        ("regions",),
        lambda: {
            r["code"]: r for r in mark_siblings(context, (region_row(r) for r in context.regions))
        },
    )


def region_by_code(context: RequestContext, code: str) -> dict[str, Any]:
    return regions_by_code(context)[code]


def sectors_by_id(context: RequestContext) -> dict[str, Row]:
    return context.batch(
        ("sectors",),
        lambda: {
            r["id"]: r for r in mark_siblings(context, repository.all_sectors(context.session))
        },
    )


def by_status(row: Row) -> list[dict[str, Any]]:
    return [{"status": status, "count": int(row[status])} for status in STATUSES]


_REGION_OF = RowLookup("region", regions_by_code)
country.set_field("region", _REGION_OF)
project.set_field("region", _REGION_OF)
regional_stats.set_field("region", _REGION_OF)
project.set_field("sector", RowLookup("sector_id", sectors_by_id))


@country.field("projects")
def resolve_country_projects(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(PROJECT_LIST, _PROJECTS_OF_COUNTRY, row, info, args)


@project.field("country")
def resolve_project_country(row: Row, info: Info) -> Row:
    joined: Row | None = row.get("_country")  # read with its page (repository.Join)
    if joined is not None:
        return joined
    context = context_of(info)

    def load(parents: list[Row]) -> dict[str, Row]:
        codes = unique(r["country_code"] for r in parents)
        found = repository.countries_by_code(context.session, codes, object_fields(info))
        mark_siblings(context, found.values())
        return found

    batch = field_key(info)
    countries = context.batch(("country-of", *batch), lambda: load(siblings(context, row)))
    if row["country_code"] not in countries:  # a parent outside the level that loaded first
        countries = context.batch(("country-of", row["country_code"], *batch), lambda: load([row]))
    return countries[row["country_code"]]


@sector.field("projects")
def resolve_sector_projects(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(PROJECT_LIST, _PROJECTS_OF_SECTOR, row, info, args)


@region.field("countries")
def resolve_region_countries(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(COUNTRY_LIST, _COUNTRIES_OF_REGION, row, info, args)


for stats_type in (regional_stats, global_stats, sectoral_stats):
    stats_type.set_field("projectsByStatus", RowDerived(lambda row, context: by_status(row)))

TYPES = [country, project, sector, region, regional_stats, global_stats, sectoral_stats]

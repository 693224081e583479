"""Country, Project, Sector, Region and the stats types: their non-trivial fields."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType

from covenant.db import Row
from covenant.regions import Region
from graphql_api import repository
from graphql_api.context import Info, context_of, field_key, mark_siblings, siblings, unique
from graphql_api.resolvers.lists import COUNTRY_LIST, PROJECT_LIST, Parent, nested

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


def region_by_code(info: Info, code: str) -> dict[str, Any]:
    """Regions come from the region table (configuration): no SQL."""
    context = context_of(info)
    rows = context.batch(
        ("regions",), lambda: mark_siblings(region_row(r) for r in context.regions)
    )
    return next(r for r in rows if r["code"] == code)


def sectors_by_id(info: Info) -> dict[str, Row]:
    context = context_of(info)
    return context.batch(
        ("sectors",),
        lambda: {r["id"]: r for r in mark_siblings(repository.all_sectors(context.session))},
    )


def by_status(row: Row) -> list[dict[str, Any]]:
    return [{"status": status, "count": int(row[status])} for status in STATUSES]


@country.field("region")
def resolve_country_region(row: Row, info: Info) -> dict[str, Any]:
    return region_by_code(info, row["region"])


@country.field("projects")
def resolve_country_projects(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(PROJECT_LIST, _PROJECTS_OF_COUNTRY, row, info, args)


@project.field("country")
def resolve_project_country(row: Row, info: Info) -> Row:
    context = context_of(info)
    codes = unique(r["country_code"] for r in siblings(row))
    if row["country_code"] not in codes:
        codes = [row["country_code"]]

    def load() -> dict[str, Row]:
        found = repository.countries_by_code(context.session, codes)
        mark_siblings(found.values())
        return found

    return context.batch(("country-of", *field_key(info)), load)[row["country_code"]]


@project.field("sector")
def resolve_project_sector(row: Row, info: Info) -> Row:
    return sectors_by_id(info)[row["sector_id"]]


@project.field("region")
def resolve_project_region(row: Row, info: Info) -> dict[str, Any]:
    return region_by_code(info, row["region"])


@sector.field("projects")
def resolve_sector_projects(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(PROJECT_LIST, _PROJECTS_OF_SECTOR, row, info, args)


@region.field("countries")
def resolve_region_countries(row: Row, info: Info, **args: Any) -> dict[str, Any]:
    return nested(COUNTRY_LIST, _COUNTRIES_OF_REGION, row, info, args)


@regional_stats.field("region")
def resolve_stats_region(row: Row, info: Info) -> dict[str, Any]:
    return region_by_code(info, row["region"])


for stats_type in (regional_stats, global_stats, sectoral_stats):
    stats_type.set_field("projectsByStatus", lambda row, info: by_status(row))

TYPES = [country, project, sector, region, regional_stats, global_stats, sectoral_stats]

"""GraphQL enum values and what they are in the database."""

from __future__ import annotations

from ariadne import EnumType

covenant_status = EnumType(
    "CovenantStatus", {"PENDING": "pending", "ACTIVE": "active", "SUSPENDED": "suspended"}
)
project_status = EnumType(
    "ProjectStatus",
    {
        "PLANNING": "planning",
        "ACTIVE": "active",
        "COMPLETED": "completed",
        "CANCELLED": "cancelled",
    },
)
continent = EnumType(
    "Continent",
    {
        "AFRICA": "Africa",
        "ASIA": "Asia",
        "EUROPE": "Europe",
        "NORTH_AMERICA": "North America",
        "SOUTH_AMERICA": "South America",
        "OCEANIA": "Oceania",
    },
)
role = EnumType("Role", {"ADMIN": "admin", "EDITOR": "editor", "VIEWER": "viewer"})
sort_direction = EnumType("SortDirection", {"ASC": "asc", "DESC": "desc"})
country_order_field = EnumType(
    "CountryOrderField", {"NAME": "name", "CODE": "code", "GDP": "gdp_usd"}
)
project_order_field = EnumType(
    "ProjectOrderField",
    {
        "NAME": "name",
        "BUDGET": "budget_usd",
        "IMPACT": "impact_score",
        "PROGRESS": "progress",
        "CREATED_AT": "created_at",
        "UPDATED_AT": "updated_at",
    },
)

ENUMS = [
    covenant_status,
    project_status,
    continent,
    role,
    sort_direction,
    country_order_field,
    project_order_field,
]

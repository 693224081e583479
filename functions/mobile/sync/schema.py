"""The synced tables as the app's WatermelonDB holds them: raw records with snake_case
columns, string ids, numbers and strings only, timestamps in epoch milliseconds.

This is the one description of the sync schema: the pull SQL is built from it, and
README.md shows the `appSchema` it renders (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass

# The schema version of the sync contract; the app's appSchema version when it was built.
SYNC_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # WatermelonDB column type: "string" or "number"
    sql: str  # expression over the table's alias
    optional: bool = False
    indexed: bool = False


def _ms(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000)::bigint"


@dataclass(frozen=True)
class SyncTable:
    name: str
    alias: str
    id_sql: str  # the record's `id`: the primary key as text
    columns: tuple[Column, ...]

    def record_sql(self) -> str:
        """json_build_object(...) of one raw record."""
        pairs = [f"'id', {self.id_sql}"] + [f"'{c.name}', {c.sql}" for c in self.columns]
        return "json_build_object(" + ", ".join(pairs) + ")"


COUNTRIES = SyncTable(
    name="countries",
    alias="c",
    id_sql="c.code::text",
    columns=(
        Column("iso2", "string", "c.iso2::text"),
        Column("name", "string", "c.name"),
        Column("continent", "string", "c.continent", indexed=True),
        Column("region", "string", "c.region", indexed=True),
        Column("gdp_usd", "number", "c.gdp_usd"),
        Column("contribution_usd", "number", "c.contribution_usd"),
        Column("covenant_status", "string", "c.covenant_status", indexed=True),
        Column("joined_at", "number", _ms("c.joined_at"), optional=True),
        Column("version", "number", "c.version"),
        Column("created_at", "number", _ms("c.created_at")),
        Column("updated_at", "number", _ms("c.updated_at")),
    ),
)

PROJECTS = SyncTable(
    name="projects",
    alias="p",
    id_sql="p.id::text",
    columns=(
        Column("name", "string", "p.name"),
        Column("description", "string", "p.description"),
        Column("sector_id", "string", "p.sector_id", indexed=True),
        Column("country_code", "string", "p.country_code::text", indexed=True),
        Column("region", "string", "p.region", indexed=True),
        Column("status", "string", "p.status", indexed=True),
        Column("budget_usd", "number", "p.budget_usd"),
        Column("impact_score", "number", "p.impact_score::float8"),
        Column("progress", "number", "p.progress"),
        Column("version", "number", "p.version"),
        Column("created_at", "number", _ms("p.created_at")),
        Column("updated_at", "number", _ms("p.updated_at")),
    ),
)

SECTORS = SyncTable(
    name="sectors",
    alias="s",
    id_sql="s.id",
    columns=(
        Column("name", "string", "s.name"),
        Column("description", "string", "s.description"),
        Column("version", "number", "s.version"),
        Column("created_at", "number", _ms("s.created_at")),
        Column("updated_at", "number", _ms("s.updated_at")),
    ),
)

# In the order of the `changes` object.
TABLES: tuple[SyncTable, ...] = (COUNTRIES, PROJECTS, SECTORS)
TABLE_NAMES = tuple(table.name for table in TABLES)
# Tables a client may push changes to; the others are read-only through sync.
PUSHABLE = ("projects",)


def watermelon_schema_js() -> str:
    """The `appSchema` the app must declare (shown in README.md)."""
    lines = [
        "import { appSchema, tableSchema } from '@nozbe/watermelondb'",
        "",
        "export default appSchema({",
        f"  version: {SYNC_SCHEMA_VERSION},",
        "  tables: [",
    ]
    for table in TABLES:
        lines += ["    tableSchema({", f"      name: '{table.name}',", "      columns: ["]
        for column in table.columns:
            extras = "".join(
                [
                    ", isOptional: true" if column.optional else "",
                    ", isIndexed: true" if column.indexed else "",
                ]
            )
            lines.append(f"        {{ name: '{column.name}', type: '{column.type}'{extras} }},")
        lines += ["      ],", "    }),"]
    lines += ["  ],", "})"]
    return "\n".join(lines)

"""How many database connections the functions can open, against what each instance allows.

Each Lambda execution environment holds at most one connection per database URL it has
(covenant.db caches one per thread, and a handler runs one thread), so a function's reserved
concurrency bounds its connections to each instance behind that URL. The bound is checked at
synth, per instance and per region role, against Aurora PostgreSQL's default `max_connections`
(LEAST({DBInstanceClassMemory/9531392}, 5000)) less the connections kept for RDS, superusers,
operators, the migrator and the rotation function (`reservedConnections`):

- the primary's writer: the primary's GraphQL, mobile, bridge and analytics (the writes of all six
  regions arrive there: a secondary hands each write request to the primary's function);
- each reader of the primary: the primary's GraphQL and mobile (their reader URL);
- each reader of a secondary: that secondary's GraphQL and mobile (reader URL only).

A reader endpoint spreads connections over the readers but not evenly, so every reader is held
to the whole bound. docs/deploy.md shows the arithmetic for the cdk.json values.
"""

from __future__ import annotations

from dataclasses import dataclass

from stacks.settings import AppSettings, SettingsError

# The functions behind the API that connect to the database (writer in the primary, reader
# everywhere), and the primary-only function that connects to the writer.
API_DATABASE_FUNCTIONS = ("graphql", "mobile")
WRITER_ONLY_FUNCTIONS = ("bridge", "analytics", "fanout")
# Behind the API but reading only (the WebSocket handler: sign-out checks, queries).
READER_ONLY_FUNCTIONS = ("realtime",)


@dataclass(frozen=True)
class InstanceBudget:
    instance: str
    limit: int
    users: dict[str, int]

    @property
    def used(self) -> int:
        return sum(self.users.values())


def budgets(settings: AppSettings) -> list[InstanceBudget]:
    """Every instance role's connection budget; SettingsError if a function is unbounded."""
    limit = settings.database.function_connections

    def reserved(name: str, primary: bool) -> int:
        deploy = settings.deploy_settings(name)
        value = (
            deploy.reserved_concurrency_primary
            if primary
            else deploy.reserved_concurrency_secondary
        )
        if value is None:
            role = "primary" if primary else "secondary"
            raise SettingsError(
                f"covenant:deploy.{name}.reservedConcurrency has no {role} value: its "
                "database connections would be unbounded (docs/deploy.md, Connections)"
            )
        return value

    found = [
        InstanceBudget(
            "primary writer",
            limit,
            {n: reserved(n, True) for n in (*API_DATABASE_FUNCTIONS, *WRITER_ONLY_FUNCTIONS)},
        )
    ]
    if settings.database.primary_readers:
        found.append(
            InstanceBudget(
                "primary reader",
                limit,
                {n: reserved(n, True) for n in (*API_DATABASE_FUNCTIONS, *READER_ONLY_FUNCTIONS)},
            )
        )
    if settings.secondaries:
        found.append(
            InstanceBudget(
                "secondary reader",
                limit,
                {n: reserved(n, False) for n in (*API_DATABASE_FUNCTIONS, *READER_ONLY_FUNCTIONS)},
            )
        )
    return found


def check_connection_budget(settings: AppSettings) -> None:
    """Stops the synth when the reserved concurrencies could exceed an instance's connections."""
    for budget in budgets(settings):
        if budget.used > budget.limit:
            parts = " + ".join(f"{name} {count}" for name, count in budget.users.items())
            raise SettingsError(
                f"{budget.instance}: {parts} = {budget.used} connections, more than the "
                f"{budget.limit} that db.{settings.database.instance_class} leaves the "
                f"functions (max_connections {settings.database.max_connections} less "
                f"reservedConnections {settings.database.reserved_connections})"
            )

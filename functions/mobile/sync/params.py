"""The query parameters of GET/POST /sync, as WatermelonDB's documented pullChanges and
pushChanges send them: `last_pulled_at=${lastPulledAt}` is the text "null" on a first sync,
`migration=${encodeURIComponent(JSON.stringify(migration))}` is "null" when up to date."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mobile.http import BadRequest
from mobile.sync.schema import TABLE_NAMES

_ABSENT = ("", "null", "undefined")
_DIGITS = re.compile(r"^[0-9]{1,18}$")


@dataclass(frozen=True)
class Migration:
    """Tables and columns the app added since its last sync (whitelisted to ours)."""

    from_version: int
    tables: frozenset[str] = field(default_factory=frozenset)
    columns: frozenset[str] = field(default_factory=frozenset)  # tables with added columns


@dataclass(frozen=True)
class PullParams:
    last_pulled_at: int  # 0: first pull
    schema_version: int | None
    migration: Migration | None


def cursor(raw: str | None, name: str = "last_pulled_at", *, required: bool = False) -> int:
    """A cursor this API handed out; absent, "null", "undefined" or 0 mean none yet. A push
    must send one (WatermelonDB always pulls first): without it, every update would be
    reported as a conflict."""
    if raw is None or raw.strip() in _ABSENT:
        if required:
            raise BadRequest(
                f"{name} is required: send the `timestamp` of your last pull "
                "(WatermelonDB's lastPulledAt).",
                field=name,
            )
        return 0
    if not _DIGITS.match(raw.strip()):
        raise BadRequest(
            f"{name} must be the `timestamp` of an earlier pull (a whole number) or null.",
            field=name,
        )
    return int(raw.strip())


def _schema_version(raw: str | None) -> int | None:
    if raw is None or raw.strip() in _ABSENT:
        return None
    if not _DIGITS.match(raw.strip()) or int(raw) < 1:
        raise BadRequest(
            "schema_version must be a whole number, 1 or more.", field="schema_version"
        )
    return int(raw)


def _migration(raw: str | None) -> Migration | None:
    if raw is None or raw.strip() in _ABSENT:
        return None
    try:
        value: Any = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        raise BadRequest(
            "migration must be JSON: null or {from, tables, columns}.", field="migration"
        ) from None
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or isinstance(value.get("from"), bool)
        or not isinstance(value.get("from"), int)
    ):
        raise BadRequest(
            "migration must be null or an object with a whole-number `from`.", field="migration"
        )
    tables = value.get("tables") or []
    columns = value.get("columns") or []
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        raise BadRequest(
            "migration.tables must be a list of table names.", field="migration.tables"
        )
    if not isinstance(columns, list) or not all(
        isinstance(c, dict) and isinstance(c.get("table"), str) for c in columns
    ):
        raise BadRequest(
            "migration.columns must be a list of {table, columns}.", field="migration.columns"
        )
    return Migration(
        from_version=int(value["from"]),
        # Only our tables count; anything else is ignored, never echoed back.
        tables=frozenset(t for t in tables if t in TABLE_NAMES),
        columns=frozenset(c["table"] for c in columns if c["table"] in TABLE_NAMES),
    )


def pull_params(query: Mapping[str, str] | None) -> PullParams:
    query = query or {}
    return PullParams(
        last_pulled_at=cursor(query.get("last_pulled_at")),
        schema_version=_schema_version(query.get("schema_version")),
        migration=_migration(query.get("migration")),
    )

"""The `changes` object a client pushes, checked before anything touches the database.

Shape (WatermelonDB): {table: {created: [raw record], updated: [raw record], deleted: [id]}}.
Only `projects` may carry changes; `countries` and `sectors` are read-only through sync.
A raw record is validated like a GraphQL mutation's input: every client-writable column by
the rules of covenant.project_rules. WatermelonDB's `_status` and `_changed`, and the columns
the server owns (region, version, timestamps), are ignored, as are columns this API does not
know (an app newer than the server may have added some). Errors name the table, the record
and the field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from covenant.project_rules import (
    DEFAULTS,
    PROJECT_FIELDS,
    REQUIRED_ON_CREATE,
    RuleViolation,
    check_project,
    clean_project_field,
)
from mobile.http import BadRequest, PayloadTooLarge
from mobile.sync.schema import PUSHABLE, TABLE_NAMES

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_LISTS = ("created", "updated", "deleted")
# WatermelonDB stores an unset text column as "" and an unset optional number as null: for
# these columns, whose rules refuse both, an empty value means "not set", i.e. the default on
# a create and unchanged on an update (`description` takes "" as a value of its own).
_EMPTY_MEANS_UNSET = frozenset({"status", "impact_score", "progress"})


@dataclass(frozen=True)
class PushedRecord:
    id: str  # canonical lower-case UUID
    values: dict[str, Any]  # cleaned client-writable columns present in the record
    action: str  # "created" or "updated" (as the client saw it)


@dataclass(frozen=True)
class PushedChanges:
    created: list[PushedRecord] = field(default_factory=list)
    updated: list[PushedRecord] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.created] + [r.id for r in self.updated] + self.deleted

    def __len__(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


def record_error(table: str, record: str | None, field: str, rule: str) -> BadRequest:
    where = f"{table} {record}" if record else table
    return BadRequest(
        f"{where}: {field} {rule}.", table=table, record=record, field=field, rule=rule
    )


def _project_id(value: Any, table: str, where: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        shown = value if isinstance(value, str) and len(value) <= 64 else None
        raise record_error(
            table, shown, "id", f"must be a UUID ({where}); give the app a UUID id generator"
        )
    # WatermelonDB ids are case-sensitive: a stored lower-case copy would come back to the
    # device as another record.
    if value != str(uuid.UUID(value)):
        raise record_error(
            table, value, "id", f"must be a lower-case UUID ({where}), as the server stores it"
        )
    return value


def _record(raw: Any, table: str, action: str, index: int) -> PushedRecord:
    if not isinstance(raw, Mapping):
        raise record_error(table, None, f"{action}[{index}]", "must be a record object")
    record_id = _project_id(raw.get("id"), table, f"{action}[{index}]")
    values: dict[str, Any] = {}
    for name in PROJECT_FIELDS:
        if name in raw and not (name in _EMPTY_MEANS_UNSET and raw[name] in ("", None)):
            try:
                values[name] = clean_project_field(name, raw[name])
            except RuleViolation as violation:
                raise record_error(table, record_id, violation.field, violation.rule) from None
    # The device keeps what it pushed: a code stored otherwise than sent (`ken` as KEN) would
    # leave its copy unable to match the country. Text is only trimmed, which matches alike.
    if "country_code" in values and values["country_code"] != raw["country_code"]:
        raise record_error(
            table, record_id, "country_code", f"must be sent as stored: {values['country_code']}"
        )
    # Only what was sent: a `created` record that exists is merged like an update, so defaults
    # (filled in for a real insert, see push._plan) must not overwrite its columns.
    return PushedRecord(record_id, values, action)


def complete(values: Mapping[str, Any], table: str, record_id: str) -> dict[str, Any]:
    """A new record's values: the required columns present, the others defaulted."""
    for name in REQUIRED_ON_CREATE:
        if name not in values:
            raise record_error(table, record_id, name, "is required for a new record")
    full = {**DEFAULTS, **values}
    check(full, table, record_id)
    return full


def check(values: Mapping[str, Any], table: str, record_id: str) -> None:
    try:
        check_project(values)
    except RuleViolation as violation:
        raise record_error(table, record_id, violation.field, violation.rule) from None


def parse_changes(body: Mapping[str, Any], *, max_records: int) -> PushedChanges:
    for table in body:
        if table not in TABLE_NAMES:
            raise record_error(
                str(table)[:64], None, "table", f"is not synced (tables: {', '.join(TABLE_NAMES)})"
            )
    for table in TABLE_NAMES:
        entry = body.get(table)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise record_error(
                table, None, "changes", "must be an object {created, updated, deleted}"
            )
        for name in _LISTS:
            if not isinstance(entry.get(name, []), list):
                raise record_error(table, None, name, "must be a list")
        if table not in PUSHABLE and any(entry.get(name) for name in _LISTS):
            raise record_error(
                table, None, "changes", "are read-only through sync; only projects can be pushed"
            )
    entry = body.get("projects") or {}
    count = sum(len(entry.get(name) or []) for name in _LISTS)
    if count > max_records:
        raise PayloadTooLarge(
            f"A push may carry at most {max_records} records; this one has {count}. "
            "Push in smaller batches.",
            maxRecords=max_records,
        )
    changes = PushedChanges(
        created=[
            _record(r, "projects", "created", i) for i, r in enumerate(entry.get("created") or [])
        ],
        updated=[
            _record(r, "projects", "updated", i) for i, r in enumerate(entry.get("updated") or [])
        ],
        deleted=[
            _project_id(r, "projects", f"deleted[{i}]")
            for i, r in enumerate(entry.get("deleted") or [])
        ],
    )
    seen: set[str] = set()
    for record_id in changes.ids:
        if record_id in seen:
            raise record_error("projects", record_id, "id", "appears more than once in this push")
        seen.add(record_id)
    return changes

"""Mutation: each one a unit of work on the writer, with its events in the same transaction.
The result is read back from the writer, so the client sees its own write."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType
from pg8000.exceptions import DatabaseError

from covenant.db import Row, sqlstate
from covenant.uow import UnitOfWork
from graphql_api.context import Info, RequestContext, context_of, mark_siblings
from graphql_api.errors import BadUserInput, Conflict, NotFound
from graphql_api.events import emit
from graphql_api.repository import COUNTRIES, PROJECTS
from graphql_api.resolvers.query import check_project_id
from graphql_api.validation import (
    COUNTRY_FIELDS,
    PROJECT_FIELDS,
    check_expected_version,
    country_changes,
    country_code,
    path,
    project_changes,
)

mutation = MutationType()

_UNIQUE_FIELDS = {
    "countries_pkey": "code",
    "countries_iso2_key": "iso2",
    "countries_name_unique": "name",
}
_CHECK_RULES = {
    "projects_completed_in_full": ("progress", "must be 100 for a completed project"),
    "countries_joined_when_member": ("joinedAt", "is required unless the status is PENDING"),
}


@contextmanager
def database_rules() -> Iterator[None]:
    """Constraint violations the database caught, as the client's error."""
    try:
        yield
    except DatabaseError as exc:
        details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        constraint = str(details.get("n", ""))
        state = sqlstate(exc)
        if state == "23505" and constraint in _UNIQUE_FIELDS:
            field = _UNIQUE_FIELDS[constraint]
            raise Conflict(
                f"input.{field}: another country already has this {field}", field=f"input.{field}"
            ) from exc
        if state == "23514" and constraint in _CHECK_RULES:
            field, rule = _CHECK_RULES[constraint]
            raise BadUserInput(f"input.{field}", rule) from exc
        raise


def _changed(current: Row, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    changes = {}
    for field, value in values.items():
        old = current[field]
        if isinstance(old, float) or field == "impact_score":
            same = old is not None and round(float(old), 2) == round(float(value), 2)
        else:
            same = old == value
        if not same:
            changes[field] = {"from": old, "to": value}
    return changes


def _check_version(kind: str, key: str, current: Row, expected: int | None) -> None:
    if expected is not None and current["version"] != expected:
        raise Conflict(
            f"{kind} {key} is at version {current['version']}, not {expected}: it changed since "
            "you read it. Read it again and retry.",
            currentVersion=current["version"],
        )


def _require_country(uow: UnitOfWork, code: str) -> None:
    if uow.scalar("SELECT 1 FROM countries WHERE code = CAST(:c AS bpchar)", c=code) is None:
        raise BadUserInput(path("country_code"), f"no country has the code {code}")


def _assignments(values: dict[str, Any], casts: dict[str, str]) -> str:
    return ", ".join(f"{field} = CAST(:{field} AS {casts[field]})" for field in values)


_PROJECT_CASTS = {
    "name": "text",
    "description": "text",
    "sector_id": "text",
    "country_code": "bpchar",
    "status": "text",
    "budget_usd": "bigint",
    "impact_score": "numeric",
    "progress": "smallint",
}
_COUNTRY_CASTS = {
    "iso2": "bpchar",
    "name": "text",
    "continent": "text",
    "region": "text",
    "gdp_usd": "bigint",
    "covenant_status": "text",
    "joined_at": "timestamptz",
}


def _writing(info: Info) -> RequestContext:
    context = context_of(info)
    context.writes = True
    return context


@mutation.field("createProject")
def resolve_create_project(_: Any, info: Info, input: dict[str, Any]) -> Row:
    context = _writing(info)
    context.actor.require("editor", "admin")
    values = project_changes(input)
    with database_rules(), UnitOfWork() as uow:
        _require_country(uow, values["country_code"])
        columns = [f for f in PROJECT_FIELDS if f in values]
        row = uow.one(
            f"INSERT INTO projects AS p (id, {', '.join(columns)}) VALUES (gen_random_uuid(), "
            + ", ".join(f"CAST(:{c} AS {_PROJECT_CASTS[c]})" for c in columns)
            + f") RETURNING {PROJECTS.columns}",
            **{c: values[c] for c in columns},
        )
        assert row is not None
        emit(uow, context, "projects", "created", row)
    return mark_siblings([row])[0]


@mutation.field("updateProject")
def resolve_update_project(
    _: Any,
    info: Info,
    id: str,
    input: dict[str, Any],
    expected_version: int | None = None,
) -> Row:
    context = _writing(info)
    context.actor.require("editor", "admin")
    project_id = check_project_id(id)
    values = project_changes(input)
    if not values:
        raise BadUserInput("input", "give at least one field to change")
    expected = check_expected_version(expected_version)
    with database_rules(), UnitOfWork() as uow:
        current = uow.one(
            f"SELECT {PROJECTS.columns} FROM projects p WHERE p.id = CAST(:id AS uuid) FOR UPDATE",
            id=project_id,
        )
        if current is None:
            raise NotFound(f"No project has the id {project_id}.")
        _check_version("Project", project_id, current, expected)
        changes = _changed(current, values)
        if not changes:
            return mark_siblings([current])[0]
        if "country_code" in changes:
            _require_country(uow, values["country_code"])
        changed = {f: values[f] for f in changes}
        row = uow.one(
            f"UPDATE projects AS p SET {_assignments(changed, _PROJECT_CASTS)} "
            f"WHERE p.id = CAST(:id AS uuid) RETURNING {PROJECTS.columns}",
            **changed,
            id=project_id,
        )
        assert row is not None
        emit(uow, context, "projects", "updated", row, changes)
    return mark_siblings([row])[0]


@mutation.field("deleteProject")
def resolve_delete_project(
    _: Any,
    info: Info,
    id: str,
    expected_version: int | None = None,
) -> dict[str, str]:
    context = _writing(info)
    context.actor.require("editor", "admin")
    project_id = check_project_id(id)
    expected = check_expected_version(expected_version)
    with UnitOfWork() as uow:
        current = uow.one(
            f"SELECT {PROJECTS.columns} FROM projects p WHERE p.id = CAST(:id AS uuid) FOR UPDATE",
            id=project_id,
        )
        if current is None:
            raise NotFound(f"No project has the id {project_id}.")
        _check_version("Project", project_id, current, expected)
        uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project_id)
        emit(uow, context, "projects", "deleted", current)
    return {"id": project_id}


@mutation.field("createCountry")
def resolve_create_country(_: Any, info: Info, input: dict[str, Any]) -> Row:
    context = _writing(info)
    context.actor.require("admin")
    code = country_code(input["code"], "input.code")
    values = country_changes(input, context.region_codes)
    if values.get("covenant_status", "pending") != "pending":
        values.setdefault("joined_at", datetime.now(UTC))
    with database_rules(), UnitOfWork() as uow:
        columns = [f for f in COUNTRY_FIELDS if f in values]
        row = uow.one(
            f"INSERT INTO countries AS c (code, {', '.join(columns)}) "
            "VALUES (CAST(:code AS bpchar), "
            + ", ".join(f"CAST(:{c} AS {_COUNTRY_CASTS[c]})" for c in columns)
            + f") RETURNING {COUNTRIES.columns}",
            code=code,
            **{c: values[c] for c in columns},
        )
        assert row is not None
        emit(uow, context, "countries", "created", row)
    return mark_siblings([row])[0]


@mutation.field("updateCountry")
def resolve_update_country(
    _: Any,
    info: Info,
    code: str,
    input: dict[str, Any],
    expected_version: int | None = None,
) -> Row:
    context = _writing(info)
    context.actor.require("admin")
    key = country_code(code)
    values = country_changes(input, context.region_codes)
    if not values:
        raise BadUserInput("input", "give at least one field to change")
    expected = check_expected_version(expected_version)
    with database_rules(), UnitOfWork() as uow:
        current = uow.one(
            f"SELECT {COUNTRIES.columns} FROM countries c "
            "WHERE c.code = CAST(:code AS bpchar) FOR UPDATE",
            code=key,
        )
        if current is None:
            raise NotFound(f"No country has the code {key}.")
        _check_version("Country", key, current, expected)
        if (
            values.get("covenant_status", "pending") != "pending"
            and current["joined_at"] is None
            and "joined_at" not in values
        ):
            values["joined_at"] = datetime.now(UTC)
        changes = _changed(current, values)
        if not changes:
            return mark_siblings([current])[0]
        changed = {f: values[f] for f in changes}
        row = uow.one(
            f"UPDATE countries AS c SET {_assignments(changed, _COUNTRY_CASTS)} "
            f"WHERE c.code = CAST(:code AS bpchar) RETURNING {COUNTRIES.columns}",
            **changed,
            code=key,
        )
        assert row is not None
        emit(uow, context, "countries", "updated", row, changes)
    return mark_siblings([row])[0]

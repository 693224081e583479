"""Mutation: each one a unit of work on the writer, with its events in the same transaction.
The result is read back from the writer, so the client sees its own write."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType
from pg8000.exceptions import DatabaseError

from covenant import db, idempotency
from covenant.db import Row, sqlstate
from covenant.domain_events import add_change_events, wake_bridge_after_commit
from covenant.project_rules import PROJECT_FIELDS, PROJECT_SQL_TYPES
from covenant.revocation import revoke_tokens, wait_out_second
from covenant.uow import UnitOfWork
from graphql_api import repository, users
from graphql_api.context import Info, RequestContext, context_of
from graphql_api.errors import BadUserInput, Conflict, NotFound
from graphql_api.events import change, emit, emit_role_change
from graphql_api.repository import COUNTRIES, PROJECTS, Table
from graphql_api.resolvers.query import check_project_id
from graphql_api.validation import (
    COUNTRY_FIELDS,
    check_expected_version,
    country_changes,
    country_code,
    path,
    project_changes,
)

logger = logging.getLogger(__name__)

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
def database_rules(values: dict[str, Any] | None = None) -> Iterator[None]:
    """Constraint violations the database caught, as the client's error (`values`: the
    validated input, to name what was wrong)."""
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
        if state == "23503" and constraint == "projects_country_region":
            # Raised by the trigger that derives the region: checked in the same statement.
            code = (values or {}).get("country_code", "")
            raise BadUserInput(path("country_code"), f"no country has the code {code}") from exc
        raise


def _changed(old: Row, new: Row) -> dict[str, dict[str, Any]]:
    """The columns whose value the write changed, from -> to."""
    return {
        column: {"from": value, "to": new[column]}
        for column, value in old.items()
        if value != new[column]
    }


def _missing_or_stale(
    uow: UnitOfWork, table: Table, kind: str, key: str, expected: int | None
) -> Exception:
    """Why a write of one row found nothing: NOT_FOUND, or CONFLICT naming the version."""
    current = repository.current_version(uow, table, key)
    if current is None:
        noun = "code" if table is COUNTRIES else "id"
        return NotFound(f"No {kind.lower()} has the {noun} {key}.")
    return Conflict(
        f"{kind} {key} is at version {current}, not {expected}: it changed since you read it. "
        "Read it again and retry.",
        currentVersion=current,
    )


def _assignments(values: dict[str, Any], casts: Mapping[str, str]) -> dict[str, str]:
    return {field: f"CAST(:{field} AS {casts[field]})" for field in values}


_PROJECT_CASTS = PROJECT_SQL_TYPES
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


@contextmanager
def _transaction(info: Info) -> Iterator[UnitOfWork]:
    """The mutation's unit of work; the request counts its commit (see api._idempotent), and
    its idempotency record learns of it inside the transaction, so that a retry after a COMMIT
    whose outcome is unknown, or after this Lambda died, finds out whether it was applied.
    What `_writes` named inside it stays in `context.applied` only once it has committed."""
    context = context_of(info)
    root = str(info.path.key)
    try:
        with UnitOfWork() as uow:
            yield uow
            idempotency.mark_applied(uow)
    except BaseException:
        context.applied.pop(root, None)
        raise
    context.committed_writes += 1


def _writes(info: Info, subject: str) -> None:
    """Names what this root field writes (an id, a code, a user name), for the error of a
    write that commits but whose answer cannot be completed (engine.run)."""
    context_of(info).applied[str(info.path.key)] = subject


@mutation.field("createProject")
def resolve_create_project(_: Any, info: Info, input: dict[str, Any]) -> Row:
    context = _writing(info)
    context.actor.require("editor", "admin")
    values = project_changes(input)
    with database_rules(values), _transaction(info) as uow:
        columns = [f for f in PROJECT_FIELDS if f in values]
        row = uow.one(
            f"INSERT INTO projects AS p (id, {', '.join(columns)}) VALUES (gen_random_uuid(), "
            + ", ".join(f"CAST(:{c} AS {_PROJECT_CASTS[c]})" for c in columns)
            + f") RETURNING {PROJECTS.columns}",
            **{c: values[c] for c in columns},
        )
        assert row is not None
        _writes(info, str(row["id"]))
        emit(uow, context, "projects", "created", row)
    return row


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
    with database_rules(values), _transaction(info) as uow:
        written = repository.update_row(
            uow, PROJECTS, project_id, _assignments(values, _PROJECT_CASTS), values, expected
        )
        if written is None:
            raise _missing_or_stale(uow, PROJECTS, "Project", project_id, expected)
        _writes(info, project_id)
        row, old = written
        changes = _changed(old, row)
        if changes:  # else nothing changed: same version, no event
            emit(uow, context, "projects", "updated", row, changes)
    return row


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
    with _transaction(info) as uow:
        deleted = repository.delete_row(uow, PROJECTS, project_id, expected)
        if deleted is None:
            raise _missing_or_stale(uow, PROJECTS, "Project", project_id, expected)
        _writes(info, project_id)
        emit(uow, context, "projects", "deleted", deleted)
    return {"id": project_id}


@mutation.field("createCountry")
def resolve_create_country(_: Any, info: Info, input: dict[str, Any]) -> Row:
    context = _writing(info)
    context.actor.require("admin")
    code = country_code(input["code"], "input.code")
    values = country_changes(input, context.region_codes)
    if values.get("covenant_status", "pending") != "pending":
        values.setdefault("joined_at", datetime.now(UTC))
    with database_rules(values), _transaction(info) as uow:
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
        _writes(info, code)
        emit(uow, context, "countries", "created", row)
    return row


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
    assignments = _assignments(values, _COUNTRY_CASTS)
    if values.get("covenant_status", "pending") != "pending" and "joined_at" not in values:
        # A country that becomes a member joins now, unless it joined before.
        assignments["joined_at"] = "COALESCE(old.joined_at, now())"
    with database_rules(values), _transaction(info) as uow:
        written = repository.update_row(uow, COUNTRIES, key, assignments, values, expected)
        if written is None:
            raise _missing_or_stale(uow, COUNTRIES, "Country", key, expected)
        _writes(info, key)
        row, old = written
        changes = _changed(old, row)
        if "region" in changes:
            _emit_region_move(uow, context, row, changes)
        elif changes:  # else nothing changed: same version, no event
            emit(uow, context, "countries", "updated", row, changes)
    return row


# The projects of a country, as the write that just moved them left them (in this transaction:
# the cascade ran at the end of the country's UPDATE, so this statement sees its result).
_PROJECTS_OF_COUNTRY = (
    f"SELECT {PROJECTS.columns} FROM projects AS p "
    "WHERE p.country_code = CAST(:code AS bpchar) ORDER BY p.id"
)


def _emit_region_move(
    uow: UnitOfWork, context: RequestContext, country: Row, changes: dict[str, dict[str, Any]]
) -> None:
    """The events of a country update that changed its region, which moved its projects too.

    A project's region is its country's: the foreign key (country_code, region) cascades the
    country's new region to every project of the country within the country's UPDATE, and the
    projects' change-tracking trigger runs for each of them (new version, updated_at and change
    number: sync clients pull them, and an `expectedVersion` read before the move is stale, as
    it is after any other change to the project). So each moved project has changed as if by
    an updateProject, and gets the same events: `covenant.projects.updated` with its snapshot
    (for the cache invalidator and mobile push, which otherwise never hear of the move), and
    `audit.projects.updated` naming the actor, the change `region: {from, to}` and its `cause`,
    the country's `audit.countries.updated` event. Audit per project rather than a list of
    moved ids in the country's audit event: the AUDIT stream then answers "who changed this
    project, and why" from the project's own subject, keeps the country's event the size it
    always has (a list of every project of a country could outgrow the stream's message size),
    and keeps the rule that every covenant.* event has its audit.* event.

    Two statements for any number of projects: one SELECT of the moved rows and one outbox
    INSERT of the country's events and all the projects' (each event on its own aggregate, so
    the bridge keeps every project's events in order). A country without projects writes only
    its own events."""
    moved = uow.rows(_PROJECTS_OF_COUNTRY, code=country["code"])
    country_events = change(context, "countries", "updated", country, changes)
    moves = {"region": changes["region"]}
    add_change_events(
        uow,
        [
            country_events,
            *(
                change(context, "projects", "updated", project, moves, country_events.audit)
                for project in moved
            ),
        ],
    )
    wake_bridge_after_commit(uow, context.region)


_USER_NAME = re.compile(r"^[^\s\x00-\x1f\x7f-\x9f]{1,128}$")  # no space or control character
# Role changes of one user are serialised (pg_advisory_xact_lock(this, hashtext(sub))), so
# the roles an audit event reports as "before" are the ones the change replaced.
_ROLE_LOCK_SPACE = 5151
# One lock (this, 0) for the set of admins: see _lock_admin_set.
_ADMIN_SET_LOCK_SPACE = 5152


@mutation.field("setUserRole")
def resolve_set_user_role(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    context = _writing(info)
    context.actor.require("admin")
    name = str(input["user"]).strip()
    if not _USER_NAME.match(name):
        raise BadUserInput("input.user", "must be an email or a user name (1 to 128 characters)")
    role = str(input["role"])
    directory = users.Directory.load()
    try:
        user = users.find_user(directory, name)
    except users.UserNotFound:
        raise NotFound(f"No user has the email or user name {name}.") from None
    if user.sub == context.actor.sub:
        raise BadUserInput("input.user", "is you: another admin must change your role")
    applied: list[users.Change] = []
    event_id: str | None = None
    try:
        # The audit event is written first but commits only once Cognito has made the change:
        # a failed call rolls it back, so no event ever records a change that did not happen.
        with _transaction(info) as uow:
            uow.run(
                "SELECT pg_advisory_xact_lock(CAST(:space AS integer), hashtext(:sub))",
                space=_ROLE_LOCK_SPACE,
                sub=user.sub,
            )
            _writes(info, user.username)
            before = users.roles_of(directory, user)
            if before == {role}:
                return _role_change(user, role, before, changed=False)
            if "admin" in before or role == "admin":
                _lock_admin_set(uow, directory, user, demoting="admin" in before)
            event_id = emit_role_change(uow, context, user.describe(), sorted(before), [role])
            applied = users.set_role(directory, user, role, before)
            # The user's tokens carry the old groups: refuse those issued until now, i.e.
            # after Cognito made the change (a token refreshed while this transaction waited
            # or called Cognito still has the old groups), so the new role holds at once.
            revoked_at = revoke_tokens(uow, user.sub)
    except Exception:
        if applied and event_id is not None:  # Cognito changed; did the event commit?
            _settle(directory, user, applied, event_id, role)
        raise
    # Tokens of the revocation's second are refused too (`iat` has whole seconds): answer once
    # it has passed, so a refresh after this answer gets the new groups in an accepted token.
    wait_out_second(revoked_at)
    return _role_change(user, role, before, changed=True)


def _lock_admin_set(
    uow: UnitOfWork, directory: users.Directory, user: users.User, *, demoting: bool
) -> None:
    """Every change to the admin set is serialised by one lock (setUserRole runs on the
    primary, whichever region was asked, so the lock holds across regions), taken after the
    user's own lock and held until the commit, after Cognito made the change. A demotion then
    counts the other enabled admins under that lock and is refused when there are none: two
    admins demoting each other at once, one wins and the other is refused, so at least one
    admin always remains. Promotions take the lock too, so that a promotion whose commit fails
    (and is undone in Cognito) was never counted by a demotion."""
    uow.run("SELECT pg_advisory_xact_lock(CAST(:space AS integer), 0)", space=_ADMIN_SET_LOCK_SPACE)
    if demoting and not (users.enabled_admins(directory) - {user.sub}):
        raise Conflict(
            f"{user.email or user.username} is the last admin: promote another user to admin "
            "before changing this one's role.",
            reason="last_admin",
        )


def _settle(
    directory: users.Directory,
    user: users.User,
    applied: list[users.Change],
    event_id: str,
    role: str,
) -> None:
    """After Cognito made the change, the commit of its audit event failed. A commit whose
    answer was lost may still have happened, so the change is undone only when the event is
    known to be absent; otherwise (or when the undo fails) the log says what to check."""
    try:
        with db.writer().session() as session:
            committed = session.scalar(
                "SELECT 1 FROM outbox WHERE id = CAST(:id AS uuid)", id=event_id
            )
    except Exception:
        logger.exception(
            "role of user %s set to %s; whether its audit event %s committed is unknown: "
            "check the outbox, and record the change or restore the roles",
            user.sub,
            role,
            event_id,
        )
        return
    if committed is not None:
        return
    try:
        users.undo(directory, user, applied)
    except users.DirectoryUnavailable:
        logger.exception(
            "role of user %s set to %s WITHOUT its audit event: the commit and the undo both "
            "failed; restore the roles (%s undone in reverse) or record the change",
            user.sub,
            role,
            applied,
        )


def _role_change(
    user: users.User, role: str, before: frozenset[str], *, changed: bool
) -> dict[str, Any]:
    return {
        "username": user.username,
        "email": user.email,
        "role": role,
        "previous_roles": sorted(before),
        "changed": changed,
    }

"""The domain events a mutation writes to the outbox: the change (covenant.*) and its audit
record naming the actor (audit.*), both CloudEvents, in the mutation's transaction. The
envelope and data are covenant.domain_events', shared with the sync push."""

from __future__ import annotations

from typing import Any

from covenant.db import Row
from covenant.domain_events import (
    ChangeEvents,
    add_change_events,
    change_events,
    wake_bridge_after_commit,
)
from covenant.events import CloudEvent, event_source
from covenant.uow import UnitOfWork
from graphql_api.context import RequestContext


def change(
    context: RequestContext,
    collection: str,
    action: str,
    row: Row,
    changes: dict[str, dict[str, Any]] | None = None,
    cause: CloudEvent | None = None,
) -> ChangeEvents:
    """The change and audit events of one row this request changed."""
    return change_events(
        function="graphql",
        region=context.region,
        actor=context.actor.describe(),
        request_id=context.request_id,
        collection=collection,
        action=action,
        row=row,
        changes=changes,
        cause=cause,
    )


def emit(
    uow: UnitOfWork,
    context: RequestContext,
    collection: str,
    action: str,
    row: Row,
    changes: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Writes both events to the outbox; once the transaction commits, wakes the bridge."""
    add_change_events(uow, [change(context, collection, action, row, changes)])
    wake_bridge_after_commit(uow, context.region)


def emit_role_change(
    uow: UnitOfWork,
    context: RequestContext,
    user: dict[str, Any],
    before: list[str],
    after: list[str],
) -> str:
    """The audit event of a role change, in the outbox of `uow`'s transaction; returns its
    id. Only audit: users are not a collection of the COVENANT stream (countries, projects),
    so there is no covenant.* event for them."""
    audit = CloudEvent(
        type="audit.users.role_changed",
        source=event_source(context.region, "graphql"),
        subject=f"users/{user['sub']}",
        data={
            "actor": context.actor.describe(),
            "action": "role_changed",
            "requestId": context.request_id,
            "region": context.region,
            "user": user,
            "changes": {"roles": {"from": before, "to": after}},
        },
    )
    uow.add_events([audit], aggregate_type="user", aggregate_id=str(user["sub"]))
    wake_bridge_after_commit(uow, context.region)
    return audit.id

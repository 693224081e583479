"""The domain events a mutation writes to the outbox: the change (covenant.*) and its audit
record naming the actor (audit.*), both CloudEvents, in the mutation's transaction."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from covenant.db import Row
from covenant.events import CloudEvent, event_source
from covenant.uow import UnitOfWork
from covenant.wakeup import send_wakeup
from graphql_api.context import RequestContext

_AGGREGATES = {"countries": ("country", "code"), "projects": ("project", "id")}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def snapshot(row: Row) -> dict[str, Any]:
    """A row as event data: camelCase keys, JSON values, no internal keys."""
    return {_camel(k): _json_value(v) for k, v in row.items() if not k.startswith("_")}


def emit(
    uow: UnitOfWork,
    context: RequestContext,
    collection: str,
    action: str,
    row: Row,
    changes: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Writes both events to the outbox; once the transaction commits, wakes the bridge."""
    aggregate_type, key = _AGGREGATES[collection]
    aggregate_id = str(row[key])
    source = event_source(context.region, "graphql")
    subject = f"{collection}/{aggregate_id}"
    change = CloudEvent(
        type=f"covenant.{collection}.{action}",
        source=source,
        subject=subject,
        data={aggregate_type: snapshot(row)},
    )
    audit = CloudEvent(
        type=f"audit.{collection}.{action}",
        source=source,
        subject=subject,
        data={
            "actor": context.actor.describe(),
            "action": action,
            "requestId": context.request_id,
            "region": context.region,
            "changes": {
                _camel(k): {"from": _json_value(v["from"]), "to": _json_value(v["to"])}
                for k, v in (changes or {}).items()
            },
        },
    )
    add_events(uow, [change, audit], aggregate_type=aggregate_type, aggregate_id=aggregate_id)
    event_ids = [event.id for event in uow.events]
    uow.after_commit(lambda: _wake_bridge(event_ids, context.region))


# The envelopes travel as one JSON array (one parameter); each row takes its id and subject
# (the event type) from its envelope, in the array's order.
_INSERT_EVENTS = """
INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload)
SELECT CAST(e.envelope ->> 'id' AS uuid), e.envelope ->> 'type', :aggregate_type, :aggregate_id,
       e.envelope
FROM jsonb_array_elements(CAST(:envelopes AS jsonb)) WITH ORDINALITY AS e(envelope, n)
ORDER BY e.n
"""


def add_events(
    uow: UnitOfWork, events: list[CloudEvent], *, aggregate_type: str, aggregate_id: str
) -> None:
    """Writes the events of one aggregate to the outbox in one statement, in their order
    (what UnitOfWork.add_event does for one event: a mutation's two events would otherwise
    be a third of its statements). The NATS subject is the event type."""
    uow.run(
        _INSERT_EVENTS,
        envelopes="[" + ",".join(event.to_json() for event in events) + "]",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
    )
    uow.events.extend(events)


def emit_role_change(
    uow: UnitOfWork,
    context: RequestContext,
    user: dict[str, Any],
    before: list[str],
    after: list[str],
) -> str:
    """The audit event of a role change, in the outbox of `uow`'s transaction; returns its
    id. Only audit:
    users are not a collection of the COVENANT stream (countries, projects), so there is no
    covenant.* event for them."""
    subject = f"users/{user['sub']}"
    audit = CloudEvent(
        type="audit.users.role_changed",
        source=event_source(context.region, "graphql"),
        subject=subject,
        data={
            "actor": context.actor.describe(),
            "action": "role_changed",
            "requestId": context.request_id,
            "region": context.region,
            "user": user,
            "changes": {"roles": {"from": before, "to": after}},
        },
    )
    add_events(uow, [audit], aggregate_type="user", aggregate_id=str(user["sub"]))
    event_ids = [event.id for event in uow.events]
    uow.after_commit(lambda: _wake_bridge(event_ids, context.region))
    return audit.id


def _wake_bridge(event_ids: list[str], region: str) -> None:
    send_wakeup(event_ids, region)

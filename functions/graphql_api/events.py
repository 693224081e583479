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
    uow.add_event(
        CloudEvent(
            type=f"covenant.{collection}.{action}",
            source=source,
            subject=subject,
            data={aggregate_type: snapshot(row)},
        ),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
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
    uow.add_event(audit, aggregate_type=aggregate_type, aggregate_id=aggregate_id)
    event_ids = [event.id for event in uow.events]
    uow.after_commit(lambda: _wake_bridge(event_ids, context.region))


def _wake_bridge(event_ids: list[str], region: str) -> None:
    send_wakeup(event_ids, region)

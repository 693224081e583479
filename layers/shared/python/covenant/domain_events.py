"""The events a change to a country or project writes to the outbox, whichever API made it:
the change itself (`covenant.<collection>.<action>`) and its audit record naming the actor
(`audit.<collection>.<action>`), CloudEvents in the change's own transaction. The GraphQL
function and the sync push both write them through `emit_change`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from covenant.events import CloudEvent, event_source
from covenant.uow import UnitOfWork
from covenant.wakeup import send_wakeup

AGGREGATES: Mapping[str, tuple[str, str]] = {
    "countries": ("country", "code"),
    "projects": ("project", "id"),
}


def json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def snapshot(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as event data: camelCase keys, JSON values, no internal keys."""
    return {camel(k): json_value(v) for k, v in row.items() if not k.startswith("_")}


def emit_change(
    uow: UnitOfWork,
    *,
    function: str,
    region: str,
    actor: Mapping[str, Any],
    request_id: str,
    collection: str,
    action: str,
    row: Mapping[str, Any],
    changes: Mapping[str, Mapping[str, Any]] | None = None,
    via: str | None = None,
) -> None:
    """Writes the change event and its audit event to the outbox of `uow`'s transaction.
    `changes` maps a column to {"from": old, "to": new}; `via` names the channel (e.g. sync)."""
    aggregate_type, key = AGGREGATES[collection]
    aggregate_id = str(row[key])
    source = event_source(region, function)
    subject = f"{collection}/{aggregate_id}"
    change = CloudEvent(
        type=f"covenant.{collection}.{action}",
        source=source,
        subject=subject,
        data={aggregate_type: snapshot(row)},
    )
    audit: dict[str, Any] = {
        "actor": dict(actor),
        "action": action,
        "requestId": request_id,
        "region": region,
        "changes": {
            camel(k): {"from": json_value(v["from"]), "to": json_value(v["to"])}
            for k, v in (changes or {}).items()
        },
    }
    if via is not None:
        audit["via"] = via
    uow.add_events(
        [
            change,
            CloudEvent(
                type=f"audit.{collection}.{action}", source=source, subject=subject, data=audit
            ),
        ],
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
    )


def wake_bridge_after_commit(uow: UnitOfWork, region: str) -> None:
    """Once `uow` commits, one wake-up for every event it wrote (best effort: the bridge's
    sweep publishes whatever a lost wake-up leaves behind)."""

    def wake() -> None:
        send_wakeup([event.id for event in uow.events], region)

    uow.after_commit(wake)

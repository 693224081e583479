"""The events a change to a country or project writes to the outbox, whichever API made it:
the change itself (`covenant.<collection>.<action>`) and its audit record naming the actor
(`audit.<collection>.<action>`), CloudEvents in the change's own transaction. The GraphQL
function and the sync push build them with `change_events` and write them with
`add_change_events`, all the events of a request's changes in one statement (a country's
region change cascading to its projects, a push of many records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ChangeEvents:
    """The two events one change of one aggregate writes: the change and its audit record."""

    aggregate_type: str
    aggregate_id: str
    change: CloudEvent
    audit: CloudEvent

    @property
    def events(self) -> list[CloudEvent]:
        return [self.change, self.audit]


def change_events(
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
    cause: CloudEvent | None = None,
) -> ChangeEvents:
    """The change event (`{<aggregate>: snapshot}`) and its audit event of one row.
    `changes` maps a column to {"from": old, "to": new}; `via` names the channel (e.g. sync);
    `cause` is the event of the change that made this one happen (a country's region change
    moving its projects): the audit data names its type, id and subject."""
    aggregate_type, key = AGGREGATES[collection]
    aggregate_id = str(row[key])
    source = event_source(region, function)
    subject = f"{collection}/{aggregate_id}"
    change = CloudEvent(
        type=f"covenant.{collection}.{action}",
        source=source,
        subject=subject,
        # Who changed it, without personal details (sub and roles): subscribers who may see
        # it (admins, as in the audit log) get it with the change (docs/realtime.md).
        data={
            aggregate_type: snapshot(row),
            "actor": {"sub": actor.get("sub"), "roles": list(actor.get("roles") or [])},
        },
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
    if cause is not None:
        audit["cause"] = {"type": cause.type, "id": cause.id, "subject": cause.subject}
    return ChangeEvents(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        change=change,
        audit=CloudEvent(
            type=f"audit.{collection}.{action}", source=source, subject=subject, data=audit
        ),
    )


def add_change_events(uow: UnitOfWork, batch: Sequence[ChangeEvents]) -> None:
    """Writes the events of one or many changes (of any aggregates) to the outbox of `uow`'s
    transaction in one statement, in the batch's order: one round trip however many rows a
    change touched."""
    uow.add_outbox_events(
        [
            (event, changed.aggregate_type, changed.aggregate_id)
            for changed in batch
            for event in changed.events
        ]
    )


def wake_bridge_after_commit(uow: UnitOfWork, region: str) -> None:
    """Once `uow` commits, one wake-up for every event it wrote (best effort: the bridge's
    sweep publishes whatever a lost wake-up leaves behind)."""

    def wake() -> None:
        send_wakeup([event.id for event in uow.events], region)

    uow.after_commit(wake)

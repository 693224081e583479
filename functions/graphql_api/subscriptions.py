"""Subscriptions, as the realtime functions use the GraphQL contract (docs/realtime.md):

- `subscribe()` checks a subscription document exactly as the HTTP API checks a request
  (parse, validation, depth/cost/statement limits, variables) and its arguments as the list
  filters check theirs, and says what it listens to (`Subscribed`).
- `change_of()` turns one COVENANT event into the root value of a subscription's field, or
  None when the event does not match the subscription's filter.
- `deliver()` executes the subscriber's document against that root value with the
  subscriber's actor: the `next` payload, with the same resolvers, roles and error shapes as a
  query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from graphql import (
    ExecutionResult,
    FieldNode,
    GraphQLObjectType,
    OperationType,
    execute,
)
from graphql.execution.values import get_argument_values, get_variable_values

from covenant.db import Row
from covenant.regions import Region
from graphql_api import engine, repository
from graphql_api.auth import Actor
from graphql_api.context import RequestContext
from graphql_api.errors import ApiError, BadUserInput
from graphql_api.executor import RowExecutor
from graphql_api.schema import executable_schema, row_key

# Root field -> the COVENANT subjects it listens to.
SUBJECTS: Mapping[str, str] = {
    "projectChanged": "covenant.projects.*",
    "countryChanged": "covenant.countries.*",
    "statsChanged": "covenant.*.*",  # a country's GDP and status move the figures too
}
_ACTIONS = {"created": "CREATED", "updated": "UPDATED", "deleted": "DELETED"}
_TIMES = ("created_at", "updated_at", "joined_at")


class NotASubscription(Exception):
    """The document is a query or mutation: the caller runs it (or refuses it) instead."""

    def __init__(self, prepared: engine.Prepared) -> None:
        super().__init__(prepared.operation.operation.value)
        self.prepared = prepared


@dataclass(frozen=True)
class Subscribed:
    """What one subscription listens to; JSON-able (`as_json`/`from_json`) for the store."""

    field: str  # the root field: projectChanged | countryChanged | statsChanged
    filter: Mapping[str, Any]  # coerced, snake_case keys (as the list filters take them)
    region: str | None  # statsChanged's
    since: int | None  # the position (stream sequence) to resume after

    @property
    def subject(self) -> str:
        return SUBJECTS[self.field]

    def as_json(self) -> str:
        return json.dumps(
            {"field": self.field, "filter": self.filter, "region": self.region}, sort_keys=True
        )

    @classmethod
    def from_json(cls, raw: str, since: int | None = None) -> Subscribed:
        value = json.loads(raw)
        return cls(value["field"], value["filter"] or {}, value.get("region"), since)


def parse_position(value: Any, argument: str = "since") -> int:
    """A position this API issued: the decimal stream sequence, as a string."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 19 or int(value) < 1:
        raise BadUserInput(argument, "is not a position this API issued (a change's `position`)")
    return int(value)


def subscribe(
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    limits: engine.Limits,
    regions: Iterable[Region],
) -> Subscribed:
    """Raises engine.RequestErrors (the document or its variables), ApiError (an argument),
    or NotASubscription."""
    schema = executable_schema()
    prepared = engine.prepare(schema, query, variables, operation_name, limits)
    if prepared.operation.operation != OperationType.SUBSCRIPTION:
        raise NotASubscription(prepared)
    # Validation (SingleFieldSubscriptionsRule) leaves exactly one root field, no directive.
    node = prepared.operation.selection_set.selections[0]
    assert isinstance(node, FieldNode)
    root = schema.subscription_type
    assert isinstance(root, GraphQLObjectType)
    coerced = get_variable_values(
        schema, prepared.operation.variable_definitions or (), variables or {}
    )
    assert not isinstance(coerced, list)  # prepare() coerced them already
    args = get_argument_values(root.fields[node.name.value], node, coerced)
    codes = tuple(r.code for r in regions)
    name = node.name.value
    filter_ = dict(args.get("filter") or {})
    if name == "projectChanged":
        repository.project_filter(filter_, codes)  # the list's checks: BadUserInput
        if filter_.get("country_code"):
            filter_["country_code"] = str(filter_["country_code"]).upper()
    elif name == "countryChanged":
        repository.country_filter(filter_, codes)
    region = args.get("region")
    if region is not None and region not in codes:
        raise BadUserInput("region", f"must be one of {', '.join(codes)}")
    since = args.get("since")
    return Subscribed(name, filter_, region, parse_position(since) if since is not None else None)


def _row(snapshot: Mapping[str, Any]) -> Row:
    row: Row = {row_key(k): v for k, v in snapshot.items()}
    for key in _TIMES:
        if isinstance(row.get(key), str):
            row[key] = datetime.fromisoformat(row[key].replace("Z", "+00:00"))
    return row


def _within(value: Any, low: Any, high: Any) -> bool:
    if value is None:
        return low is None and high is None
    return (low is None or value >= low) and (high is None or value <= high)


def _name_has(row: Row, needle: Any) -> bool:
    return not needle or str(needle).lower() in str(row.get("name", "")).lower()


def project_matches(f: Mapping[str, Any], p: Row) -> bool:
    return (
        all(f.get(k) is None or p.get(k) == f[k] for k in ("sector_id", "status", "region"))
        and (f.get("country_code") is None or str(p.get("country_code")) == f["country_code"])
        and _within(p.get("budget_usd"), f.get("budget_min"), f.get("budget_max"))
        and _within(p.get("impact_score"), f.get("impact_min"), f.get("impact_max"))
        and _name_has(p, f.get("name_contains"))
    )


def country_matches(f: Mapping[str, Any], c: Row) -> bool:
    return (
        all(
            f.get(k) is None or c.get(k) == f[k] for k in ("region", "continent", "covenant_status")
        )
        and _within(c.get("gdp_usd"), f.get("gdp_min"), f.get("gdp_max"))
        and _name_has(c, f.get("name_contains"))
    )


def change_of(
    subscribed: Subscribed, event_id: str, position: int, envelope: Mapping[str, Any]
) -> Row | None:
    """The root value the subscription's field resolves to for this event, or None."""
    kind = str(envelope.get("type") or "")
    collection, _, action = kind.removeprefix("covenant.").partition(".")
    data = envelope.get("data")
    if action not in _ACTIONS or not isinstance(data, dict):
        return None
    actor = data.get("actor") if isinstance(data.get("actor"), dict) else None
    change: Row = {
        "event_id": event_id,
        "position": str(position),
        "action": _ACTIONS[action],
        "time": datetime.fromisoformat(str(envelope.get("time")).replace("Z", "+00:00")),
        "changed_by": actor,
    }
    if collection == "projects" and isinstance(data.get("project"), dict):
        project = _row(data["project"])
        if subscribed.field == "projectChanged" and project_matches(subscribed.filter, project):
            return {**change, "project": project}
        if subscribed.field == "statsChanged" and subscribed.region in (
            None,
            project.get("region"),
        ):
            return {**change, "region_filter": subscribed.region}
    if collection == "countries" and isinstance(data.get("country"), dict):
        country = _row(data["country"])
        if subscribed.field == "countryChanged" and country_matches(subscribed.filter, country):
            return {**change, "country": country}
        if subscribed.field == "statsChanged" and subscribed.region in (
            None,
            country.get("region"),
        ):
            return {**change, "region_filter": subscribed.region}
    return None


@dataclass
class Shared:
    """What the deliveries of one event share: the loads the resolvers batch (the figures are
    read once per change, whoever asks), on the primary (the figures include the change; the
    database layer keeps one connection per thread, so every subscriber's session is it)."""

    request_id: str
    regions: tuple[Region, ...]
    region: str
    batches: dict[tuple[Any, ...], Any] = field(default_factory=dict)


def deliver(
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    limits: engine.Limits,
    change: Row,
    actor: Actor,
    shared: Shared,
) -> dict[str, Any]:
    """The `next` payload of one change for one subscriber: {"data": ..., "errors": [...]}."""
    schema = executable_schema()
    prepared = engine.prepare(schema, query, variables, operation_name, limits)  # cached
    context = RequestContext(
        actor=actor,
        region=shared.region,
        request_id=shared.request_id,
        regions=shared.regions,
        read_primary=True,
        _batches=shared.batches,
    )
    result: ExecutionResult = execute(  # type: ignore[assignment]
        schema,
        prepared.document,
        root_value=change,
        context_value=context,
        variable_values=prepared.variables,
        operation_name=operation_name,
        executor_class=RowExecutor,
    )
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [engine.format_error(e, shared.request_id) for e in result.errors]
    return payload


def error_payload(error: ApiError | engine.RequestErrors) -> list[dict[str, Any]]:
    """The graphql-transport-ws `error` message's payload: a list of GraphQL errors."""
    if isinstance(error, engine.RequestErrors):
        return error.errors
    return [{"message": error.message, "extensions": error.extensions}]

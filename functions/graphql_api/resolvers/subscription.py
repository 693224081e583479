"""Subscription: the root fields resolve to the change being delivered (the root value the
fan-out executes each subscriber's document with, graphql_api.subscriptions); the rest are the
same resolvers as the queries', with the subscriber's actor, so a role that may not read a
field does not receive it."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType, SubscriptionType

from covenant.db import Row
from graphql_api.context import Info, context_of
from graphql_api.resolvers.query import (
    resolve_global_stats,
    resolve_regional_stats,
    resolve_sectoral_stats,
)

subscription = SubscriptionType()
project_change = ObjectType("ProjectChange")
country_change = ObjectType("CountryChange")
stats_change = ObjectType("StatsChange")


def _the_change(change: Row, info: Info, **_: Any) -> Row:
    return change


for name in ("projectChanged", "countryChanged", "statsChanged"):
    subscription.set_field(name, _the_change)


def _changed_by(change: Row, info: Info) -> Row | None:
    context_of(info).actor.require("admin")  # who changed what: as the audit log, admins only
    actor: Row | None = change.get("changed_by")
    return actor


project_change.set_field("changedBy", _changed_by)
country_change.set_field("changedBy", _changed_by)


@stats_change.field("global")
def resolve_global(change: Row, info: Info) -> Row:
    found: Row = resolve_global_stats(None, info)
    return found


@stats_change.field("regional")
def resolve_regional(change: Row, info: Info) -> list[Row]:
    found: list[Row] = resolve_regional_stats(None, info, change.get("region_filter"))
    return found


@stats_change.field("sectoral")
def resolve_sectoral(change: Row, info: Info) -> list[Row]:
    found: list[Row] = resolve_sectoral_stats(None, info)
    return found


SUBSCRIPTION_TYPES = [subscription, project_change, country_change, stats_change]

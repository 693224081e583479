"""Top-level and nested lists: one statement per list level, one per totalCount asked for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from covenant.db import Row
from graphql_api import repository
from graphql_api.context import Info, context_of, field_key, mark_siblings, siblings, unique
from graphql_api.pagination import Order, page_size
from graphql_api.repository import Query, Table
from graphql_api.resolvers.connection import connection
from graphql_api.selection import connection_fields, node_fields, node_object_fields

FilterBuilder = Callable[[Mapping[str, Any] | None, tuple[str, ...]], Query]


@dataclass(frozen=True)
class ListKind:
    table: Table
    orders: Mapping[str, Order]
    build_filter: FilterBuilder
    # A many-to-one a top-level page reads in its own statement when its nodes select it.
    join: repository.Join | None = None


COUNTRY_LIST = ListKind(
    repository.COUNTRIES,
    repository.COUNTRY_ORDERS,
    lambda f, regions: repository.country_filter(f, regions),
)
PROJECT_LIST = ListKind(
    repository.PROJECTS,
    repository.PROJECT_ORDERS,
    lambda f, regions: repository.project_filter(f, regions),
    repository.PROJECT_COUNTRY,
)


def top_level(kind: ListKind, info: Info, args: Mapping[str, Any]) -> dict[str, Any]:
    context = context_of(info)
    first = page_size(args.get("first"))
    order = repository.resolve_order(kind.orders, args.get("order_by"))
    query = kind.build_filter(args.get("filter"), context.region_codes)
    asked = connection_fields(info)
    join = None
    if kind.join is not None:
        join_fields = node_object_fields(info, kind.join.field)
        join = None if join_fields is None else (kind.join, join_fields)
    rows, has_next, counted = repository.page(
        context.session,
        kind.table,
        query,
        order,
        first,
        args.get("after"),
        node_fields(info),
        look_ahead="pageInfo" in asked,
        with_total="totalCount" in asked,
        join=join,
    )
    if join is not None:  # one level of rows: nested lists under them batch over all of it
        joined = {id(row): row for row in (r[f"_{join[0].field}"] for r in rows) if row}
        mark_siblings(context, joined.values())

    def total() -> int:
        if counted is not None:
            return counted
        return context.batch(
            ("count", *field_key(info, dict(args))),
            lambda: repository.count(
                context.session,
                kind.table,
                kind.build_filter(args.get("filter"), context.region_codes),
            ),
        )

    return connection(mark_siblings(context, rows), has_next, order, kind.table, total)


@dataclass(frozen=True)
class Parent:
    """How children hang under a parent: the parent's key and the child column holding it."""

    key_of: Callable[[Row], str]
    child_column: str
    key_type: str


@dataclass(frozen=True)
class _Level:
    """The children of every parent of one list level, loaded in one statement."""

    order: Order
    pages: dict[str, tuple[list[Row], bool]]
    keys: list[str]


def nested(
    kind: ListKind,
    parent: Parent,
    row: Row,
    info: Info,
    args: Mapping[str, Any],
) -> dict[str, Any]:
    context = context_of(info)
    batch = field_key(info, args)
    own_key = parent.key_of(row)

    def load(parents: list[Row]) -> _Level:
        first = page_size(args.get("first"))
        order = repository.resolve_order(kind.orders, args.get("order_by"))
        keys = unique(parent.key_of(r) for r in parents)
        pages = repository.nested_pages(
            context.session,
            kind.table,
            parent.child_column,
            parent.key_type,
            keys,
            kind.build_filter(args.get("filter"), context.region_codes),
            order,
            first,
            args.get("after"),
            node_fields(info),
            "pageInfo" in connection_fields(info),
        )
        mark_siblings(context, (child for rows, _ in pages.values() for child in rows))
        return _Level(order, pages, keys)

    level = context.batch(("pages", *batch), lambda: load(siblings(context, row)))
    if own_key not in level.pages:  # a parent outside the level that loaded first
        level = context.batch(("pages", own_key, *batch), lambda: load([row]))
    rows, has_next = level.pages[own_key]

    def total() -> int:
        counts = context.batch(
            ("counts", id(level), *batch),  # per level: the keys it loaded
            lambda: repository.nested_counts(
                context.session,
                kind.table,
                parent.child_column,
                parent.key_type,
                level.keys,
                kind.build_filter(args.get("filter"), context.region_codes),
            ),
        )
        return counts[own_key]

    return connection(rows, has_next, level.order, kind.table, total)

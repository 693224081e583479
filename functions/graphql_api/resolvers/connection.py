"""Connections (totalCount, pageInfo, edges, nodes) over one page of rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ariadne import ObjectType

from covenant.db import Row
from graphql_api.context import RequestContext
from graphql_api.executor import RowResolver
from graphql_api.pagination import Order, encode_cursor
from graphql_api.repository import Table


def connection(
    rows: list[Row], has_next: bool, order: Order, table: Table, count: Callable[[], int]
) -> dict[str, Any]:
    return {"rows": rows, "has_next": has_next, "order": order, "table": table, "count": count}


def _cursor(conn: dict[str, Any], row: Row) -> str:
    order: Order = conn["order"]
    table: Table = conn["table"]
    return encode_cursor(order, row[order.column], row[table.id_column])


def _total_count(conn: dict[str, Any], context: RequestContext) -> int:
    return int(conn["count"]())


def _nodes(conn: dict[str, Any], context: RequestContext) -> list[Row]:
    rows: list[Row] = conn["rows"]
    return rows


def _edges(conn: dict[str, Any], context: RequestContext) -> list[dict[str, Any]]:
    return [{"cursor": _cursor(conn, row), "node": row} for row in conn["rows"]]


def _page_info(conn: dict[str, Any], context: RequestContext) -> dict[str, Any]:
    rows = conn["rows"]
    return {
        "has_next_page": conn["has_next"],
        "end_cursor": _cursor(conn, rows[-1]) if rows else None,
    }


def _bind(name: str) -> ObjectType:
    bound = ObjectType(name)
    bound.set_field("totalCount", RowResolver(_total_count))
    bound.set_field("nodes", RowResolver(_nodes))
    bound.set_field("edges", RowResolver(_edges))
    bound.set_field("pageInfo", RowResolver(_page_info))
    return bound


country_connection = _bind("CountryConnection")
project_connection = _bind("ProjectConnection")

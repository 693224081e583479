"""Query.auditLog: the audit trail (covenant.audit_trail, DynamoDB in the primary region),
for admins only. The table is read, never written, by this function."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from covenant import audit_trail
from graphql_api.context import Info, context_of
from graphql_api.errors import BadUserInput
from graphql_api.pagination import page_size
from graphql_api.resolvers.query import query

_client: Any = None


def _dynamodb() -> Any:
    global _client
    if _client is None:
        _client = audit_trail.client()
    return _client


@query.field("auditLog")
def resolve_audit_log(
    _: Any,
    info: Info,
    filter: dict[str, Any] | None = None,
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    context_of(info).actor.require("admin")
    size = page_size(first)
    where = filter or {}
    start: datetime | None = where.get("from")
    end: datetime | None = where.get("to")
    if start is not None and end is not None and start > end:
        raise BadUserInput("filter.from", "must not be after filter.to")
    position = None
    if after is not None:
        position = audit_trail.decode_cursor(after)
        if position is None:
            raise BadUserInput("after", "is not a cursor of auditLog")
    items, more = audit_trail.page(
        _dynamodb(),
        audit_trail.AuditFilter(
            actor=where.get("actor"), entity=where.get("entity"), start=start, end=end
        ),
        size,
        position,
    )
    nodes = [audit_trail.record_view(item) for item in items]
    return {
        "edges": [{"cursor": node["cursor"], "node": node} for node in nodes],
        "page_info": {
            "has_next_page": more,
            "end_cursor": nodes[-1]["cursor"] if nodes else None,
        },
    }

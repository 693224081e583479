"""Query.statsHistory: the ANALYTICS consumer's time series (covenant.analytics), read from
the region's reader like every other query."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from covenant import analytics
from graphql_api.context import Info, context_of
from graphql_api.errors import BadUserInput
from graphql_api.resolvers.query import query


@query.field("statsHistory")
def resolve_stats_history(
    _: Any,
    info: Info,
    bucket: str,
    to: datetime,
    filter: dict[str, Any] | None = None,
    **args: Any,
) -> list[dict[str, Any]]:
    start: datetime = args["from"]
    if start > to:
        raise BadUserInput("from", "must not be after to")
    if analytics.points(start, to, bucket) > analytics.MAX_POINTS:
        raise BadUserInput("to", f"at most {analytics.MAX_POINTS} {bucket.lower()}s from `from`")
    where = filter or {}
    context = context_of(info)
    if where.get("region") is not None and where["region"] not in context.region_codes:
        raise BadUserInput("filter.region", f"must be one of {', '.join(context.region_codes)}")
    return analytics.history(
        context.session,
        bucket,
        start,
        to,
        analytics.StatsFilter(
            region=where.get("region"),
            sector_id=where.get("sector_id"),
            status=where.get("status"),
        ),
    )

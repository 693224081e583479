"""Mobile Lambda entry point: routes of the regional HTTP API that the app calls."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant.regions import region_codes
from mobile.health import check_health

logger = Logger(service="mobile")
# Each regional HTTP API serves its stage under /<region>; a custom domain mapping strips it.
app = APIGatewayHttpResolver(strip_prefixes=[re.compile(rf"^/({'|'.join(region_codes())})")])


@app.get("/health")
def health() -> Response[Any]:
    report = check_health()
    return Response(
        status_code=report.http_status,
        content_type=content_types.APPLICATION_JSON,
        body=report.body(),
        headers={"Cache-Control": "no-store"},
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)

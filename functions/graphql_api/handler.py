"""GraphQL Lambda entry point: POST/GET /<region>/graphql of the regional HTTP API."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

import covenant.snapstart  # noqa: F401 - registers the SnapStart hooks: no connection in a snapshot
from graphql_api.api import serve
from graphql_api.schema import executable_schema

logger = Logger(service="graphql")
tracer = Tracer(service="graphql")
metrics = Metrics(namespace="Covenant", service="graphql")

executable_schema()  # built at init (and before a SnapStart snapshot), never per request


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return serve(event, context, metrics)

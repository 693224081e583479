"""The WebSocket API's Lambda: `$connect`, `$default` and `$disconnect` of
/<region>/graphql (docs/realtime.md, "The contract")."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant.config import settings
from covenant.logs import adopt_shared_logs
from covenant.regions import get_region
from graphql_api.schema import executable_schema
from realtime import protocol, store
from realtime.management import Connections

logger = Logger(service="realtime")
metrics = Metrics(namespace="Covenant", service="realtime")
copy_config_to_registered_loggers(source_logger=logger, include={"realtime", "graphql_api"})

executable_schema()  # at init, never per message


def regional_store() -> store.Store:
    # boto3 clients are cached per region and endpoint (covenant.aws): cheap to wrap anew.
    return store.Store(store.client())


# The event (the token in a connection_init) never reaches a log.
@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", log_event=False)
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    request = event.get("requestContext") or {}
    route = request.get("routeKey")
    connection_id = str(request.get("connectionId") or "")
    logger.append_keys(connectionId=connection_id, routeKey=route)
    if route == "$connect":
        if not protocol.connect(regional_store(), request, event.get("headers")):
            metrics.add_metric("RefusedConnections", MetricUnit.Count, 1)
            return {"statusCode": 400}
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": protocol.SUBPROTOCOL}}
    if route == "$disconnect":
        regional_store().forget_connection(connection_id)
        return {"statusCode": 200}
    here = get_region(settings().region)
    conversation = protocol.Conversation(regional_store(), Connections(here), connection_id)
    try:
        conversation.receive(event.get("body"), str(request.get("requestId") or ""))
    except Exception:
        logger.exception("message failed")
        conversation.close(protocol.Close(4500, "Internal server error"))
    return {"statusCode": 200}

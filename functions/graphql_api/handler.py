"""GraphQL Lambda entry point: POST/GET /<region>/graphql of the regional HTTP API."""

from __future__ import annotations

import gc

# Init builds what lives as long as the environment (modules, the schema): the cyclic
# collector is paused until init ends, and what init built is then frozen out of its reach
# (gc.freeze), sparing every later full collection a walk over about 160 000 objects. The
# cycles init leaves unreachable (about 27 000 small objects) stay with it; the peak memory
# is the same. docs/performance.md, "Cold start".
gc.disable()

from typing import Any  # noqa: E402

from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: E402
from aws_lambda_powertools.logging import correlation_paths  # noqa: E402
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers  # noqa: E402
from aws_lambda_powertools.metrics.functions import is_metrics_disabled  # noqa: E402
from aws_lambda_powertools.utilities.typing import LambdaContext  # noqa: E402

import covenant.snapstart  # noqa: E402, F401 - registers the SnapStart hooks: no connection in a snapshot
from covenant.logs import adopt_shared_logs  # noqa: E402
from graphql_api.api import serve  # noqa: E402
from graphql_api.engine import collector_paused  # noqa: E402
from graphql_api.schema import executable_schema  # noqa: E402

logger = Logger(service="graphql")
tracer = Tracer(service="graphql")
metrics = Metrics(namespace="Covenant", service="graphql")
# The modules log through `logging.getLogger(__name__)` ("graphql_api.*"): give them this
# logger's handler, so that each line is JSON with the correlation id. (Left to the root
# logger, they would also be dropped in Lambda: Powertools filters the root handlers for
# records whose logger name contains the service name, and "graphql_api" does.)
copy_config_to_registered_loggers(source_logger=logger, include={"graphql_api"})

executable_schema()  # built at init (and before a SnapStart snapshot), never per request

gc.freeze()
gc.enable()


# The event (its Authorization header) and the answer never reach a log or a trace, whatever
# the POWERTOOLS_* variables say.
@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
# Powertools prints its ColdStart metric even with metrics disabled (make dev): ask only when on.
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    # Until the answer is written and its tree freed (docs/performance.md, item 10).
    with collector_paused():
        return serve(event, context, metrics)

"""A local Lambda runtime for the functions of the function table (covenant.topology)."""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from covenant.config import environment
from covenant.regions import Region, load_regions, regions_as_json
from covenant.topology import FunctionSpec, load_functions
from devstack.errors import DevStackError

Handler = Callable[[dict[str, Any], Any], Any]


def load_handler(function: FunctionSpec) -> Handler:
    """Imports the handler the way the Lambda runtime does: `module.attribute`."""
    module_name, _, attribute = function.handler.rpartition(".")
    module = importlib.import_module(module_name)
    loaded: Handler = getattr(module, attribute)
    return loaded


def get_function(name: str) -> FunctionSpec:
    functions = load_functions()
    if name not in functions:
        raise DevStackError(f"no function {name!r}; known: {', '.join(sorted(functions))}")
    return functions[name]


class LocalContext:
    """The Lambda context object, as the managed runtime passes it."""

    def __init__(self, function: FunctionSpec, region: Region, timeout_s: float = 30) -> None:
        self.function_name = f"covenant-{region.code}-{function.name}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{region.aws_region}:000000000000:function:{self.function_name}"
        )
        self.memory_limit_in_mb = 1024
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_environment(
    function: FunctionSpec, region: Region, endpoints: Mapping[str, str]
) -> dict[str, str]:
    """The environment the function has in `region` (the CDK app sets the same names)."""
    return {
        "COVENANT_REGION": region.code,
        "COVENANT_STAGE": "local",
        "COVENANT_REGIONS": regions_as_json(load_regions()),
        "AWS_REGION": region.aws_region,
        "AWS_LAMBDA_FUNCTION_NAME": f"covenant-{region.code}-{function.name}",
        "POWERTOOLS_SERVICE_NAME": function.name,
        "NATS_REPLICAS": "1",  # one nats-server locally
        **endpoints,
    }


def region_environment(
    function: FunctionSpec,
    region: Region,
    endpoints: Mapping[str, str],
    hop_url: str | None = None,
    gateway_url: str | None = None,
) -> dict[str, str]:
    """`function_environment`, and for a secondary region that reaches the primary through
    `hop_url` (devstack.hop) what the CDK app gives it there: no writer (DATABASE_URL), the
    primary region's same function to hand writes to, and the Lambda endpoint to reach it.
    With `gateway_url`, the region's `@connections` endpoint (devstack.websocket) in
    WEBSOCKET_MANAGEMENT_URL, for boto3's `apigatewaymanagementapi` client, and for the
    GraphQL function the region's WebSocket API in GRAPHQL_SUBSCRIPTIONS_URL (its explorer's
    subscriptions), as the CDK app gives it the WebSocket stage's URL."""
    values = function_environment(function, region, endpoints)
    if gateway_url is not None:
        values["WEBSOCKET_MANAGEMENT_URL"] = f"{gateway_url}/{region.code}"
        subscriptions = _websocket_path()
        if function.name == "graphql" and subscriptions is not None:
            ws_gateway = gateway_url.replace("http", "ws", 1)
            values["GRAPHQL_SUBSCRIPTIONS_URL"] = f"{ws_gateway}/{region.code}{subscriptions}"
        values.setdefault("AWS_ACCESS_KEY_ID", "local")  # boto3 signs; the local API ignores it
        values.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    if hop_url is None or region.primary:
        return values
    primary = next(r for r in load_regions() if r.primary)
    values.pop("DATABASE_URL", None)
    values["AWS_ENDPOINT_URL_LAMBDA"] = hop_url
    values["COVENANT_PRIMARY_FUNCTION"] = f"covenant-{primary.code}-{function.name}"
    values.setdefault("AWS_ACCESS_KEY_ID", "local")  # boto3 signs; the local API ignores it
    values.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    return values


def _websocket_path() -> str | None:
    """The path the gateway serves the function table's WebSocket API at, if it has one."""
    return next((f.websocket.path for f in load_functions().values() if f.websocket), None)


def invoke(
    function: FunctionSpec, region: Region, event: dict[str, Any], endpoints: Mapping[str, str]
) -> Any:
    handler = load_handler(function)
    with environment(function_environment(function, region, endpoints)):
        return handler(event, LocalContext(function, region))

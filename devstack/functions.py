"""The functions and their routes, read from the `covenant:functions` context in cdk.json
(the CDK app reads the same entries), and a local Lambda runtime that invokes them."""

from __future__ import annotations

import importlib
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from covenant.config import environment
from covenant.regions import Region, cdk_context, load_regions, regions_as_json
from devstack.errors import DevStackError

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, ... or ANY
    path: str  # API Gateway route path, e.g. /health or /auth/{proxy+}
    auth: str  # none | jwt

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        pattern = "^"
        names: list[str] = []
        for part in self.path.strip("/").split("/"):
            if part.startswith("{") and part.endswith("+}"):
                names.append(part[1:-2])
                pattern += "/(.+)"
            elif part.startswith("{") and part.endswith("}"):
                names.append(part[1:-1])
                pattern += "/([^/]+)"
            else:
                pattern += "/" + re.escape(part)
        found = re.match(pattern + "/?$", path)
        if found is None:
            return None
        return dict(zip(names, found.groups(), strict=True))


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # module.path.function, relative to functions/ (the deployed code root)
    routes: tuple[Route, ...]

    def load(self) -> Handler:
        module_name, _, attribute = self.handler.rpartition(".")
        module = importlib.import_module(module_name)
        loaded: Handler = getattr(module, attribute)
        return loaded


@cache
def load_functions() -> dict[str, FunctionSpec]:
    raw = cdk_context().get("covenant:functions", {})
    functions: dict[str, FunctionSpec] = {}
    for name, entry in raw.items():
        routes = []
        for key, auth in entry.get("routes", {}).items():
            method, path = key.split(" ", 1)
            routes.append(Route(method, path, auth))
        functions[name] = FunctionSpec(name, entry["handler"], tuple(routes))
    return functions


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
        **endpoints,
    }


def invoke(
    function: FunctionSpec, region: Region, event: dict[str, Any], endpoints: Mapping[str, str]
) -> Any:
    handler = function.load()
    with environment(function_environment(function, region, endpoints)):
        return handler(event, LocalContext(function, region))

"""The function table: which Lambda serves which API routes, from the `covenant:functions`
context in cdk.json. The CDK app builds routes from it; the local gateway serves the same."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from covenant.regions import cdk_context

CONTEXT_KEY = "covenant:functions"
AUTH_MODES = ("none", "jwt")


class TopologyError(RuntimeError):
    """The function table is malformed."""


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, ... or ANY
    path: str  # API Gateway route path, e.g. /health or /auth/{proxy+}
    auth: str  # none | jwt

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when this route serves the request, else None (API Gateway's
        matching: `{name}` is one segment, `{name+}` the rest of the path)."""
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
    handler: str  # module.function, relative to functions/ (the deployed code root)
    description: str
    routes: tuple[Route, ...]


def parse_functions(raw: Mapping[str, Any]) -> dict[str, FunctionSpec]:
    functions: dict[str, FunctionSpec] = {}
    for name, entry in raw.items():
        routes = []
        for key, auth in entry.get("routes", {}).items():
            method, _, path = key.partition(" ")
            if auth not in AUTH_MODES or not path.startswith("/"):
                raise TopologyError(f"function {name}: bad route {key!r} -> {auth!r}")
            routes.append(Route(method, path, auth))
        if "handler" not in entry:
            raise TopologyError(f"function {name}: no handler")
        functions[name] = FunctionSpec(
            name, entry["handler"], entry.get("description", ""), tuple(routes)
        )
    return functions


@cache
def load_functions() -> dict[str, FunctionSpec]:
    return parse_functions(cdk_context().get(CONTEXT_KEY, {}))

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
AUTH_MODES = ("none", "jwt", "jwt-optional")  # see Route
WEBSOCKET_ROUTES = ("$connect", "$default", "$disconnect")


class TopologyError(RuntimeError):
    """The function table is malformed."""


@dataclass(frozen=True)
class Route:
    """One API route and how it is authorized (`auth`, one of AUTH_MODES):

    - "none": no authorizer; the event carries no claims.
    - "jwt": API Gateway's JWT authorizer (the Cognito user pool). A request without a valid
      token gets 401 and never reaches the function; a valid one reaches it with the token's
      claims in `requestContext.authorizer.jwt`.
    - "jwt-optional": anonymous requests are allowed (no Authorization header: no claims), but
      a request that sends a token must send a valid one (else 401) and then carries its
      claims; the GraphQL route, whose reads are public. API Gateway has no such mode on one
      route: in AWS it maps to an authorizer-less route whose function verifies any token it
      is sent, or to two routes; the infrastructure issue settles which. The local gateway
      (devstack.gateway) implements it directly.
    """

    method: str  # GET, POST, ... or ANY
    path: str  # API Gateway route path, e.g. /health or /auth/{proxy+}
    auth: str  # none | jwt | jwt-optional (AUTH_MODES)

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when this route serves the request, else None (API Gateway's
        matching: `{name}` is one segment, `{name+}` the rest of the path)."""
        if self.method not in ("ANY", method):
            return None
        pattern, names = _compiled(self.path)
        found = pattern.match(path)
        if found is None:
            return None
        return dict(zip(names, found.groups(), strict=True))


@cache
def _compiled(path: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    pattern = "^"
    names: list[str] = []
    for part in path.strip("/").split("/"):
        if part.startswith("{") and part.endswith("+}"):
            names.append(part[1:-2])
            pattern += "/(.+)"
        elif part.startswith("{") and part.endswith("}"):
            names.append(part[1:-1])
            pattern += "/([^/]+)"
        else:
            pattern += "/" + re.escape(part)
    return re.compile(pattern + "/?$"), tuple(names)


@dataclass(frozen=True)
class WebSocketSpec:
    """The function serves a WebSocket API (API Gateway's) at `path` of every region, for the
    route keys `routes` (docs/realtime.md, "The contract"). `return_response` lists the routes
    with a route response ("two-way": the Lambda's answer is sent back to the client; API
    Gateway allows it on `$default` only): `"returnResponse": ["$default"]`, none by default."""

    path: str  # /graphql: the same path as the HTTP API's, as graphql-ws clients expect
    routes: tuple[str, ...]  # of WEBSOCKET_ROUTES
    return_response: tuple[str, ...] = ()


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # module.function, relative to functions/ (the deployed code root)
    description: str
    routes: tuple[Route, ...]
    websocket: WebSocketSpec | None = None


def _websocket(name: str, raw: Any) -> WebSocketSpec | None:
    if raw is None:
        return None
    path = raw.get("path") if isinstance(raw, Mapping) else None
    routes = raw.get("routes") if isinstance(raw, Mapping) else None
    if not isinstance(path, str) or not path.startswith("/"):
        raise TopologyError(f"function {name}: websocket path must start with '/', got {path!r}")
    if not isinstance(routes, list) or not routes or any(r not in WEBSOCKET_ROUTES for r in routes):
        raise TopologyError(
            f"function {name}: websocket routes must be some of {', '.join(WEBSOCKET_ROUTES)}"
        )
    two_way = raw.get("returnResponse", [])
    if not isinstance(two_way, list) or any(r != "$default" or r not in routes for r in two_way):
        raise TopologyError(f"function {name}: only an integrated $default can return a response")
    return WebSocketSpec(path, tuple(routes), tuple(two_way))


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
            name,
            entry["handler"],
            entry.get("description", ""),
            tuple(routes),
            _websocket(name, entry.get("websocket")),
        )
    return functions


@cache
def load_functions() -> dict[str, FunctionSpec]:
    return parse_functions(cdk_context().get(CONTEXT_KEY, {}))

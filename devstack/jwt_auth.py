"""The local stand-in for API Gateway's HTTP API JWT authorizer: the verification itself is
`covenant.tokens.JwtVerifier` (shared with the GraphQL function); this module renders the
verified claims as API Gateway places them in the event (`authorizer_context()`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from covenant.tokens import JwtVerifier, Unauthorized

__all__ = ["JwtVerifier", "Unauthorized", "api_gateway_claim", "authorizer_context"]


def api_gateway_claim(value: Any) -> str:
    """One claim value as the HTTP API JWT authorizer hands it to the integration: always a
    string. Strings pass unchanged; numbers become their decimal text (`1795865600`, not
    `1.7958656E9`); booleans `true` / `false`; arrays `[a b]` (elements space-separated in
    brackets: Cognito's `cognito:groups: ["admin", "editor"]` arrives as `"[admin editor]"`,
    one group as `"[admin]"`); objects `map[k1:v1 k2:v2]` (keys sorted); null `<nil>`. The
    array and number forms are those of real events (public reports, events/ here); the others
    follow the same rendering (Go's `%v`) and are unverified: of them, Cognito tokens carry
    only booleans (`email_verified`, in ID tokens)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(api_gateway_claim(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{key}:{api_gateway_claim(value[key])}" for key in sorted(value))
        return "map[" + " ".join(items) + "]"
    if value is None:
        return "<nil>"
    return str(value)


def authorizer_context(
    claims: Mapping[str, Any], scopes: Sequence[str] | None = None
) -> dict[str, Any]:
    """`requestContext.authorizer` of a payload-2.0 event for a request the JWT authorizer let
    through: `{"jwt": {"claims": {...every value a string...}, "scopes": ...}}`. `scopes` is
    None unless the route requires authorization scopes (none of ours does): API Gateway
    leaves it null then, even when the token has a `scope` claim (which stays in `claims`)."""
    return {
        "jwt": {
            "claims": {name: api_gateway_claim(value) for name, value in claims.items()},
            "scopes": list(scopes) if scopes is not None else None,
        }
    }

"""Who is calling: the claims API Gateway's JWT authorizer verified and put into the event.

A function never sees an unverified token: in AWS the authorizer checks it, locally the gateway
does the same checks (devstack.jwt_auth). Claims arrive as strings (API Gateway renders every
claim value as text: `cognito:groups` as "[admin editor]", `iat` as "1795862000"). Roles are
the Cognito groups admin, editor and viewer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("admin", "editor", "viewer")


@dataclass(frozen=True)
class Caller:
    sub: str
    username: str  # the Cognito user name (a UUID in pools that sign in by email)
    email: str | None  # ID tokens carry it; access tokens do not
    groups: frozenset[str]
    token_use: str  # "access" or "id"
    issued_at: int | None  # `iat`, epoch seconds

    @property
    def sent_access_token(self) -> bool:
        """Whether the request carried an access token (else an ID token)."""
        return self.token_use == "access"  # noqa: S105 - a token type, not a secret

    def has_role(self, *roles: str) -> bool:
        return bool(self.groups.intersection(roles))

    def describe(self) -> dict[str, Any]:
        """How audit events name the actor."""
        return {
            "sub": self.sub,
            "username": self.username,
            "email": self.email,
            "roles": sorted(self.groups),
        }


def parse_groups(raw: Any) -> frozenset[str]:
    """`cognito:groups` as API Gateway passes it ("[admin editor]") or as a JSON list; only
    the known roles count."""
    if raw is None:
        return frozenset()
    if isinstance(raw, list | tuple):
        items = [str(item) for item in raw]
    else:
        items = str(raw).strip().strip("[]").replace(",", " ").split()
    return frozenset(item for item in items if item in ROLES)


def claims_of(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    context = event.get("requestContext") or {}
    claims = ((context.get("authorizer") or {}).get("jwt") or {}).get("claims")
    return claims if isinstance(claims, Mapping) else None


def caller_from_event(event: Mapping[str, Any]) -> Caller | None:
    """The verified caller of a request, or None when the request carries no claims."""
    claims = claims_of(event)
    if not claims or not claims.get("sub"):
        return None
    sub = str(claims["sub"])
    return Caller(
        sub=sub,
        username=str(claims.get("username") or claims.get("cognito:username") or sub),
        email=str(claims["email"]) if claims.get("email") else None,
        groups=parse_groups(claims.get("cognito:groups")),
        token_use=str(claims.get("token_use") or "access"),
        issued_at=issued_at(claims),
    )


def issued_at(claims: Mapping[str, Any]) -> int | None:
    """The token's `iat` in epoch seconds, None when absent or unreadable."""
    value = claims.get("iat")
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None

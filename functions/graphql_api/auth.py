"""Who is calling: the claims API Gateway's JWT authorizer verified and placed in the event.

The function never sees an unverified token: in AWS the authorizer checks it, locally the
gateway does the same checks. Roles are Cognito groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql_api.errors import Forbidden, Unauthenticated

ROLES = ("admin", "editor", "viewer")


@dataclass(frozen=True)
class Actor:
    sub: str | None
    username: str | None
    email: str | None  # ID tokens carry it; access tokens only the username
    groups: frozenset[str]

    @property
    def authenticated(self) -> bool:
        return self.sub is not None

    def describe(self) -> dict[str, Any]:
        """How audit events name the actor."""
        return {
            "sub": self.sub,
            "username": self.username,
            "email": self.email,
            "roles": sorted(self.groups),
        }

    def require(self, *roles: str) -> None:
        if not self.authenticated:
            raise Unauthenticated("Sign in to do this: send an access token as 'Bearer <token>'.")
        if not self.groups.intersection(roles):
            raise Forbidden(f"This needs the role {' or '.join(roles)}.", roles=list(roles))


ANONYMOUS = Actor(None, None, None, frozenset())


def parse_groups(raw: Any) -> frozenset[str]:
    """`cognito:groups` as API Gateway passes it: a list, or stringified like "[admin editor]"."""
    if raw is None:
        return frozenset()
    if isinstance(raw, list | tuple):
        items = [str(item) for item in raw]
    else:
        items = str(raw).strip().strip("[]").replace(",", " ").split()
    return frozenset(item for item in items if item in ROLES)


def actor_from_event(event: Mapping[str, Any]) -> Actor:
    context = event.get("requestContext") or {}
    claims = ((context.get("authorizer") or {}).get("jwt") or {}).get("claims")
    if not claims or not claims.get("sub"):
        return ANONYMOUS
    return Actor(
        sub=str(claims["sub"]),
        username=claims.get("username") or claims.get("cognito:username"),
        email=claims.get("email"),
        groups=parse_groups(claims.get("cognito:groups")),
    )

"""Who is calling. Roles are Cognito groups.

The GraphQL route accepts anonymous reads, so in AWS it has no JWT authorizer (an authorizer
refuses every request without a token): when a request sends a token, this function verifies
it itself with the same checks (`covenant.tokens`, the pool of COGNITO_USER_POOL_ID /
COGNITO_CLIENT_ID) and refuses a bad one with 401, as the authorizer would. Locally the
gateway verifies it first and places the claims in the event, as an authorizer does; claims
already in the event are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from covenant.identity import claims_of, issued_at, parse_groups
from graphql_api.errors import Forbidden, Unauthenticated


@dataclass(frozen=True)
class Actor:
    sub: str | None
    username: str | None
    email: str | None  # ID tokens carry it; access tokens only the username
    groups: frozenset[str]
    issued_at: int | None = None  # the token's `iat`: a sign-out refuses older tokens

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


class InvalidToken(Exception):
    """A token was sent and refused (the reason is for the log, never the client)."""


def actor_from_event(event: Mapping[str, Any]) -> Actor:
    """The caller; raises InvalidToken when a token was sent and does not verify."""
    claims = claims_of(event)
    if not claims:
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        authorization = headers.get("authorization")
        if not authorization:
            return ANONYMOUS
        claims = verify(authorization)
    return actor_from_claims(claims)


def verify(authorization: str) -> Mapping[str, Any]:
    """A token's claims, verified as API Gateway's JWT authorizer does; InvalidToken if not."""
    # Imported here: PyJWT and cryptography cost ~85 ms of cold start that anonymous
    # reads, and every request behind the local gateway, never need.
    from covenant.tokens import Unauthorized, verifier_from_env

    verifier = verifier_from_env()
    if verifier is None:
        raise InvalidToken("no user pool is configured to verify the token")
    try:
        return verifier.verify(authorization)
    except Unauthorized as exc:
        raise InvalidToken(str(exc)) from None


def actor_from_claims(claims: Mapping[str, Any]) -> Actor:
    if not claims.get("sub"):
        return ANONYMOUS
    return Actor(
        sub=str(claims["sub"]),
        username=claims.get("username") or claims.get("cognito:username"),
        email=claims.get("email"),
        groups=parse_groups(claims.get("cognito:groups")),
        issued_at=issued_at(claims),
    )

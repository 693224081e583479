"""Sign-out everywhere, as the functions enforce it.

Cognito's global sign-out revokes a user's refresh tokens, but API Gateway's JWT authorizer
only checks signature, issuer, audience and expiry: the access and ID tokens it already issued
stay valid for the authorizer until they expire (up to an hour here). So a sign-out also
records its time per user (`token_revocations`, on the primary), and a function refuses any
token of that user issued before it. `iat` has whole-second resolution: a token issued in the
same second as the sign-out is still accepted, so that signing in again right away works.
"""

from __future__ import annotations

from typing import Any, Protocol

from covenant.db import Database, Session, writer

# clock_timestamp(), not now(): the time of this statement, not of the transaction's start
# (a role change records it after its Cognito calls, in a transaction begun before them).
_RECORD = """
INSERT INTO token_revocations (sub, revoked_at) VALUES (:sub, clock_timestamp())
ON CONFLICT (sub) DO UPDATE SET revoked_at = EXCLUDED.revoked_at
"""

_REVOKED = """
SELECT EXISTS (
    SELECT 1 FROM token_revocations
    WHERE sub = :sub
      AND (CAST(:iat AS bigint) IS NULL
           OR CAST(:iat AS bigint) < floor(extract(epoch FROM revoked_at))::bigint)
)
"""


class Signed(Protocol):
    """A verified token's subject and issue time (covenant.identity.Caller, GraphQL's Actor)."""

    @property
    def sub(self) -> str | None: ...

    @property
    def issued_at(self) -> int | None: ...


class _Statements(Protocol):
    def run(self, sql: str, **params: Any) -> list[list[Any]]: ...


def record_sign_out(sub: str, database: Database | None = None) -> None:
    with (database or writer()).session() as session:
        revoke_tokens(session, sub)


def revoke_tokens(transaction: _Statements, sub: str) -> None:
    """Refuse every token of `sub` issued before now, inside the caller's transaction (a
    Session or a UnitOfWork): e.g. with the audit event of a role change, whose old tokens
    still carry the old groups. Cognito's refresh still works: the next token is newer."""
    transaction.run(_RECORD, sub=sub)


def is_revoked(session: Session, caller: Signed) -> bool:
    """True when the caller's token was issued before the user last signed out everywhere
    (a token without `iat` counts as issued before)."""
    if caller.sub is None:
        return False
    return bool(session.scalar(_REVOKED, sub=caller.sub, iat=caller.issued_at))

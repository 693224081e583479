"""Sign-out everywhere, as the functions enforce it.

Cognito's global sign-out revokes a user's refresh tokens, but API Gateway's JWT authorizer
only checks signature, issuer, audience and expiry: the access and ID tokens it already issued
stay valid for the authorizer until they expire (up to an hour here). So a sign-out also
records its time per user (`token_revocations`, on the primary), and a function refuses any
token of that user issued before it.

`iat` has whole-second resolution, so a token issued in the second of a sign-out cannot be told
from one issued just before it: both are refused (`iat <= floor(revoked_at)`), else a token
taken out in that second would keep the old rights (or the old groups, after a role change) for
its whole hour. So that signing in again right after a sign-out still works, the operation that
revoked waits, after its commit, until that second has passed (`wait_out_second`, at most 1 s
plus a margin for the clock skew between Cognito and the database) before it answers: a
sign-in that starts after the answer gets a token from a later second. (Cognito's `jti`,
`origin_jti` and `auth_time` do not help: a global sign-out revokes sessions this API never
saw, and `auth_time` has whole seconds too.)
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from covenant.db import Database, Session, writer

# clock_timestamp(), not now(): the time of this statement, not of the transaction's start
# (a role change records it after its Cognito calls, in a transaction begun before them).
_RECORD = """
INSERT INTO token_revocations (sub, revoked_at) VALUES (:sub, clock_timestamp())
ON CONFLICT (sub) DO UPDATE SET revoked_at = EXCLUDED.revoked_at
RETURNING extract(epoch FROM revoked_at)::float8
"""

_REVOKED = """
SELECT EXISTS (
    SELECT 1 FROM token_revocations
    WHERE sub = :sub
      AND (CAST(:iat AS bigint) IS NULL
           OR CAST(:iat AS bigint) <= floor(extract(epoch FROM revoked_at))::bigint)
)
"""


class Signed(Protocol):
    """A verified token's subject and issue time (covenant.identity.Caller, GraphQL's Actor)."""

    @property
    def sub(self) -> str | None: ...

    @property
    def issued_at(self) -> int | None: ...


# Cognito's clock and the database's may differ by a little (both follow NTP; locally they
# are one clock): the wait covers that much more.
CLOCK_SKEW_MARGIN_S = 0.1


class _Statements(Protocol):
    def run(self, sql: str, **params: Any) -> list[list[Any]]: ...


def record_sign_out(sub: str, database: Database | None = None) -> float:
    """Records the sign-out and returns its time (epoch seconds, the database's clock); the
    caller answers only after `wait_out_second` of it."""
    with (database or writer()).session() as session:
        return revoke_tokens(session, sub)


def revoke_tokens(transaction: _Statements, sub: str) -> float:
    """Refuse every token of `sub` issued before now or in the current second, inside the
    caller's transaction (a Session or a UnitOfWork): e.g. with the audit event of a role
    change, whose old tokens still carry the old groups. Returns the revocation's time (epoch
    seconds): once committed, `wait_out_second(it)` before answering, so that the next token
    Cognito issues (a sign-in, a refresh) is from a later second and accepted."""
    return float(transaction.run(_RECORD, sub=sub)[0][0])


def wait_out_second(revoked_at: float) -> None:
    """Sleeps until the second of `revoked_at` has passed on the database's clock (plus the
    skew margin), measured from now, which is after the commit: conservative."""
    remaining = math.floor(revoked_at) + 1 - revoked_at + CLOCK_SKEW_MARGIN_S
    if remaining > 0:
        time.sleep(remaining)


def is_revoked(session: Session, caller: Signed) -> bool:
    """True when the caller's token was issued before the user last signed out everywhere or
    in the same second (a token without `iat` counts as issued before)."""
    if caller.sub is None:
        return False
    return bool(session.scalar(_REVOKED, sub=caller.sub, iat=caller.issued_at))

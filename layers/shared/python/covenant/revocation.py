"""Sign-out everywhere, as the functions enforce it.

Cognito's global sign-out revokes a user's refresh tokens, but API Gateway's JWT authorizer
only checks signature, issuer, audience and expiry: the access and ID tokens it already issued
stay valid for the authorizer until they expire (up to an hour here). So a sign-out also
records its time per user (`token_revocations`, on the primary), and a function refuses any
token of that user issued before it. `iat` has whole-second resolution: a token issued in the
same second as the sign-out is still accepted, so that signing in again right away works.
"""

from __future__ import annotations

from covenant.db import Database, Session, writer
from covenant.identity import Caller

_RECORD = """
INSERT INTO token_revocations (sub, revoked_at) VALUES (:sub, now())
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


def record_sign_out(sub: str, database: Database | None = None) -> None:
    with (database or writer()).session() as session:
        session.run(_RECORD, sub=sub)


def is_revoked(session: Session, caller: Caller) -> bool:
    """True when the caller's token was issued before the user last signed out everywhere
    (a token without `iat` counts as issued before)."""
    return bool(session.scalar(_REVOKED, sub=caller.sub, iat=caller.issued_at))

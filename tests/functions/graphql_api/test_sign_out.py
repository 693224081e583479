"""Signing out everywhere (POST /auth/logout) ends a token's right to write through GraphQL
too: API Gateway would still accept the token until it expires, so the function refuses a
token issued before the user's last sign-out (covenant.revocation)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from covenant.revocation import record_sign_out

DELETE = "mutation ($id: ID!) { deleteProject(id: $id) { id } }"
READ = "{ sectors { id } }"


def _editor(sub: str, issued_at: float) -> dict[str, Any]:
    # Claims as API Gateway renders them: every value a string.
    return {"sub": sub, "cognito:groups": "[editor]", "iat": str(int(issued_at))}


@pytest.fixture
def signed_out(writer, wait_for_replica) -> tuple[str, float]:
    """A user who signed out everywhere just now (a sub no other test uses), as the replica
    the check reads has seen it."""
    sub = str(uuid.uuid4())
    before = time.time() - 5
    record_sign_out(sub, writer)
    wait_for_replica()
    return sub, before


def test_a_token_from_before_the_sign_out_cannot_write(gql, signed_out) -> None:
    sub, before = signed_out
    reply = gql(DELETE, {"id": str(uuid.uuid4())}, claims=_editor(sub, before))
    assert reply.status == 401, reply.body
    assert reply.codes == ["UNAUTHENTICATED"]
    assert "sign in again" in reply.errors[0]["message"]
    assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")
    # Refused before the operation ran: the only statement is the check itself.
    assert len(reply.statements) == 1, reply.statements


def test_a_token_issued_after_the_sign_out_writes(gql, signed_out) -> None:
    sub, _ = signed_out
    reply = gql(DELETE, {"id": str(uuid.uuid4())}, claims=_editor(sub, time.time() + 1))
    assert reply.status == 200, reply.body
    assert reply.codes == ["NOT_FOUND"]  # past the check: the resolver looked for the project


def test_a_token_issued_in_the_second_of_the_sign_out_cannot_write(gql, writer, wait_for_replica):
    """`iat` has whole seconds: a token of the sign-out's own second may predate it, so it is
    refused (the sign-out answers only once that second has passed, see test_auth)."""
    sub = str(uuid.uuid4())
    revoked_at = record_sign_out(sub, writer)
    wait_for_replica()
    reply = gql(DELETE, {"id": str(uuid.uuid4())}, claims=_editor(sub, revoked_at))
    assert reply.status == 401 and reply.codes == ["UNAUTHENTICATED"], reply.body
    later = gql(DELETE, {"id": str(uuid.uuid4())}, claims=_editor(sub, int(revoked_at) + 1))
    assert later.status == 200 and later.codes == ["NOT_FOUND"], later.body


def test_a_signed_out_token_still_reads_what_anyone_may(gql, signed_out) -> None:
    sub, before = signed_out
    reply = gql(READ, claims=_editor(sub, before))
    assert reply.status == 200 and not reply.errors, reply.body
    assert len(reply.data["sectors"]) == 6


def test_a_token_without_iat_counts_as_older_than_the_sign_out(gql, signed_out) -> None:
    sub, _ = signed_out
    reply = gql(
        DELETE, {"id": str(uuid.uuid4())}, claims={"sub": sub, "cognito:groups": "[editor]"}
    )
    assert reply.status == 401 and reply.codes == ["UNAUTHENTICATED"], reply.body


@pytest.mark.parametrize("failure", ["unavailable", "statement"])
def test_a_failed_check_is_a_clean_503_and_writes_nothing(gql, monkeypatch, failure) -> None:
    """Whatever the replica answers (unreachable, a statement timeout, a recovery conflict),
    the request gets a GraphQL answer with the request id, not an unhandled 500."""
    from pg8000.exceptions import DatabaseError

    from covenant.db import DatabaseUnavailable
    from graphql_api import api

    def broken(actor):
        if failure == "unavailable":
            raise DatabaseUnavailable("replica down")
        raise DatabaseError({"C": "57014", "M": "canceling statement due to statement timeout"})

    monkeypatch.setattr(api, "_signed_out", broken)
    reply = gql(DELETE, {"id": str(uuid.uuid4())}, claims=_editor(str(uuid.uuid4()), time.time()))
    assert reply.status == 503, reply.body
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    assert reply.errors[0]["extensions"]["requestId"]
    assert reply.statements == []

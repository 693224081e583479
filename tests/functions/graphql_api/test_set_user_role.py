"""setUserRole: only admins change roles (Cognito groups), the user ends with exactly the role
asked for, and an audit event records who changed what, only when the change happened."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from covenant import aws, db
from covenant.db import Database, Role
from graphql_api import users

SET_ROLE = """
mutation ($user: String!, $role: Role!) {
  setUserRole(input: {user: $user, role: $role}) {
    username email role previousRoles changed
  }
}
"""
REGION = "us-east-1"


@dataclass
class Pool:
    client: Any
    pool_id: str
    subs: dict[str, str]  # email -> sub

    def roles(self, email: str) -> list[str]:
        groups = self.client.admin_list_groups_for_user(UserPoolId=self.pool_id, Username=email)
        return sorted(g["GroupName"] for g in groups["Groups"])

    def claims(self, email: str, *groups: str) -> dict[str, str]:
        return {
            "sub": self.subs[email],
            "username": self.subs[email],
            "email": email,
            "cognito:groups": f"[{' '.join(groups)}]",
        }


@pytest.fixture
def pool() -> Iterator[Pool]:
    """A user pool in moto's in-process mock, as make dev provisions it: sign-in by email, the
    three role groups, an admin, an editor, and a user who is admin and viewer at once."""
    aws.forget_clients()  # clients made outside this mock would not reach it
    with mock_aws():
        client = boto3.client(
            "cognito-idp",
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        pool_id = client.create_user_pool(PoolName="covenant-test", UsernameAttributes=["email"])[
            "UserPool"
        ]["Id"]
        for group in ("admin", "editor", "viewer"):
            client.create_group(UserPoolId=pool_id, GroupName=group)
        subs = {}
        for email, groups in (
            ("boss@covenant.test", ["admin"]),
            ("pen@covenant.test", ["editor"]),
            ("reader@covenant.test", ["viewer"]),
            ("twohats@covenant.test", ["admin", "viewer"]),
        ):
            user = client.admin_create_user(
                UserPoolId=pool_id,
                Username=email,
                UserAttributes=[{"Name": "email", "Value": email}],
                MessageAction="SUPPRESS",
            )["User"]
            subs[email] = user["Username"]
            for group in groups:
                client.admin_add_user_to_group(UserPoolId=pool_id, Username=email, GroupName=group)
        yield Pool(client, pool_id, subs)
    aws.forget_clients()


@pytest.fixture
def set_role(gql, pool: Pool):
    def run(user: str, role: str, claims: dict[str, str] | None = None) -> Any:
        actor = pool.claims("boss@covenant.test", "admin") if claims is None else claims
        return gql(
            SET_ROLE,
            {"user": user, "role": role},
            claims=actor,
            environment={"COGNITO_USER_POOL_ID": pool.pool_id},
        )

    return run


def _audit_events(sub: str) -> list[dict[str, Any]]:
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT subject, aggregate_type, payload FROM outbox "
            "WHERE aggregate_id = :sub ORDER BY seq",
            sub=sub,
        )
    for row in rows:
        if isinstance(row["payload"], str):
            row["payload"] = json.loads(row["payload"])
    return rows


def test_an_admin_changes_a_role_and_the_audit_event_names_everyone(set_role, pool) -> None:
    reader = pool.subs["reader@covenant.test"]
    reply = set_role("reader@covenant.test", "EDITOR")
    assert reply.status == 200 and not reply.errors, reply.body
    assert reply.data["setUserRole"] == {
        "username": reader,
        "email": "reader@covenant.test",
        "role": "EDITOR",
        "previousRoles": ["VIEWER"],
        "changed": True,
    }
    assert pool.roles("reader@covenant.test") == ["editor"]
    [event] = _audit_events(reader)
    assert (event["subject"], event["aggregate_type"]) == ("audit.users.role_changed", "user")
    envelope = event["payload"]
    assert envelope["type"] == "audit.users.role_changed"
    assert envelope["subject"] == f"users/{reader}"
    assert envelope["source"] == "/covenant/ams/graphql"
    data = envelope["data"]
    assert data["actor"]["sub"] == pool.subs["boss@covenant.test"]
    assert data["actor"]["roles"] == ["admin"]
    assert data["user"] == {"sub": reader, "username": reader, "email": "reader@covenant.test"}
    assert data["changes"] == {"roles": {"from": ["viewer"], "to": ["editor"]}}
    assert data["requestId"]
    # The statements: the caller's sign-out check; then BEGIN, the per-user lock, the outbox
    # row, the revocation of the user's older tokens, COMMIT; then the primary's position.
    # Sent to ams: every one of them ran in the primary (handed off whole), none in ams.
    assert len(reply.statements) == 7, reply.statements


def test_the_user_ends_with_exactly_the_role_asked_for(set_role, pool) -> None:
    reply = set_role(pool.subs["twohats@covenant.test"], "EDITOR")  # by user name this time
    assert reply.data["setUserRole"]["previousRoles"] == ["ADMIN", "VIEWER"]
    assert pool.roles("twohats@covenant.test") == ["editor"]
    [event] = _audit_events(pool.subs["twohats@covenant.test"])
    assert event["payload"]["data"]["changes"]["roles"] == {
        "from": ["admin", "viewer"],
        "to": ["editor"],
    }


def test_asking_for_the_role_a_user_has_changes_and_records_nothing(set_role, pool) -> None:
    reply = set_role("pen@covenant.test", "EDITOR")
    assert reply.data["setUserRole"]["changed"] is False
    assert reply.data["setUserRole"]["previousRoles"] == ["EDITOR"]
    assert pool.roles("pen@covenant.test") == ["editor"]
    assert _audit_events(pool.subs["pen@covenant.test"]) == []


def test_a_demoted_editor_old_token_stops_writing_at_once(
    gql, set_role, pool, wait_for_replica
) -> None:
    """Tokens carry the groups they were issued with: a role change refuses the older ones,
    so an editor made viewer cannot keep writing until the token expires."""
    delete = "mutation ($id: ID!) { deleteProject(id: $id) { id } }"
    old = pool.claims("pen@covenant.test", "editor") | {"iat": str(int(time.time()) - 5)}
    before = gql(delete, {"id": str(uuid.uuid4())}, claims=old)
    assert before.codes == ["NOT_FOUND"], before.body  # the editor may delete
    assert set_role("pen@covenant.test", "VIEWER").data["setUserRole"]["changed"] is True
    wait_for_replica()  # the check reads the local replica, as a region's function does
    after = gql(delete, {"id": str(uuid.uuid4())}, claims=old)
    assert (after.status, after.codes) == (401, ["UNAUTHENTICATED"]), after.body
    # The refreshed token (issued after the change) carries the new group, and is refused
    # for what a viewer may not do.
    fresh = pool.claims("pen@covenant.test", "viewer") | {"iat": str(int(time.time()) + 1)}
    refreshed = gql(delete, {"id": str(uuid.uuid4())}, claims=fresh)
    assert (refreshed.status, refreshed.codes) == (200, ["FORBIDDEN"]), refreshed.body


def test_a_role_left_as_it_was_revokes_nothing(gql, set_role, pool) -> None:
    assert set_role("pen@covenant.test", "EDITOR").data["setUserRole"]["changed"] is False
    old = pool.claims("pen@covenant.test", "editor") | {"iat": str(int(time.time()) - 5)}
    reply = gql(
        "mutation ($id: ID!) { deleteProject(id: $id) { id } }",
        {"id": str(uuid.uuid4())},
        claims=old,
    )
    assert reply.codes == ["NOT_FOUND"], reply.body


def test_an_unknown_user_is_not_found(set_role) -> None:
    reply = set_role("nobody@covenant.test", "ADMIN")
    assert reply.codes == ["NOT_FOUND"]
    assert "nobody@covenant.test" in reply.errors[0]["message"]


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (None, "UNAUTHENTICATED"),
        ("editor", "FORBIDDEN"),
        ("viewer", "FORBIDDEN"),
    ],
)
def test_only_admins_change_roles(gql, pool, claims, code) -> None:
    actor = None
    if claims is not None:
        actor = pool.claims(f"{'pen' if claims == 'editor' else 'reader'}@covenant.test", claims)
    reply = gql(
        SET_ROLE,
        {"user": "pen@covenant.test", "role": "ADMIN"},
        claims=actor,
        environment={"COGNITO_USER_POOL_ID": pool.pool_id},
    )
    assert reply.codes == [code]
    assert reply.data == {"setUserRole": None}
    assert pool.roles("pen@covenant.test") == ["editor"]
    assert _audit_events(pool.subs["pen@covenant.test"]) == []


@pytest.mark.parametrize("user", ["", "   ", "two words", "x" * 129, "nul\x00user", "bell\x07user"])
def test_a_malformed_user_is_bad_input_naming_the_field(set_role, user) -> None:
    reply = set_role(user, "EDITOR")
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["field"] == "input.user"


def test_an_unknown_role_is_refused_before_anything_runs(set_role, pool) -> None:
    reply = set_role("pen@covenant.test", "OWNER")
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    assert "role" in reply.errors[0]["message"]
    assert pool.roles("pen@covenant.test") == ["editor"]


def test_an_admin_cannot_change_their_own_role(set_role, pool) -> None:
    reply = set_role("boss@covenant.test", "VIEWER")
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["field"] == "input.user"
    assert pool.roles("boss@covenant.test") == ["admin"]


def test_a_failed_cognito_call_changes_nothing_and_records_nothing(
    set_role, pool, monkeypatch
) -> None:
    """The new role was added, removing the old one was refused (once): the addition is undone
    and the audit event, written first, is rolled back."""
    client = users._client(users.Directory(pool.pool_id, REGION, None))
    remove = client.admin_remove_user_from_group
    refused: list[dict[str, Any]] = []

    def refuse_once(**kwargs: Any) -> None:
        if not refused:
            refused.append(kwargs)
            raise ClientError(
                {"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}},
                "AdminRemoveUserFromGroup",
            )
        remove(**kwargs)

    monkeypatch.setattr(client, "admin_remove_user_from_group", refuse_once)
    reply = set_role("reader@covenant.test", "ADMIN")
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    assert "user directory is unavailable" in reply.errors[0]["message"]
    assert "slow down" not in reply.errors[0]["message"]
    assert refused[0]["GroupName"] == "viewer"
    assert pool.roles("reader@covenant.test") == ["viewer"]
    assert _audit_events(pool.subs["reader@covenant.test"]) == []


def test_a_commit_that_fails_after_cognito_changed_puts_the_roles_back(
    set_role, pool, servers, monkeypatch
) -> None:
    """Cognito made the change, then the writer connection died before COMMIT: the event is
    not in the outbox, so the change is undone."""
    original = users.set_role

    def then_lose_the_connection(*args: Any, **kwargs: Any) -> list[users.Change]:
        done = original(*args, **kwargs)
        admin = Database(
            Role.WRITER, servers.writer_url, statement_timeout_ms=5000, connect_timeout_s=3
        )
        with admin.session() as session:
            killed = session.scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'covenant-writer' AND state = 'idle in transaction'"
            )
        admin.close()
        assert killed == 1
        return done

    monkeypatch.setattr(users, "set_role", then_lose_the_connection)
    reply = set_role("reader@covenant.test", "EDITOR")
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    assert pool.roles("reader@covenant.test") == ["viewer"]
    assert _audit_events(pool.subs["reader@covenant.test"]) == []


def test_the_last_admin_cannot_be_demoted(set_role, pool) -> None:
    assert set_role("twohats@covenant.test", "EDITOR").data["setUserRole"]["changed"]
    # An admin token of a user no longer admin in the pool (the others are revoked): the
    # one admin left is boss, whose demotion would leave none.
    actor = pool.claims("pen@covenant.test", "admin")
    reply = set_role("boss@covenant.test", "VIEWER", claims=actor)
    assert reply.codes == ["CONFLICT"], reply.body
    error = reply.errors[0]
    assert error["extensions"]["reason"] == "last_admin"
    assert "boss@covenant.test is the last admin" in error["message"]
    assert pool.roles("boss@covenant.test") == ["admin"]
    assert [e["subject"] for e in _audit_events(pool.subs["boss@covenant.test"])] == []


def test_two_admins_demoting_each_other_at_once_leave_one_admin(gql, pool, monkeypatch) -> None:
    """Both read the roles, then both change them: without one lock for the admin set, each
    sees the other admin and both demotions succeed, leaving none."""
    original = users.set_role
    both_read = threading.Barrier(2)

    def once_both_have_read(*args: Any, **kwargs: Any) -> list[users.Change]:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=3)  # with the lock, the other never gets here: 3 s
        return original(*args, **kwargs)

    monkeypatch.setattr(users, "set_role", once_both_have_read)
    boss, twohats = "boss@covenant.test", "twohats@covenant.test"

    def demote(user: str, actor: str) -> Any:
        return gql(
            SET_ROLE,
            {"user": user, "role": "EDITOR"},
            claims=pool.claims(actor, "admin"),
            environment={"COGNITO_USER_POOL_ID": pool.pool_id},
            region="iad",
        )

    with ThreadPoolExecutor(2) as workers:
        replies = list(workers.map(demote, [twohats, boss], [boss, twohats]))
    assert sorted(str(reply.codes) for reply in replies) == ["['CONFLICT']", "[]"], [
        reply.body for reply in replies
    ]
    assert [email for email in (boss, twohats) if "admin" in pool.roles(email)] != []


def test_the_schema_describes_what_a_role_change_does_to_tokens() -> None:
    """What GraphiQL shows: old tokens are refused at once (no longer "keep their old roles")."""
    from pathlib import Path

    from graphql import build_schema

    import graphql_api

    sdl = (Path(graphql_api.__file__).parent / "schema.graphql").read_text()
    field = build_schema(sdl).mutation_type.fields["setUserRole"]  # type: ignore[union-attr]
    description = field.description or ""
    assert "keep their old roles" not in description
    assert "refused" in description and "last_admin" in description

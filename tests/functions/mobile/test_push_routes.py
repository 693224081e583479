"""POST /devices, DELETE /devices/{id}, GET and PUT /follows through the deployed handler, from
a secondary region (the writes are handed to the primary's function): devices become SNS
platform endpoints in moto, follows are validated, a refused request changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sns.models import sns_backends

from covenant import db, notifications
from covenant.config import environment
from covenant.regions import primary_region
from devstack.consumers import platform_applications

from .conftest import token_claims

REGION = primary_region().aws_region


@pytest.fixture
def push_env(cognito: Any) -> dict[str, str]:
    env = {"SNS_ENDPOINT_URL": cognito.endpoint_url}
    with environment(env):
        env.update(platform_applications(notifications.sns()))
    return env


@pytest.fixture
def viewer(claims_of: Callable[..., dict[str, Any]], servers: Any) -> Iterator[dict[str, Any]]:
    """A signed-in viewer's claims, with no devices and no follows."""
    claims = claims_of("viewer")
    sub = token_claims(claims["_token"])["sub"]

    def forget() -> None:
        with db.writer().session() as session:
            session.run("DELETE FROM push_devices WHERE user_sub = :sub", sub=sub)
            session.run("DELETE FROM follows WHERE user_sub = :sub", sub=sub)

    forget()
    yield claims
    forget()


def endpoint(arn: str) -> Any:
    return sns_backends[DEFAULT_ACCOUNT_ID][REGION].platform_endpoints.get(arn)


def device_row(device_id: str) -> dict[str, Any] | None:
    with db.writer().session() as session:
        return session.one(
            "SELECT user_sub, platform, token, endpoint_arn FROM push_devices "
            "WHERE id = CAST(:id AS uuid)",
            id=device_id,
        )


def listed_follows(mobile: Any, claims: dict[str, Any], expected: dict[str, Any]) -> Any:
    """GET /follows once the region's replica has the last write (it reads the replica)."""
    deadline = time.monotonic() + 10
    while True:
        body = mobile("GET", "/follows", claims=claims, region="iad").body
        if body == expected or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def some_project() -> str:
    with db.writer().session() as session:
        return str(session.scalar("SELECT id::text FROM projects ORDER BY id LIMIT 1"))


def test_a_device_registers_once_and_is_removed_with_its_endpoint(
    mobile: Any, viewer: dict[str, Any], push_env: dict[str, str]
) -> None:
    token = uuid.uuid4().hex * 2  # an APNs token: 64 hex digits
    body = {"platform": "apns", "token": token}
    first = mobile("POST", "/devices", body=body, claims=viewer, env=push_env)
    assert first.status == 201, first.body
    assert set(first.body) == {"id", "platform", "createdAt"} and first.body["platform"] == "apns"
    row = device_row(first.body["id"])
    assert row is not None and row["token"] == token
    assert endpoint(row["endpoint_arn"]).token == token

    again = mobile("POST", "/devices", body=body, claims=viewer, env=push_env)
    assert again.status == 201 and again.body["id"] == first.body["id"]

    path = f"/devices/{first.body['id']}"
    removed = mobile("DELETE", path, claims=viewer, env=push_env)
    assert removed.status == 200 and removed.body == {"id": first.body["id"], "removed": True}
    assert device_row(first.body["id"]) is None
    assert endpoint(row["endpoint_arn"]) is None
    gone = mobile("DELETE", path, claims=viewer, env=push_env)
    assert gone.status == 404 and gone.code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"platform": "sms", "token": "a" * 64}, "platform"),
        ({"platform": "fcm", "token": "short"}, "token"),
        ({"platform": "fcm", "token": "has spaces " * 3}, "token"),
        ({"platform": "fcm"}, "token"),
        ({"platform": "fcm", "token": "a" * 64, "user": "someone-else"}, "user"),
    ],
)
def test_a_malformed_registration_is_400_naming_the_field(
    mobile: Any, viewer: dict[str, Any], push_env: dict[str, str], body: dict, field: str
) -> None:
    reply = mobile("POST", "/devices", body=body, claims=viewer, env=push_env)
    assert reply.status == 400 and reply.code == "BAD_USER_INPUT"
    assert reply.body["field"] == field


def test_registration_needs_a_configured_platform_and_a_device_limit(
    mobile: Any, viewer: dict[str, Any], push_env: dict[str, str]
) -> None:
    def register(platform: str, token: str, env: dict[str, str] = push_env) -> Any:
        body = {"platform": platform, "token": token}
        return mobile("POST", "/devices", body=body, claims=viewer, env=env)

    unconfigured = register(
        "fcm", "f" * 150, {**push_env, notifications.APPLICATION_ENV["fcm"]: ""}
    )
    assert unconfigured.status == 503 and "not configured" in unconfigured.body["message"]
    for n in range(notifications.MAX_DEVICES_PER_USER):
        assert register("apns", f"{n:064x}").status == 201
    over = register("apns", "e" * 64)
    assert over.status == 409 and over.code == "CONFLICT"


def test_a_device_is_removed_by_its_owner_only(
    mobile: Any,
    viewer: dict[str, Any],
    claims_of: Callable[..., dict[str, Any]],
    push_env: dict[str, str],
) -> None:
    mine = mobile(
        "POST",
        "/devices",
        body={"platform": "apns", "token": "c" * 64},
        claims=viewer,
        env=push_env,
    )
    other = mobile(
        "DELETE", f"/devices/{mine.body['id']}", claims=claims_of("editor"), env=push_env
    )
    assert other.status == 404
    assert device_row(mine.body["id"]) is not None
    malformed = mobile("DELETE", "/devices/not-an-id", claims=viewer, env=push_env)
    assert malformed.status == 400 and malformed.body["field"] == "id"


def test_follows_are_listed_and_replaced_and_validated(
    mobile: Any, viewer: dict[str, Any], push_env: dict[str, str]
) -> None:
    assert mobile("GET", "/follows", claims=viewer).body == {"projects": [], "countries": []}
    project = some_project()
    wanted = {"projects": [project, project], "countries": ["KEN", "BRA"]}
    reply = mobile("PUT", "/follows", body=wanted, claims=viewer, env=push_env)
    assert reply.status == 200, reply.body
    expected = {"projects": [project], "countries": ["BRA", "KEN"]}
    assert reply.body == expected
    assert listed_follows(mobile, viewer, expected) == expected

    unknown = str(uuid.uuid4())
    refused = mobile(
        "PUT",
        "/follows",
        body={"projects": [unknown], "countries": []},
        claims=viewer,
        env=push_env,
    )
    assert refused.status == 400 and refused.body["field"] == "projects"
    assert refused.body["unknown"] == [unknown]
    for body, field in [
        ({"projects": [], "countries": ["ke"]}, "countries"),
        ({"projects": [], "countries": ["XYZ"]}, "countries"),
        ({"projects": ["nope"], "countries": []}, "projects"),
        ({"projects": []}, "countries"),
        ({"projects": [], "countries": [], "users": []}, "users"),
    ]:
        bad = mobile("PUT", "/follows", body=body, claims=viewer, env=push_env)
        assert (bad.status, bad.body.get("field")) == (400, field), body
    # Nothing a refused request sent was written.
    with db.writer().session() as session:
        sub = token_claims(viewer["_token"])["sub"]
        assert notifications.follows_of(session, sub).body() == expected

"""Calls the deployed mobile handler with real-format API Gateway HTTP API v2 events (from
events/), against the session's PostgreSQL and a local Cognito user pool served by moto."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from covenant import db
from covenant.regions import get_region
from devstack.cognito import SEEDED_USERS, LocalCognito, start_local_cognito
from devstack.functions import get_function, invoke
from devstack.jwt_auth import authorizer_context
from devstack.processes import free_port

from ...handoff_fixture import PrimaryLambda, secondary_environment

EVENTS = Path(__file__).parents[3] / "events"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


BASE = load_event("auth_me.json")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    wire_bytes: int  # the body as it left the function (compressed when gzip)
    text: bytes = b""  # the body, uncompressed

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


def decode_reply(response: dict[str, Any]) -> Reply:
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    raw = response.get("body") or ""
    payload = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
    wire = len(payload)
    if headers.get("Content-Encoding") == "gzip":
        payload = gzip.decompress(payload)
    body = json.loads(payload) if payload else None
    return Reply(int(response["statusCode"]), headers, body, wire, payload)


def make_event(
    method: str,
    path: str,
    *,
    region: str = "ams",
    body: Any = None,
    claims: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    source_ip: str = "203.0.113.10",
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = copy.deepcopy(base or BASE)
    event["routeKey"] = f"{method} {path}"
    event["rawPath"] = f"/{region}{path}"
    context = event["requestContext"]
    context.pop("authorizer", None)
    context["stage"] = region
    context["routeKey"] = f"{method} {path}"
    context["http"]["method"] = method
    context["http"]["path"] = f"/{region}{path}"
    context["http"]["sourceIp"] = source_ip
    event["headers"] = {
        k: v for k, v in event["headers"].items() if k not in ("authorization", "content-type")
    }
    event["headers"].update({k.lower(): v for k, v in (headers or {}).items()})
    if claims is not None:
        claims = dict(claims)
        token = claims.pop("_token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
        context["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
        event["headers"].setdefault("authorization", f"Bearer {token}")
    event.pop("queryStringParameters", None)
    event["rawQueryString"] = ""
    if query:
        event["queryStringParameters"] = dict(query)
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    event.pop("body", None)
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
        event["headers"]["content-type"] = "application/json"
    return event


@pytest.fixture(scope="session")
def cognito() -> Iterator[LocalCognito]:
    server, pool = start_local_cognito(free_port())
    yield pool
    server.stop()


@pytest.fixture(scope="session")
def endpoints(servers: Any, cognito: LocalCognito) -> dict[str, str]:
    return {
        "DATABASE_URL": servers.writer_url,
        "DATABASE_READER_URL": servers.reader_url,
        **cognito.environment(),
    }


Call = Callable[..., Reply]


def invoke_mobile(
    primary: PrimaryLambda,
    endpoints: dict[str, str],
    event: dict[str, Any],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One invocation of the region's mobile function; in a secondary region, what writes is
    handed to the primary's function (through `primary`, with the same settings `env`)."""
    region = get_region(event["requestContext"]["stage"])
    hop = {} if region.primary else secondary_environment("mobile")
    with primary.configured({**endpoints, **(env or {})}):
        return dict(
            invoke(get_function("mobile"), region, event, {**endpoints, **hop, **(env or {})})
        )


@pytest.fixture
def mobile(endpoints: dict[str, str], primary_lambda: PrimaryLambda) -> Call:
    """mobile(method, path, *, body=None, claims=None, query=None, headers=None,
    region="ams", source_ip=..., env=None) -> Reply, through the deployed handler."""

    def run(
        method: str, path: str, *, env: dict[str, str] | None = None, **event_args: Any
    ) -> Reply:
        event = make_event(method, path, **event_args)
        return decode_reply(invoke_mobile(primary_lambda, endpoints, event, env))

    return run


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def gateway_claims(token: str) -> dict[str, Any]:
    """The claims of a real token as API Gateway's JWT authorizer hands them to the function
    (every value a string), plus the token itself for the Authorization header."""
    claims = authorizer_context(token_claims(token))["jwt"]["claims"]
    return {**claims, "_token": token}


def seeded(group: str) -> Any:
    return next(user for user in SEEDED_USERS if user.group == group)


@pytest.fixture
def claims_of(cognito: LocalCognito) -> Callable[..., dict[str, Any]]:
    """claims_of("editor") -> the access token's claims as the function receives them."""

    def make(group: str, token: str = "AccessToken") -> dict[str, Any]:
        user = seeded(group)
        return gateway_claims(cognito.login(user.email, user.password)[token])

    return make


def wait_for_lock_waiters(count: int, deadline_s: float = 30) -> None:
    """Returns once `count` sessions of the primary wait on a lock (e.g. pushes queued behind
    a row lock): a test orders concurrent requests by this, never by sleeping."""
    give_up = time.monotonic() + deadline_s
    while True:
        with db.writer().session() as session:
            waiting = int(
                session.scalar(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        if waiting >= count:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"{waiting} session(s) wait on a lock, expected {count}")
        time.sleep(0.02)


@pytest.fixture
def clean_auth_failures(servers: Any) -> Iterator[None]:
    def clear() -> None:
        with db.writer().session() as session:
            session.run("DELETE FROM auth_failures")

    clear()
    yield
    clear()

"""The whole local path a client takes: a Cognito token from the local user pool, the
gateway verifying it as API Gateway's JWT authorizer would, the GraphQL handler acting on
the claims."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db
from devstack.cognito import SEEDED_USERS, LocalCognito, start_local_cognito
from devstack.gateway import Gateway
from devstack.jwt_auth import JwtVerifier
from devstack.processes import free_port

from ..mangled import NOT_UTF8, send_raw

CREATE = (
    'mutation { createProject(input: {name: "Gateway Path Probe", sectorId: "health", '
    'countryCode: "NZL", budgetUsd: 2500000}) { id region { code } } }'
)


@pytest.fixture(scope="module")
def cognito() -> Iterator[LocalCognito]:
    server, pool = start_local_cognito(free_port())
    yield pool
    server.stop()


@pytest.fixture(scope="module")
def gateway(servers, cognito: LocalCognito) -> Iterator[Gateway]:
    verifier = JwtVerifier(
        issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    # The secondaries' writes reach the primary's function through their hops.
    server = Gateway(
        free_port(),
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
        },
        verifier=verifier,
    )
    server.serve_in_thread()
    yield server
    server.shutdown()
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE name = 'Gateway Path Probe'")


def _token(cognito: LocalCognito, group: str) -> str:
    user = next(u for u in SEEDED_USERS if u.group == group)
    return str(cognito.login(user.email, user.password)["AccessToken"])


def _post(gateway: Gateway, query: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "Accept": "application/graphql-response+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{gateway.url}/syd/graphql",
        data=json.dumps({"query": query}).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_an_editor_token_creates_a_project(gateway, cognito) -> None:
    token = _token(cognito, "editor")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    status, body = _post(gateway, CREATE, token)
    assert status == 200, body
    assert body["data"]["createProject"]["region"] == {"code": "syd"}
    with db.writer().session() as session:
        actor = session.scalar(
            "SELECT payload->'data'->'actor'->>'sub' FROM outbox "
            "WHERE subject = 'audit.projects.created' AND aggregate_id = :id",
            id=body["data"]["createProject"]["id"],
        )
    assert actor == claims["sub"]


def test_a_viewer_token_is_forbidden_to_write(gateway, cognito) -> None:
    status, body = _post(gateway, CREATE, _token(cognito, "viewer"))
    assert status == 200
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]


def test_no_token_reads_but_cannot_write(gateway) -> None:
    status, body = _post(gateway, "{ sectors { id } }")
    assert status == 200 and len(body["data"]["sectors"]) == 6
    status, body = _post(gateway, CREATE)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_another_method_is_a_405_through_the_gateway_not_a_404(gateway, method) -> None:
    """GraphQL over HTTP: the endpoint exists, only the method is wrong (the graphql-http
    audit expected 405; the gateway, like API Gateway with no route for the method, said 404)."""
    request = urllib.request.Request(
        f"{gateway.url}/syd/graphql",
        data=json.dumps({"query": "{ sectors { id } }"}).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 405
    assert raised.value.headers["Allow"] == "GET, POST"
    assert json.loads(raised.value.read())["errors"][0]["message"] == (
        f"{method} is not allowed: use POST, or GET for queries"
    )


def test_a_forged_token_never_reaches_the_function(gateway, cognito) -> None:
    header, payload, signature = _token(cognito, "viewer").split(".")
    forged = ".".join([header, payload[:-4] + "AAAA", signature])
    status, body = _post(gateway, CREATE, forged)
    assert (status, body) == (401, {"message": "Unauthorized"})
    status, body = _post(gateway, "{ sectors { id } }", "not-a-jwt")
    assert (status, body) == (401, {"message": "Unauthorized"})


@pytest.mark.parametrize("method", ["POST", "GET", "OPTIONS"])
def test_a_body_that_is_not_utf8_gets_a_400_through_the_gateway(gateway, method) -> None:
    """The gateway passes it base64-encoded, as API Gateway does; the function answers 400
    (it used to be no answer at all: the gateway could not decode it)."""
    for name, raw in NOT_UTF8.items():
        for content_type in ("application/json", "application/octet-stream"):
            status, _, body = send_raw(
                f"{gateway.url}/ams/graphql?query=%7B%20sectors%20%7B%20id%20%7D%20%7D",
                method,
                raw,
                {"Content-Type": content_type, "Accept": "application/graphql-response+json"},
            )
            assert status == 400, (name, content_type, body)
            (error,) = body["errors"]
            assert error["message"].startswith("The body is not UTF-8 text ("), (name, error)
            assert error["extensions"] == {"code": "BAD_USER_INPUT"}


# In AWS the GraphQL route has no authorizer (anonymous reads are allowed): the function itself
# verifies a token that is sent, against the pool in its environment.


def _aws_call(gql, cognito: LocalCognito, token: str | None, **environment: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    env = {
        "COGNITO_USER_POOL_ID": cognito.user_pool_id,
        "COGNITO_CLIENT_ID": cognito.client_id,
        "COGNITO_ENDPOINT_URL": cognito.endpoint_url,
        **environment,
    }
    return gql(CREATE, headers=headers, region="sfo", environment=env)


def test_without_an_authorizer_the_function_verifies_the_token_itself(gql, cognito) -> None:
    reply = _aws_call(gql, cognito, _token(cognito, "editor"))
    assert reply.status == 200, reply.body
    assert reply.data["createProject"]["region"] == {"code": "syd"}  # NZL's home region
    reply = _aws_call(gql, cognito, _token(cognito, "viewer"))
    assert reply.codes == ["FORBIDDEN"]
    assert _aws_call(gql, cognito, None).codes == ["UNAUTHENTICATED"]


def test_without_an_authorizer_a_bad_token_is_refused_with_401(gql, cognito) -> None:
    def probes() -> int:
        with db.writer().session() as session:
            return int(
                session.scalar("SELECT count(*) FROM projects WHERE name = 'Gateway Path Probe'")
            )

    before = probes()
    header, payload, signature = _token(cognito, "admin").split(".")
    forged = ".".join([header, payload[:-4] + "AAAA", signature])
    for token in (forged, "not-a-jwt", header + "." + payload + "."):
        reply = _aws_call(gql, cognito, token)
        assert reply.status == 401, reply.body
        assert reply.codes == ["UNAUTHENTICATED"]
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    # A valid token of the pool, for another app client: the audience does not match.
    reply = _aws_call(gql, cognito, _token(cognito, "admin"), COGNITO_CLIENT_ID="other")
    assert reply.status == 401
    assert probes() == before


def test_an_admin_changes_a_role_that_the_next_sign_in_carries(servers, cognito) -> None:
    """setUserRole against the local pool as `make dev` serves it (moto server), with the
    functions' Cognito environment: the viewer becomes an editor, and their next token says so."""
    verifier = JwtVerifier(
        issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    server = Gateway(
        free_port(),
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
            **cognito.environment(),
        },
        verifier=verifier,
    )
    server.serve_in_thread()
    viewer = next(u for u in SEEDED_USERS if u.group == "viewer")
    change = (
        'mutation { setUserRole(input: {user: "%s", role: %s}) { role previousRoles changed } }'
    )
    # The primary's function calls the same user pool (Cognito lives in the primary region).
    try:
        status, body = _post(server, change % (viewer.email, "EDITOR"), _token(cognito, "admin"))
        assert status == 200, body
        assert body["data"]["setUserRole"] == {
            "role": "EDITOR",
            "previousRoles": ["VIEWER"],
            "changed": True,
        }
        token = _token(cognito, "viewer")  # signs in as the (former) viewer
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["cognito:groups"] == ["editor"]
        status, body = _post(server, change % (viewer.email, "VIEWER"), _token(cognito, "editor"))
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    finally:
        client = cognito.client()
        for group in ("admin", "editor"):
            client.admin_remove_user_from_group(
                UserPoolId=cognito.user_pool_id, Username=viewer.email, GroupName=group
            )
        client.admin_add_user_to_group(
            UserPoolId=cognito.user_pool_id, Username=viewer.email, GroupName="viewer"
        )
        server.shutdown()

"""Cognito threat protection sees the caller, not the function: every sign-in carries
SECRET_HASH and UserContextData (API Gateway's sourceIp, plus the app's encoded context data
when sent) on the confidential client; refresh sends the client secret through
GetTokensFromRefreshToken; the secret is never logged.

The local pool is confidential like the deployed one, and devstack's moto refuses a missing or
wrong SECRET_HASH, so the calls below are checked by the server, not only recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from covenant import aws
from devstack.cognito import LocalCognito, secret_hash
from devstack.cognito import cognito_client as local_client

from .conftest import make_event, seeded

pytestmark = pytest.mark.usefixtures("clean_auth_failures")


@pytest.fixture
def sent(cognito: LocalCognito) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The parameters of every Cognito call the function makes, by operation name."""
    calls: dict[str, list[dict[str, Any]]] = {}

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.setdefault(model.name, []).append(dict(params))

    client = aws.client(
        "cognito-idp", aws.user_pool_region(cognito.user_pool_id), cognito.endpoint_url
    )
    client.meta.events.register("provide-client-params.cognito-idp.*", record)
    yield calls
    client.meta.events.unregister("provide-client-params.cognito-idp.*", record)


def test_sign_in_sends_secret_hash_and_the_callers_address_and_context(
    mobile, cognito, sent
) -> None:
    user = seeded("viewer")
    reply = mobile(
        "POST",
        "/auth/login",
        body={"email": user.email, "password": user.password, "user_context_data": "ENC0DED"},
        source_ip="198.51.100.7",
    )
    assert reply.status == 200, reply.body
    (call,) = sent["InitiateAuth"]
    assert call["AuthParameters"]["SECRET_HASH"] == secret_hash(
        cognito.client_secret, user.email, cognito.client_id
    )
    assert call["UserContextData"] == {"IpAddress": "198.51.100.7", "EncodedData": "ENC0DED"}


def test_sign_in_without_context_data_still_sends_the_address(mobile, sent) -> None:
    user = seeded("viewer")
    reply = mobile(
        "POST",
        "/auth/login",
        body={"email": user.email, "password": user.password},
        source_ip="2001:db8::5",
    )
    assert reply.status == 200, reply.body
    assert sent["InitiateAuth"][0]["UserContextData"] == {"IpAddress": "2001:db8::5"}


def test_register_signs_the_new_account_in_with_the_callers_context(mobile, sent) -> None:
    reply = mobile(
        "POST",
        "/auth/register",
        body={
            "email": f"tp-{uuid.uuid4().hex[:10]}@example.org",
            "password": "Fresh-Account-2026!",
            "name": "Ada",
            "user_context_data": "ENC",
        },
        source_ip="192.0.2.44",
    )
    assert reply.status == 201, reply.body
    assert sent["InitiateAuth"][0]["UserContextData"] == {
        "IpAddress": "192.0.2.44",
        "EncodedData": "ENC",
    }
    assert "SECRET_HASH" in sent["InitiateAuth"][0]["AuthParameters"]


def test_refresh_sends_the_client_secret_through_get_tokens_from_refresh_token(
    mobile, cognito, sent
) -> None:
    user = seeded("editor")
    session = cognito.login(user.email, user.password)
    reply = mobile("POST", "/auth/refresh", body={"refresh_token": session["RefreshToken"]})
    assert reply.status == 200, reply.body
    (call,) = sent["GetTokensFromRefreshToken"]
    assert call["ClientSecret"] == cognito.client_secret
    assert "InitiateAuth" not in sent


def test_context_data_of_the_wrong_shape_is_refused(mobile) -> None:
    user = seeded("viewer")
    for bad in (42, "", "x" * (16 * 1024 + 1)):
        reply = mobile(
            "POST",
            "/auth/login",
            body={"email": user.email, "password": user.password, "user_context_data": bad},
        )
        assert reply.status == 400 and reply.body["field"] == "user_context_data"


def test_the_local_pool_is_confidential_and_checks_what_cognito_checks(cognito) -> None:
    client = local_client(cognito.endpoint_url, cognito.region)
    described = client.describe_user_pool_client(
        UserPoolId=cognito.user_pool_id, ClientId=cognito.client_id
    )["UserPoolClient"]
    assert described["ClientSecret"] == cognito.client_secret
    assert described["EnablePropagateAdditionalUserContextData"] is True
    assert cognito.client_secret not in repr(cognito)
    user = seeded("viewer")
    for parameters in (
        {"USERNAME": user.email, "PASSWORD": user.password},
        {"USERNAME": user.email, "PASSWORD": user.password, "SECRET_HASH": "d3Jvbmc="},
    ):
        with pytest.raises(ClientError, match="NotAuthorized"):
            client.initiate_auth(
                ClientId=cognito.client_id, AuthFlow="USER_PASSWORD_AUTH", AuthParameters=parameters
            )
    refresh_token = cognito.login(user.email, user.password)["RefreshToken"]
    with pytest.raises(ClientError, match="NotAuthorized"):
        client.get_tokens_from_refresh_token(
            RefreshToken=refresh_token, ClientId=cognito.client_id, ClientSecret="w" * 36
        )
    answer = client.get_tokens_from_refresh_token(
        RefreshToken=refresh_token, ClientId=cognito.client_id, ClientSecret=cognito.client_secret
    )["AuthenticationResult"]
    assert answer["AccessToken"] and "RefreshToken" not in answer


# Every log line of a fresh process, root logger at DEBUG (as Lambda's log-level control
# sets it with AWS_LAMBDA_LOG_LEVEL=DEBUG), while the mobile handler signs in, refreshes and
# registers: botocore would print the DescribeUserPoolClient answer and the refresh request.
# In the primary region, whose function makes the Cognito calls (a secondary hands them over).
_INVOKE_AT_DEBUG = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from covenant.regions import get_region
from devstack.functions import get_function, invoke
events = json.loads(open(sys.argv[1]).read())
endpoints = json.loads(sys.argv[3])
responses = [invoke(get_function("mobile"), get_region("iad"), e, endpoints) for e in events]
open(sys.argv[2], "w").write(json.dumps(responses))
"""


def test_the_client_secret_is_never_logged_even_at_debug(
    endpoints, cognito, tmp_path: Path
) -> None:
    user = seeded("editor")
    session = cognito.login(user.email, user.password)
    events = [
        make_event(
            "POST",
            "/auth/login",
            region="iad",
            body={"email": user.email, "password": user.password},
        ),
        make_event(
            "POST", "/auth/refresh", region="iad", body={"refresh_token": session["RefreshToken"]}
        ),
    ]
    (tmp_path / "events.json").write_text(json.dumps(events))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _INVOKE_AT_DEBUG,
            str(tmp_path / "events.json"),
            str(tmp_path / "responses.json"),
            json.dumps(endpoints),
        ],
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "POWERTOOLS_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    responses = json.loads((tmp_path / "responses.json").read_text())
    assert [r["statusCode"] for r in responses] == [200, 200], responses
    logged = result.stdout + result.stderr
    assert "DEBUG" in logged  # debug lines were written: the check below means something
    leaked = {
        name
        for name, secret in {
            "client secret": cognito.client_secret,
            "password": user.password,
            "refresh token": session["RefreshToken"],
        }.items()
        if secret in logged
    }
    assert leaked == set()

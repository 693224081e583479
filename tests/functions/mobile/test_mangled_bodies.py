"""Bodies mangled at the byte level, sent to every route of the mobile function as API Gateway
hands them over (base64, `isBase64Encoded`): a body that is not UTF-8 gets the mobile 400
(`BAD_USER_INPUT`, field `body`) on every route, before the route runs; nothing is a 5xx."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ..mangled import MALFORMED_TEXT, NOT_UTF8, assert_not_utf8
from .conftest import Reply, decode_reply, gateway_claims, invoke_mobile, make_event, seeded

ROUTES = [
    ("GET", "/health"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/register"),
    ("GET", "/auth/me"),
    ("POST", "/auth/logout"),
    ("GET", "/sync"),
    ("POST", "/sync"),
    ("POST", "/devices"),
    ("DELETE", "/devices/00000000-0000-4000-8000-000000000000"),
    ("GET", "/follows"),
    ("PUT", "/follows"),
]
# behind API Gateway's JWT authorizer
SIGNED_IN = {
    "/auth/me",
    "/auth/logout",
    "/sync",
    "/devices",
    "/devices/00000000-0000-4000-8000-000000000000",
    "/follows",
}
READS_A_BODY = {
    "/auth/login",
    "/auth/refresh",
    "/auth/register",
    "POST /sync",
    "/devices",
    "PUT /follows",
}


@pytest.fixture(scope="module")
def editor(cognito) -> dict[str, Any]:
    user = seeded("editor")
    return gateway_claims(cognito.login(user.email, user.password)["AccessToken"])


@pytest.fixture
def call(endpoints, primary_lambda):
    """The ams mobile function, which hands its writes to the primary's function (served by
    the tests' Lambda stand-in)."""

    def run(event: dict[str, Any]) -> Reply:
        return decode_reply(invoke_mobile(primary_lambda, endpoints, event))

    return run


def _send(call, editor, method: str, path: str, raw: bytes) -> Reply:
    event = make_event(
        method,
        path,
        claims=editor if path in SIGNED_IN else None,
        query={"last_pulled_at": "0"} if path == "/sync" else None,
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    event["body"] = base64.b64encode(raw).decode()
    event["isBase64Encoded"] = True
    return call(event)


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("name", list(NOT_UTF8))
def test_a_body_that_is_not_utf8_is_400_on_every_route(call, editor, method, path, name) -> None:
    raw = NOT_UTF8[name]
    assert_not_utf8(raw)
    reply = _send(call, editor, method, path, raw)
    assert reply.status == 400, reply.body
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert reply.body["field"] == "body"
    assert reply.body["rule"] == "must be UTF-8 text"
    assert reply.body["message"].startswith("The request body is not UTF-8 text (")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xfb", "invalid start byte: byte 0xFB at offset 0"),
        (b'{"email": "caf\xc3"}', "invalid continuation byte: byte 0xC3 at offset 14"),
        ('{"email": "€'.encode()[:-1], "unexpected end of data: byte 0xE2 at offset 11"),
    ],
)
def test_the_400_says_which_byte_is_wrong(call, editor, raw, why) -> None:
    reply = _send(call, editor, "POST", "/auth/login", raw)
    assert reply.body["message"] == f"The request body is not UTF-8 text ({why})."


@pytest.mark.parametrize(
    ("method", "path"),
    # Sign-out would end the editor's session; removing a device no one has answers 404.
    [r for r in ROUTES if r[1] != "/auth/logout" and r[0] != "DELETE"],
)
@pytest.mark.parametrize("name", list(MALFORMED_TEXT))
def test_utf8_that_is_no_request_is_never_5xx(call, editor, method, path, name) -> None:
    """Routes that read a body refuse it with 400; the others (sign-out aside: it would end the
    editor's session) ignore it, as they ignore any body."""
    reply = _send(call, editor, method, path, MALFORMED_TEXT[name])
    if path in READS_A_BODY or f"{method} {path}" in READS_A_BODY:
        assert reply.status == 400, reply.body
        assert reply.body["code"] == "BAD_USER_INPUT"
    else:
        assert reply.status == 200, reply.body


def test_base64_that_does_not_decode_is_400(call) -> None:
    event = make_event("POST", "/auth/login", body="{}")
    event["body"] = "not base64!"
    event["isBase64Encoded"] = True
    reply = call(event)
    assert reply.status == 400
    assert reply.body == {
        "code": "BAD_USER_INPUT",
        "message": "The request body is flagged base64 but is not valid base64.",
        "field": "body",
    }


def test_a_body_string_holding_a_lone_surrogate_is_400(call) -> None:
    event = make_event("POST", "/auth/login", body='{"email": "\ud800"}')
    reply = call(event)
    assert reply.status == 400
    assert reply.body["message"] == (
        "The request body is not UTF-8 text (an unpaired surrogate U+D800 at character 11)."
    )

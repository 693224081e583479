"""Bodies mangled at the byte level, sent to every route of the GraphQL function as API
Gateway hands them over (base64, `isBase64Encoded`): a body that is not UTF-8 is a malformed
request under GraphQL over HTTP, 400 on every route; nothing is ever a 5xx."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ..mangled import MALFORMED_TEXT, NOT_UTF8, assert_not_utf8
from .conftest import EDITOR, Reply, call, make_event

GRAPHQL_RESPONSE = "application/graphql-response+json; charset=utf-8"
SECTORS = "{ sectors { id } }"
ROUTES = ["POST", "GET", "OPTIONS"]


def _send(servers: Any, method: str, raw: bytes, accept: str | None = None) -> Reply:
    event = make_event(
        query=SECTORS,
        method=method,
        claims=EDITOR,
        query_params={"query": SECTORS},
        headers={"Origin": "https://app.example"},
    )
    if accept is not None:
        event["headers"]["accept"] = accept
    event["body"] = base64.b64encode(raw).decode()
    event["isBase64Encoded"] = True
    return call(servers, event, CORS_ALLOWED_ORIGINS="https://app.example")


@pytest.mark.parametrize("method", ROUTES)
@pytest.mark.parametrize("name", list(NOT_UTF8))
def test_a_body_that_is_not_utf8_is_400_on_every_route(servers, method, name) -> None:
    raw = NOT_UTF8[name]
    assert_not_utf8(raw)
    reply = _send(servers, method, raw)
    assert reply.status == 400, reply.body
    assert reply.headers["Content-Type"] == GRAPHQL_RESPONSE
    (error,) = reply.body["errors"]
    assert error["message"].startswith("The body is not UTF-8 text (")
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "data" not in reply.body
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xfb", "invalid start byte: byte 0xFB at offset 0"),
        ('{"query": "€'.encode()[:-1], "unexpected end of data: byte 0xE2 at offset 11"),
        (b'{"query": "caf\xc3"}', "invalid continuation byte: byte 0xC3 at offset 14"),
        ('{"query": "{ sectors { id } }"}'.encode("utf-16"), "invalid start byte: byte 0xFF"),
    ],
)
def test_the_400_says_which_byte_is_wrong(servers, raw, why) -> None:
    reply = _send(servers, "POST", raw)
    assert reply.status == 400
    assert reply.body["errors"][0]["message"].startswith(f"The body is not UTF-8 text ({why}")


def test_an_application_json_client_gets_the_400_as_application_json(servers) -> None:
    reply = _send(servers, "POST", b"\xfb", accept="application/json")
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    reply = _send(servers, "POST", b"\xfb", accept="text/html")  # no acceptable type: still 400
    assert reply.status == 400


def test_a_utf8_byte_order_mark_is_ignored(servers) -> None:
    reply = _send(servers, "POST", b'\xef\xbb\xbf{"query": "{ sectors { id } }"}')
    assert reply.status == 200, reply.body
    assert len(reply.body["data"]["sectors"]) == 6


@pytest.mark.parametrize("name", list(MALFORMED_TEXT))
def test_utf8_that_is_no_request_is_400_and_never_5xx(servers, name) -> None:
    raw = MALFORMED_TEXT[name]
    reply = _send(servers, "POST", raw)
    assert reply.status == 400, reply.body
    assert [e["extensions"]["code"] for e in reply.body["errors"]] == ["BAD_USER_INPUT"]
    for method in ("GET", "OPTIONS"):  # these read no body: text is no reason to refuse
        assert _send(servers, method, raw).status in (200, 204)


def test_a_body_string_holding_a_lone_surrogate_is_400(servers) -> None:
    """API Gateway never sends one (its events are UTF-8 JSON), but an event built otherwise
    may: refused as not UTF-8, not a 500 from encoding it."""
    event = make_event(body='{"query": "{ sectors { id } }", "x": "\ud800"}')
    reply = call(servers, event)
    assert reply.status == 400
    assert reply.body["errors"][0]["message"] == (
        "The body is not UTF-8 text (an unpaired surrogate U+D800 at character 38)"
    )

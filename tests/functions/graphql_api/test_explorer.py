"""The explorer page as the GraphQL function serves it: where its subscriptions go, and a
Content-Security-Policy that lets it reach its own origin and its region's WebSocket API, and
nothing broader. (A real browser running it: test_explorer_browser.py.)"""

from __future__ import annotations

import json

import pytest

from graphql_api.explorer import ASSETS, CovenantExplorer, page_origin

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
WSS = "wss://a1b2c3.execute-api.ap-southeast-2.amazonaws.com/syd"


def _policy(header: str) -> dict[str, str]:
    directives = (d.strip().split(" ", 1) for d in header.split(";"))
    return {name: rest for name, rest in directives}


def test_the_page_subscribes_at_the_configured_url_and_may_connect_nowhere_else(gql) -> None:
    reply = gql(
        method="GET",
        region="syd",
        headers={
            "Accept": BROWSER_ACCEPT,
            "Host": "api-syd.covenant.example",
            "X-Forwarded-Proto": "https",
        },
        environment={"GRAPHQL_SUBSCRIPTIONS_URL": WSS},
    )
    assert reply.status == 200
    policy = _policy(reply.headers["Content-Security-Policy"])
    # Its own origin over HTTPS (queries, mutations) and the one WebSocket URL: not 'self',
    # which would also let it open a WebSocket to any path of its host.
    assert policy["connect-src"] == f"https://api-syd.covenant.example {WSS}"
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert f"const subscriptionUrl = {json.dumps(WSS)};" in reply.body
    # Every asset is pinned by its Subresource Integrity, graphql-ws's browser build included.
    for asset in ASSETS:
        assert f'{asset.path}" integrity="{asset.integrity}"' in reply.body, asset.path
    assert "graphql-ws@6.4.2/umd/graphql-ws.min.js" in reply.body


def test_without_a_websocket_api_the_page_only_reaches_its_origin(gql) -> None:
    reply = gql(method="GET", headers={"Accept": BROWSER_ACCEPT, "Host": "127.0.0.1:8000"})
    policy = _policy(reply.headers["Content-Security-Policy"])
    assert policy["connect-src"] == "http://127.0.0.1:8000"  # the local gateway: plain HTTP
    assert "const subscriptionUrl = null;" in reply.body


def test_the_inline_code_runs_by_its_hash_alone() -> None:
    policy = _policy(
        CovenantExplorer("t", "/_assets", "ws://127.0.0.1:8000/ams/graphql").content_security_policy
    )
    assert policy["script-src"].startswith("'self' 'sha256-")
    assert "unsafe" not in " ".join(policy.values())
    cdn = _policy(CovenantExplorer("t", None, WSS).content_security_policy)
    assert cdn["script-src"].startswith("https://unpkg.com 'sha256-")


@pytest.mark.parametrize(
    "url",
    [
        "https://a1b2c3.execute-api.ap-southeast-2.amazonaws.com/syd",  # not a WebSocket URL
        "wss://example.com/syd; connect-src *",  # would widen the policy
        "wss:///syd",
    ],
)
def test_a_subscriptions_url_that_is_not_one_websocket_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a wss or ws URL"):
        CovenantExplorer("t", "/_assets", url)


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        (
            {"host": "api.covenant.example", "x-forwarded-proto": "https"},
            "https://api.covenant.example",
        ),
        ({"Host": "127.0.0.1:8000"}, "http://127.0.0.1:8000"),
        ({"host": "[::1]:8000"}, "http://[::1]:8000"),
        ({"host": "evil.example; script-src *"}, None),
        ({"host": "a.example", "x-forwarded-proto": "javascript"}, None),
        ({}, None),
    ],
)
def test_the_page_origin_comes_from_host_and_forwarded_proto(headers, origin) -> None:
    assert page_origin(headers) == origin


def test_an_unusable_host_falls_back_to_self() -> None:
    policy = _policy(CovenantExplorer("t", "/_assets", WSS, None).content_security_policy)
    assert policy["connect-src"] == f"'self' {WSS}"

"""The local gateway: real HTTP in, API Gateway HTTP API (payload 2.0) events out."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from covenant.regions import get_region, region_codes
from covenant.topology import Route
from devstack.gateway import Gateway, build_event
from devstack.processes import free_port


@pytest.fixture(scope="module")
def gateway(servers) -> Iterator[Gateway]:
    # A secondary's health asks the primary's mobile function through its hop.
    server = Gateway(
        free_port(),
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
        },
    )
    server.serve_in_thread()
    yield server
    server.shutdown()


def _get(url: str, data: bytes | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_every_region_answers_health_over_http(gateway: Gateway) -> None:
    for code in region_codes():
        status, headers, body = _get(f"{gateway.url}/{code}/health")
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        assert (body["status"], body["region"]) == ("healthy", code)


def test_unknown_region_and_route_get_404(gateway: Gateway) -> None:
    status, _, body = _get(f"{gateway.url}/xyz/health")
    assert status == 404
    assert set(body["regions"]) == set(region_codes())
    status, _, body = _get(f"{gateway.url}/ams/no-such-route")
    assert (status, body) == (404, {"message": "Not Found"})


def test_method_not_routed_gets_404(gateway: Gateway) -> None:
    status, _, _ = _get(f"{gateway.url}/ams/health", data=b"{}")
    assert status == 404


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    gateway: Gateway,
) -> None:
    """curl sends `Expect: 100-continue` with bodies over 1 KB and waits for the interim
    answer (a second, else it sends anyway); the gateway answers at once, as API Gateway does."""
    body = json.dumps({"query": "{ regions { code } }", "pad": "x" * 2000}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
        client.sendall(
            b"POST /ams/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        client.settimeout(0.5)  # well under curl's one-second wait
        assert client.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        client.settimeout(10)
        client.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_event_has_the_http_api_v2_shape() -> None:
    event = build_event(
        region=get_region("syd"),
        route=Route("POST", "/graphql", "none"),
        method="POST",
        path="/graphql",
        query="a=1&a=2&b=",
        headers={"Content-Type": "application/json", "Cookie": "x=1; y=2", "X-Trace": "t"},
        body=b'{"query":"{ sectors { name } }"}',
        source_ip="127.0.0.1",
        path_parameters={},
        domain="127.0.0.1:8000",
    )
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /graphql"
    assert event["rawPath"] == "/syd/graphql"
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["headers"] == {"content-type": "application/json", "x-trace": "t"}
    assert event["cookies"] == ["x=1", "y=2"]
    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"query": "{ sectors { name } }"}
    context = event["requestContext"]
    assert context["stage"] == "syd"
    assert context["http"] == {
        "method": "POST",
        "path": "/syd/graphql",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "",
    }
    assert context["requestId"] and context["timeEpoch"] > 0


def test_binary_bodies_are_base64_encoded() -> None:
    event = build_event(
        region=get_region("ams"),
        route=Route("ANY", "/auth/{proxy+}", "none"),
        method="POST",
        path="/auth/login",
        query="",
        headers={"Content-Type": "application/octet-stream"},
        body=b"\x00\xff",
        source_ip="127.0.0.1",
        path_parameters={"proxy": "login"},
        domain="localhost",
    )
    assert event["isBase64Encoded"] is True
    assert event["body"] == "AP8="
    assert event["pathParameters"] == {"proxy": "login"}


@pytest.mark.parametrize(
    ("route", "method", "path", "expected"),
    [
        (Route("GET", "/health", "none"), "GET", "/health", {}),
        (Route("GET", "/health", "none"), "POST", "/health", None),
        (Route("ANY", "/auth/{proxy+}", "none"), "POST", "/auth/login", {"proxy": "login"}),
        (Route("ANY", "/auth/{proxy+}", "none"), "GET", "/auth", None),
        (Route("GET", "/projects/{id}", "none"), "GET", "/projects/42", {"id": "42"}),
        (Route("GET", "/projects/{id}", "none"), "GET", "/projects/4/2", None),
    ],
)
def test_route_matching_follows_api_gateway(route, method, path, expected) -> None:
    assert route.match(method, path) == expected

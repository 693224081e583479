"""The WebSocket handler speaking graphql-transport-ws, invoked as API Gateway invokes it."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import ConnectionsApi, Socket, token

pytestmark = pytest.mark.usefixtures("fresh")

PROJECTS = "subscription($f: ProjectFilter) { projectChanged(filter: $f) { eventId position } }"


@pytest.fixture
def socket(endpoints: dict[str, str]) -> Socket:
    return Socket("ams", endpoints)


def test_connect_answers_with_the_subprotocol_it_speaks_and_refuses_others(
    socket: Socket, endpoints: dict[str, str]
) -> None:
    answer = socket.connect("graphql-ws, graphql-transport-ws")
    assert answer == {
        "statusCode": 200,
        "headers": {"Sec-WebSocket-Protocol": "graphql-transport-ws"},
    }
    assert Socket("ams", endpoints).connect("graphql-ws")["statusCode"] == 400
    assert Socket("ams", endpoints).connect(None)["statusCode"] == 400


def test_connection_init_is_acknowledged_and_ping_answered(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.send({"type": "ping"})
    assert connections_api.messages(socket.connection_id) == [
        {"type": "connection_ack"},
        {"type": "pong"},
    ]


@pytest.mark.parametrize(
    "first",
    [
        "not json",
        {"type": "subscribe"},  # no id
        {"type": "unknown"},
        {"id": "1", "type": "subscribe", "payload": {"query": PROJECTS}},  # before init
    ],
)
def test_a_protocol_violation_closes_the_connection(
    socket: Socket, connections_api: ConnectionsApi, first: Any
) -> None:
    socket.connect()
    socket.send(first)
    assert connections_api.closed == [("ams", socket.connection_id)]
    assert connections_api.messages(socket.connection_id) == []


def test_a_second_connection_init_closes_the_connection(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.send({"type": "connection_init"})
    assert connections_api.closed == [("ams", socket.connection_id)]


def test_a_forged_token_is_refused_and_a_real_one_acknowledged(
    endpoints: dict[str, str], connections_api: ConnectionsApi, aws_server: Any
) -> None:
    forged = Socket("ams", endpoints)
    forged.connect()
    forged.send({"type": "connection_init", "payload": {"authorization": "Bearer a.b.c"}})
    assert connections_api.closed == [("ams", forged.connection_id)]
    real = Socket("ams", endpoints).open(token(aws_server[1], "viewer"))
    assert connections_api.messages(real.connection_id) == [{"type": "connection_ack"}]


def test_a_subscription_with_a_bad_filter_gets_an_error_and_is_not_stored(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.subscribe("s1", PROJECTS, f={"region": "mars"})
    errors = connections_api.messages(socket.connection_id, "error")
    assert errors[0]["id"] == "s1"
    assert errors[0]["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert errors[0]["payload"][0]["extensions"]["field"] == "filter.region"
    socket.subscribe("s1", PROJECTS)  # the id is free: no 4409
    assert connections_api.closed == []


def test_a_second_subscription_with_the_same_id_closes_the_connection(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.subscribe("s1", PROJECTS)
    assert connections_api.closed == []
    socket.subscribe("s1", PROJECTS)
    assert connections_api.closed == [("ams", socket.connection_id)]


def test_a_query_over_the_socket_gets_one_result_and_complete(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.subscribe("q", '{ country(code: "KEN") { name region { code } } }')
    next_, complete = connections_api.messages(socket.connection_id)[1:]
    assert next_ == {
        "id": "q",
        "type": "next",
        "payload": {"data": {"country": {"name": "Kenya", "region": {"code": "jnb"}}}},
    }
    assert complete == {"id": "q", "type": "complete"}


def test_a_mutation_over_the_socket_is_refused(
    socket: Socket, connections_api: ConnectionsApi
) -> None:
    socket.open()
    socket.subscribe("m", 'mutation { deleteProject(id: "x") { id } }')
    error = connections_api.messages(socket.connection_id, "error")[0]
    assert "HTTP" in error["payload"][0]["message"]


def test_a_subscription_over_http_is_refused(endpoints: dict[str, str]) -> None:
    import json

    from covenant.regions import get_region
    from devstack.functions import get_function, invoke

    from ..graphql_api.conftest import make_event

    event = make_event(query="subscription { statsChanged { eventId } }")
    answer = invoke(get_function("graphql"), get_region("ams"), event, endpoints)
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 400
    assert "WebSocket" in body["errors"][0]["message"]

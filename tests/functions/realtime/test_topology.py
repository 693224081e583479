"""The function table's WebSocket entry, the contract the gateway emulation reads."""

from __future__ import annotations

import pytest

from covenant.topology import TopologyError, WebSocketSpec, load_functions, parse_functions


def test_the_realtime_function_serves_the_three_websocket_routes_at_graphql() -> None:
    functions = load_functions()
    assert functions["realtime"].websocket == WebSocketSpec(
        "/graphql", ("$connect", "$default", "$disconnect")
    )
    assert functions["realtime"].routes == ()
    assert functions["fanout"].websocket is None
    assert functions["graphql"].websocket is None


@pytest.mark.parametrize(
    "websocket",
    [
        {"path": "graphql", "routes": ["$default"]},
        {"path": "/graphql", "routes": ["$connect", "sendMessage"]},
        {"path": "/graphql", "routes": []},
        "/graphql",
    ],
)
def test_a_malformed_websocket_entry_is_refused(websocket: object) -> None:
    with pytest.raises(TopologyError, match="websocket"):
        parse_functions({"f": {"handler": "m.h", "routes": {}, "websocket": websocket}})

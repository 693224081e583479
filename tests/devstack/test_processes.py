"""Port checks before the stack starts its servers."""

from __future__ import annotations

import socket

import pytest

from devstack.errors import DevStackError
from devstack.processes import free_port, require_free_ports


def test_every_busy_port_is_named_at_once() -> None:
    held = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held.append(sock)
    a, b = (s.getsockname()[1] for s in held)
    free = free_port()
    try:
        with pytest.raises(DevStackError) as refused:
            require_free_ports(
                [(a, "the gateway", "COVENANT_PORT"), (free, "moto", "X"), (b, "nats", "Y")]
            )
    finally:
        for sock in held:
            sock.close()
    message = str(refused.value)
    assert f"port {a} (the gateway) is already in use" in message
    assert f"port {b} (nats) is already in use" in message
    assert str(free) not in message


def test_the_default_ports_lie_outside_linuxs_ephemeral_range(monkeypatch) -> None:
    from pathlib import Path

    from devstack.stack import StackOptions

    for name in ("PORT", "PG_PORT", "PG_REPLICA_PORT", "NATS_PORT", "NATS_MONITOR_PORT"):
        monkeypatch.delenv(f"COVENANT_{name}", raising=False)
    monkeypatch.delenv("COVENANT_MOTO_PORT", raising=False)
    options = StackOptions.from_environment()
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low, high = (int(x) for x in ranges)
    for port in (
        options.port,
        options.pg_port,
        options.pg_replica_port,
        options.nats_port,
        options.nats_monitor_port,
        options.moto_port,
    ):
        assert not low <= port <= high, port

"""`make tail`: a developer watches a stream's events live."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.api import StreamConfig

from devstack.errors import DevStackError
from devstack.tail import tail


def test_tail_shows_the_last_events_then_follows(servers, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NATS_URL", servers.nats.url)

    def event(n: int) -> bytes:
        return json.dumps(
            {"type": "tailtest.things.created", "subject": f"things/{n}", "id": f"id-{n}"}
        ).encode()

    async def scenario() -> int:
        client = await nats.connect(servers.nats.url)
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="TAILTEST", subjects=["tailtest.>"]))
        try:
            for n in range(1, 4):
                await js.publish("tailtest.things.created", event(n))
            follower = asyncio.create_task(tail("TAILTEST", last=2, limit=3))
            await asyncio.sleep(0.5)
            await js.publish("tailtest.things.created", event(4))
            return await asyncio.wait_for(follower, 10)
        finally:
            await js.delete_stream("TAILTEST")
            await client.close()

    assert asyncio.run(scenario()) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"TAILTEST at {servers.nats.url} (from NATS_URL)"
    assert lines[1] == "TAILTEST: 3 events stored; following (Ctrl-C to stop)"
    assert lines[2:] == [
        "#2 tailtest.things.created  tailtest.things.created things/2 id=id-2",
        "#3 tailtest.things.created  tailtest.things.created things/3 id=id-3",
        "#4 tailtest.things.created  tailtest.things.created things/4 id=id-4",
    ]


async def _tail_one_event(url: str, stream: str) -> int:
    """A stream `stream` of one event on the server at `url`, followed by tail until it shows
    that event; the stream goes afterwards."""
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"]))
    try:
        await js.publish(f"{stream.lower()}.things.created", b'{"type": "t", "id": "1"}')
        return await asyncio.wait_for(tail(stream, last=1, limit=1), 10)
    finally:
        await js.delete_stream(stream)
        await client.close()


def test_tail_takes_a_server_list_and_skips_a_node_that_is_down(
    servers, monkeypatch, capsys
) -> None:
    """NATS_URL lists a cluster's nodes (COVENANT_NATS_NODES=3): any live one serves."""
    from devstack.processes import free_port

    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()},{servers.nats.url}")

    for _ in range(3):  # nats-py shuffles the list: the dead node comes first in some runs
        assert asyncio.run(_tail_one_event(servers.nats.url, "TAILLIST")) == 1
    captured = capsys.readouterr()
    assert "TAILLIST: 1 events stored" in captured.out
    assert "Traceback" not in captured.err + captured.out


def test_without_a_stack_of_its_own_tail_stops_and_says_what_to_do(tmp_path, monkeypatch) -> None:
    """No NATS_URL and no `make dev` of this checkout: the default port may be another
    checkout's stack, so tail joins nothing and says how to choose."""
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv("COVENANT_DATA_DIR", str(tmp_path))

    async def never(*args, **kwargs):
        raise AssertionError("tail connected to a server nobody named")

    monkeypatch.setattr(nats, "connect", never)
    with pytest.raises(DevStackError) as raised:
        asyncio.run(tail("COVENANT", limit=1))
    message = str(raised.value)
    assert "no Covenant dev stack of this checkout is running" in message
    assert str(tmp_path / "state.json") in message
    assert "make dev" in message and "NATS_URL=" in message


def test_tail_follows_this_checkouts_stack_and_names_it(
    servers, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv("COVENANT_DATA_DIR", str(tmp_path))
    (tmp_path / "state.json").write_text(json.dumps({"NATS_URL": servers.nats.url}))

    assert asyncio.run(_tail_one_event(servers.nats.url, "TAILSTATE")) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"TAILSTATE at {servers.nats.url} (from the stack running from {tmp_path})"

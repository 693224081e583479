"""`make tail`: a developer watches a stream's events live."""

from __future__ import annotations

import asyncio
import json

import nats
from nats.js.api import StreamConfig

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
    assert lines[0] == "TAILTEST: 3 events stored; following (Ctrl-C to stop)"
    assert lines[1:] == [
        "#2 tailtest.things.created  tailtest.things.created things/2 id=id-2",
        "#3 tailtest.things.created  tailtest.things.created things/3 id=id-3",
        "#4 tailtest.things.created  tailtest.things.created things/4 id=id-4",
    ]


def test_tail_takes_a_server_list_and_skips_a_node_that_is_down(
    servers, monkeypatch, capsys
) -> None:
    """NATS_URL lists a cluster's nodes (COVENANT_NATS_NODES=3): any live one serves."""
    from devstack.processes import free_port

    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()},{servers.nats.url}")

    async def scenario() -> int:
        client = await nats.connect(servers.nats.url)
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="TAILLIST", subjects=["taillist.>"]))
        try:
            await js.publish("taillist.things.created", b'{"type": "t", "id": "1"}')
            return await asyncio.wait_for(tail("TAILLIST", last=1, limit=1), 10)
        finally:
            await js.delete_stream("TAILLIST")
            await client.close()

    for _ in range(3):  # nats-py shuffles the list: the dead node comes first in some runs
        assert asyncio.run(scenario()) == 1
    captured = capsys.readouterr()
    assert "TAILLIST: 1 events stored" in captured.out
    assert "Traceback" not in captured.err + captured.out

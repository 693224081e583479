"""The consumers under test: the session's nats-server with the JetStream topology applied,
each test's streams purged and its durable consumer recreated with a short ack_wait (so a
batch a killed worker never acknowledged comes back within a second or two, not 30 s), and
moto in server mode for the AWS side (a subprocess worker reaches it too)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from covenant.consumer import RunStats, consume
from covenant.streams import CONSUMERS, apply_topology
from devstack.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
ACK_WAIT_S = 1.5


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from devstack.cognito import MotoServer

    server = MotoServer(free_port())
    server.start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


@dataclass
class Jet:
    url: str

    async def _with(self, body: Any) -> Any:
        client = await nats.connect(self.url)
        try:
            return await body(client.jetstream())
        finally:
            await client.close()

    def reset(self, *durables: str) -> None:
        """Topology applied (once: applying it again would restore the others' ack_wait); each
        durable's stream purged; each durable recreated with a short ack_wait."""
        specs = [next(c for c in CONSUMERS if c.durable_name == d) for d in durables]

        async def body(js: Any) -> None:
            await apply_topology(js, 1)
            for spec in specs:
                await js.purge_stream(spec.stream)
                await js.delete_consumer(spec.stream, spec.durable_name)
                config = spec.config(1)
                config.ack_wait = ACK_WAIT_S
                await js.add_consumer(spec.stream, config)

        run_async(self._with(body))

    def reset_keep_messages(self, durable: str) -> None:
        """The durable recreated from the stream's first message (a replay), messages kept."""
        spec = next(c for c in CONSUMERS if c.durable_name == durable)

        async def body(js: Any) -> None:
            await js.delete_consumer(spec.stream, durable)
            config = spec.config(1)
            config.ack_wait = ACK_WAIT_S
            await js.add_consumer(spec.stream, config)

        run_async(self._with(body))

    def publish(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        async def body(js: Any) -> None:
            for subject, envelope in messages:
                await js.publish(
                    subject,
                    json.dumps(envelope).encode(),
                    headers={"Nats-Msg-Id": envelope["id"]},
                )

        run_async(self._with(body))

    def consume(self, stream: str, durable: str, effect: Any, idle_exit_s: float = 0.5) -> RunStats:
        async def go() -> RunStats:
            client = await nats.connect(self.url)
            try:
                return await consume(
                    client,
                    stream,
                    durable,
                    effect,
                    should_stop=lambda: False,
                    idle_exit_s=idle_exit_s,
                    fetch_wait_s=0.25,
                )
            finally:
                await client.close()

        return run_async(go())  # type: ignore[no-any-return]

    def stored(self, stream: str) -> int:
        """Messages the stream holds (a work queue: those not yet acknowledged)."""

        async def body(js: Any) -> int:
            return int((await js.stream_info(stream)).state.messages)

        return run_async(self._with(body))  # type: ignore[no-any-return]

    def messages(self, stream: str) -> list[dict[str, Any]]:
        """Every message the stream holds, as parsed JSON, in stream order."""

        async def body(js: Any) -> list[dict[str, Any]]:
            info = await js.stream_info(stream)
            found = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except NotFoundError:  # deleted (acknowledged from a work queue)
                    continue
                found.append(json.loads(msg.data))
            return found

        return run_async(self._with(body))  # type: ignore[no-any-return]

    def pending(self, stream: str, durable: str) -> int:
        async def body(js: Any) -> int:
            info = await js.consumer_info(stream, durable)
            return int(info.num_pending + info.num_ack_pending)

        return run_async(self._with(body))  # type: ignore[no-any-return]


@pytest.fixture
def jet(servers: Any) -> Jet:
    return Jet(servers.nats.url)


def killed_worker(
    module: str,
    function: str,
    environment: dict[str, str],
    stream: str,
    durable: str,
    *,
    with_client: bool = False,
) -> int:
    """Runs `module.function` as the effect of a worker in a child process that SIGKILLs
    itself right after the first batch's effect returned, before acknowledging it (with
    `with_client`, `module.function(client)` makes the effect, a coroutine function). Returns
    the child's exit status (-9)."""
    script = textwrap.dedent(
        f"""
        import asyncio, inspect, os, signal, nats
        from covenant.consumer import consume
        import {module} as target

        def bound(client):
            made = target.{function}(client) if {with_client!r} else target.{function}

            async def effect(batch):
                outcome = made(batch)
                if inspect.isawaitable(outcome):
                    await outcome
                os.kill(os.getpid(), signal.SIGKILL)

            return effect

        async def main():
            client = await nats.connect(os.environ["NATS_URL"])
            await consume(client, {stream!r}, {durable!r}, bound(client),
                          should_stop=lambda: False, idle_exit_s=3, fetch_wait_s=0.25,
                          batch_size=7)

        asyncio.run(main())
        """
    )
    paths = [str(REPO_ROOT / p) for p in ("layers/shared/python", "functions", ".")]
    env = {
        **os.environ,
        **environment,
        "PYTHONPATH": os.pathsep.join(paths),
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    return done.returncode


def new_id() -> str:
    return str(uuid.uuid4())

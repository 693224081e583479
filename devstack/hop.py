"""The cross-region hop, emulated at the connection level.

A secondary region's functions reach the primary region through the network between two AWS
regions. Locally each secondary gets a TCP proxy in front of the gateway's Lambda Invoke API
(the mechanism that carries writes: docs/deploy.md) that delays every byte by half the region
pair's round-trip time in each direction, so a request and its answer cost one round trip, and
a new connection pays its TCP and TLS 1.3 handshakes (one round trip each) before its first
request, as an HTTPS connection to lambda.<region>.amazonaws.com does. The round-trip times
come from `covenant:interRegionRttMs` in cdk.json.

Not reproduced: jitter, packet loss, bandwidth limits, TCP slow start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping

from covenant.regions import Region, cdk_context
from devstack.errors import DevStackError

logger = logging.getLogger("devstack.hop")

CONTEXT_KEY = "covenant:interRegionRttMs"
HANDSHAKE_ROUND_TRIPS = 2  # TCP, then TLS 1.3


def round_trip_ms(a: Region, b: Region, table: Mapping[str, float] | None = None) -> float:
    """The round-trip time between two regions from cdk.json (0 within a region)."""
    if a.code == b.code:
        return 0.0
    pairs = table if table is not None else rtt_table()
    for key in (f"{a.code}-{b.code}", f"{b.code}-{a.code}"):
        if key in pairs:
            return float(pairs[key])
    raise DevStackError(f"{CONTEXT_KEY} in cdk.json has no round-trip time for {a.code}-{b.code}")


def rtt_table() -> dict[str, float]:
    raw = cdk_context().get(CONTEXT_KEY, {})
    pairs = raw.get("pairs", {}) if isinstance(raw, dict) else {}
    return {str(k): float(v) for k, v in pairs.items()}


def rtt_enabled() -> bool:
    """`COVENANT_HOP_RTT=off` (or 0) turns the distance off; the hop itself stays."""
    return (os.environ.get("COVENANT_HOP_RTT") or "on").lower() not in ("off", "0", "false")


class LatencyProxy:
    """Listens on 127.0.0.1 (a free port unless given) and forwards to `target` with
    `rtt_ms` of round-trip time."""

    def __init__(self, name: str, target: tuple[str, int], rtt_ms: float, port: int = 0) -> None:
        self.name = name
        self.target = target
        self.rtt_s = rtt_ms / 1000
        self.port = port
        self.connections = 0
        # Request/answer turns: data from the client after an answer (or first) is one more
        # round trip on the hop; what a benchmark counts per operation.
        self.round_trips = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        one_way = self.rtt_s / 2
        # The client can send its first request once both handshakes are done; it arrives
        # half a round trip later.
        opened = time.monotonic() + HANDSHAKE_ROUND_TRIPS * self.rtt_s + one_way
        turn = {"answered": True}

        def sent() -> None:
            if turn["answered"]:
                self.round_trips += 1
                turn["answered"] = False

        def answered() -> None:
            turn["answered"] = True

        tasks = [
            asyncio.create_task(self._pump(reader, upstream_writer, one_way, opened, sent)),
            asyncio.create_task(self._pump(upstream_reader, writer, one_way, 0.0, answered)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
        finally:
            self._tasks.difference_update(tasks)
            for stream in (writer, upstream_writer):
                stream.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        delay_s: float,
        not_before: float,
        on_data: Callable[[], None],
    ) -> None:
        """Copies `source` to `sink`, each chunk `delay_s` after it arrived (and none before
        `not_before`), in order."""
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def deliver() -> None:
            while queue or not done:
                if not queue:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, chunk = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                if chunk:
                    sink.write(chunk)
                    await sink.drain()
                else:
                    sink.write_eof() if sink.can_write_eof() else sink.close()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await source.read(65536)
                if chunk:
                    on_data()
                queue.append((max(time.monotonic() + delay_s, not_before), chunk))
                arrived.set()
                if not chunk:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            done = True
            arrived.set()
            with contextlib.suppress(ConnectionError, OSError):
                await delivery

"""`python -m devstack tail STREAM`: prints the events of a JetStream stream as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import nats
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from covenant.streams import redact, server_urls
from devstack.errors import DevStackError
from devstack.stack import read_state


def nats_url() -> str:
    return (
        os.environ.get("NATS_URL")
        or (read_state() or {}).get("NATS_URL")
        or ("nats://127.0.0.1:4222")
    )


async def tail(stream: str, *, last: int = 10, limit: int | None = None) -> int:
    """Shows the stream's last `last` events, then follows it (until `limit` events)."""
    try:
        # NATS_URL may list the servers of a cluster (COVENANT_NATS_NODES=3): any live one.
        client = await nats.connect(
            server_urls(nats_url()),
            connect_timeout=3,
            max_reconnect_attempts=1,
            error_cb=_quiet,  # a node that is down is tried and skipped, not a traceback
        )
    except Exception as exc:
        raise DevStackError(f"cannot connect to NATS at {redact(nats_url())}: {exc}") from exc
    shown = 0
    try:
        js = client.jetstream()
        try:
            info = await _stream_info(js, stream)
        except NotFoundError as exc:
            raise DevStackError(f"no stream {stream!r}: {exc}") from exc
        except Exception as exc:  # a timeout: no leader, or a cluster without its quorum
            raise DevStackError(
                f"stream {stream!r} does not answer (no leader, or the cluster lost its "
                f"quorum?): {exc}"
            ) from exc
        start = max(info.state.first_seq, info.state.last_seq - last + 1)
        config = (
            ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
            if info.state.messages
            else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        )
        subscription = await _subscribe(js, stream, config)
        print(f"{stream}: {info.state.messages} events stored; following (Ctrl-C to stop)")
        async for message in subscription.messages:
            metadata = message.metadata
            try:
                event = json.loads(message.data)
                summary = f"{event.get('type')} {event.get('subject')} id={event.get('id')}"
            except ValueError:
                summary = message.data[:120].decode(errors="replace")
            print(f"#{metadata.sequence.stream} {message.subject}  {summary}", flush=True)
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        await client.close()
    return shown


async def _quiet(error: Exception) -> None:
    return None


async def _stream_info(js: JetStreamContext, stream: str, wait_s: float = 20) -> StreamInfo:
    """The stream's info; while it elects a leader (a cluster node just went away) the request
    times out: asked again until `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await js.stream_info(stream)
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise
            print(f"{stream}: no answer yet (electing a leader?); asking again", flush=True)


async def _subscribe(
    js: JetStreamContext, stream: str, config: ConsumerConfig, wait_s: float = 20
) -> JetStreamContext.PushSubscription:
    """An ordered consumer on the stream; while the stream elects a leader (a cluster node
    just went away) its creation times out: asked again until `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await js.subscribe(">", stream=stream, ordered_consumer=True, config=config)
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"stream {stream!r} did not answer for {wait_s:g} s (no leader?)"
                ) from None
            print(f"{stream}: no answer yet (electing a leader?); asking again", flush=True)


def main(stream: str, last: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops following
        asyncio.run(tail(stream, last=last))

"""`python -m devstack tail STREAM`: prints the events of a JetStream stream as they arrive.

It follows NATS_URL when set, else the stack this checkout's `make dev` runs (its state file
under COVENANT_DATA_DIR, else .local), and says which server that is. With neither it stops
and says so: the default port may belong to another checkout's stack, whose events would pass
for this one's."""

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
from devstack.stack import data_dir_from_env, read_state, state_file


def nats_server() -> tuple[str, str]:
    """The NATS URL to follow and where it came from; DevStackError when there is none."""
    url = os.environ.get("NATS_URL")
    if url:
        return url, "NATS_URL"
    data_dir = data_dir_from_env()
    url = (read_state(data_dir) or {}).get("NATS_URL")
    if url:
        return url, f"the stack running from {data_dir}"
    raise DevStackError(
        f"no Covenant dev stack of this checkout is running ({state_file(data_dir)} is "
        "missing), so there is no NATS to follow. Start one with `make dev` (another terminal), "
        "point COVENANT_DATA_DIR at the data folder of the stack you mean, or name the server: "
        "NATS_URL=nats://127.0.0.1:4222 make tail"
    )


async def tail(stream: str, *, last: int = 10, limit: int | None = None) -> int:
    """Shows the stream's last `last` events, then follows it (until `limit` events)."""
    url, source = nats_server()
    try:
        # NATS_URL may list the servers of a cluster (COVENANT_NATS_NODES=3): any live one.
        client = await nats.connect(
            server_urls(url),
            connect_timeout=3,
            max_reconnect_attempts=1,
            error_cb=_quiet,  # a node that is down is tried and skipped, not a traceback
        )
    except Exception as exc:
        raise DevStackError(
            f"cannot connect to NATS at {redact(url)} (from {source}): {exc}"
        ) from exc
    joined = client.connected_url.geturl() if client.connected_url else url
    print(f"{stream} at {redact(joined)} (from {source})", flush=True)
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

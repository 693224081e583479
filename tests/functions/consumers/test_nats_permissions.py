"""The consumers' NATS user as the stack configures it (stacks.events), against a real
nats-server: the audit logger pulls, acknowledges and reads its lag with it; MOBILE_PUSH
publishes notifications with it; it cannot purge a stream, delete a consumer, publish a
domain, audit or alert event, or read another client's inbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from consumers import mobile_push
from covenant import streams
from covenant.consumer import CONSUMER_INBOX_PREFIX, consume
from covenant.events import CloudEvent
from devstack.nats import NatsServer
from devstack.processes import free_port
from stacks.events import nats_config_merge, render_nats_config

ADMIN = {"user": "admin", "password": "adminPassword1"}
CONSUMERS = {"user": "consumers", "password": "consumersPassword1"}
CREDENTIALS = {
    "BRIDGE_USER": "bridge",
    "BRIDGE_PASSWORD": "bridgePassword1",
    "ADMIN_USER": ADMIN["user"],
    "ADMIN_PASSWORD": ADMIN["password"],
    "CONSUMERS_USER": CONSUMERS["user"],
    "CONSUMERS_PASSWORD": CONSUMERS["password"],
}


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(
        tmp_path_factory.mktemp("nats-consumers"),
        free_port(),
        free_port(),
        config=render_nats_config(nats_config_merge()),
        environment=CREDENTIALS,
        name="covenant-consumers-permissions",
    )
    server.start()
    try:
        changes = streams.apply(server.url, 1, connect_timeout=2, **ADMIN)
        assert [c for c in changes if c.action == "refused"] == []
        yield server
    finally:
        server.stop()


def test_the_consumers_user_pulls_acks_and_reads_lag_only(secured_nats: NatsServer) -> None:
    async def scenario() -> None:
        admin = await nats.connect(secured_nats.url, **ADMIN)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for event_id in ids:
            body = {"id": event_id, "type": "audit.projects.updated", "data": {}}
            await admin.jetstream().publish(
                "audit.projects.updated",
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": event_id},
            )
        violations: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            violations.append(exc)

        worker = await nats.connect(
            secured_nats.url, inbox_prefix=CONSUMER_INBOX_PREFIX, error_cb=on_error, **CONSUMERS
        )
        seen: list[str] = []
        stats = await consume(
            worker,
            "AUDIT",
            "AUDIT_LOGGER",
            lambda batch: seen.extend(d.event_id for d in batch),
            should_stop=lambda: False,
            idle_exit_s=0.5,
            fetch_wait_s=0.25,
        )
        assert seen == ids and stats.processed == 3
        assert stats.lag == 0  # consumer info allowed, every ack landed
        assert violations == []
        js: Any = worker.jetstream()
        for refused in (js.purge_stream("AUDIT"), js.delete_consumer("AUDIT", "ANALYTICS")):
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await asyncio.wait_for(refused, 1.5)
        info = await admin.jetstream().stream_info("AUDIT")
        assert info.state.messages == 3  # nothing purged
        await worker.close()
        await admin.close()

    asyncio.run(scenario())


def test_the_consumers_user_publishes_notifications_and_nothing_else(
    secured_nats: NatsServer,
) -> None:
    async def scenario() -> None:
        worker = await nats.connect(
            secured_nats.url, inbox_prefix=CONSUMER_INBOX_PREFIX, **CONSUMERS
        )
        admin = await nats.connect(secured_nats.url, **ADMIN)
        before = (await admin.jetstream().stream_info("NOTIFICATIONS")).state.messages
        note = CloudEvent("notifications.push", "/covenant/iad/tests", "users/u", {"userSub": "u"})
        await mobile_push.publish(worker, [note])  # returns once JetStream stored it
        after = (await admin.jetstream().stream_info("NOTIFICATIONS")).state.messages
        assert after == before + 1
        js: Any = worker.jetstream()
        for subject in ("covenant.projects.updated", "audit.projects.updated", "alerts.info.x"):
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await asyncio.wait_for(js.publish(subject, b"{}"), 1.5)
        await worker.close()
        await admin.close()

    asyncio.run(scenario())

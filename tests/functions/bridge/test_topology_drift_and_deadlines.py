"""Edge cases of the bridge and the JetStream topology: per-aggregate order under the sweep's
minimum age, settings changed out of band that `apply` must put back, and a pass that must end
before its invocation does."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import nats

import bridge.connection
from covenant import db
from covenant.config import environment
from covenant.events import CloudEvent, event_source
from covenant.regions import primary_region
from covenant.streams import apply_topology
from covenant.uow import UnitOfWork
from devstack.event_sources import scheduled_event
from devstack.functions import LocalContext, function_environment, get_function, load_handler


def _event(aggregate: str, n: int) -> CloudEvent:
    return CloudEvent(
        type="covenant.projects.updated",
        source=event_source("iad", "audit-tests"),
        subject=f"projects/{aggregate}",
        data={"project": {"id": aggregate, "n": n}},
    )


def test_the_sweeps_minimum_age_keeps_a_projects_events_in_commit_order(
    bridge_env,
) -> None:
    """A transaction that began first but wrote its event second (it waited for the project's
    row lock) must not give the later event an older created_at: the sweep's minimum age is
    checked row by row, and would publish the later event before the earlier one (0010)."""
    aggregate = str(uuid.uuid4())
    late = _event(aggregate, 2)
    with UnitOfWork(db.writer()) as slow:  # begins first (created_at = now of this BEGIN)
        slow.scalar("SELECT 1")
        time.sleep(2.5)
        early: list[str] = []

        def fast() -> None:  # begins later, "locks the project" first, commits first
            with UnitOfWork(db.writer()) as uow:
                event = _event(aggregate, 1)
                uow.add_event(event, aggregate_type="project", aggregate_id=aggregate)
                early.append(event.id)

        thread = threading.Thread(target=fast)
        thread.start()
        thread.join()
        slow.add_event(late, aggregate_type="project", aggregate_id=aggregate)
    rows = bridge_env.events_of([aggregate])
    assert [r["id"] for r in rows] == [early[0], late.id]  # commit (seq) order

    bridge_env.sweep(BRIDGE_SWEEP_MIN_AGE_S="1.5")
    time.sleep(2)
    bridge_env.sweep(BRIDGE_SWEEP_MIN_AGE_S="1.5")
    assert bridge_env.order_violations(bridge_env.events_of([aggregate])) == []


async def _tamper(url: str, change) -> list[str]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await change(js)
        return [str(c) for c in await apply_topology(js, 1)]
    finally:
        await client.close()


def _run(coro):
    import asyncio

    return asyncio.run(coro)


def test_apply_corrects_a_stream_set_to_no_ack(bridge_env) -> None:
    """A stream set to no_ack stores events but never acknowledges them: every bridge publish
    would time out and the outbox never drain. `apply` puts it back."""

    async def set_no_ack(js) -> None:
        info = await js.stream_info("COVENANT")
        await js.update_stream(info.config.evolve(no_ack=True))

    try:
        changes = _run(_tamper(bridge_env.nats_url, set_no_ack))
        info = bridge_env.jetstream(lambda js: js.stream_info("COVENANT"))
        assert info.config.no_ack is False, changes  # apply said: stream COVENANT: unchanged
    finally:

        async def reset(js) -> None:
            info = await js.stream_info("COVENANT")
            await js.update_stream(info.config.evolve(no_ack=False))

        bridge_env.jetstream(reset)


def test_apply_corrects_a_durable_consumer_with_inactive_threshold_or_headers_only(
    bridge_env,
) -> None:
    """headers_only would hand AUDIT_LOGGER events without payloads; inactive_threshold would
    let JetStream delete the durable when idle (recreated by the next apply, it would replay the
    whole stream). `apply` resets both."""

    async def drift(js) -> None:
        info = await js.consumer_info("AUDIT", "AUDIT_LOGGER")
        await js.add_consumer(
            "AUDIT", info.config.evolve(headers_only=True, inactive_threshold=3600.0)
        )

    try:
        changes = _run(_tamper(bridge_env.nats_url, drift))
        info = bridge_env.jetstream(lambda js: js.consumer_info("AUDIT", "AUDIT_LOGGER"))
        assert (info.config.headers_only, info.config.inactive_threshold) in (
            (None, None),
            (False, None),
            (False, 0),
        ), changes
    finally:
        bridge_env.jetstream(lambda js: js.delete_consumer("AUDIT", "AUDIT_LOGGER"))
        bridge_env.reset_topology()


def test_apply_converges_once_a_consumer_has_a_backoff(bridge_env) -> None:
    """With a `backoff` set out of band, the server derives ack_wait from it: `apply` must
    clear it, or it would be refused on every run (and so would every deploy)."""

    async def drift(js) -> None:
        info = await js.consumer_info("AUDIT", "AUDIT_LOGGER")
        await js.add_consumer("AUDIT", info.config.evolve(backoff=[1.0, 2.0]))

    try:
        changes = _run(_tamper(bridge_env.nats_url, drift))
        assert not [c for c in changes if "refused" in c], changes
    finally:
        bridge_env.jetstream(lambda js: js.delete_consumer("AUDIT", "AUDIT_LOGGER"))
        bridge_env.reset_topology()


class _SilentJetStream:
    """The bridge's publisher, with JetStream never answering (a stream without a leader:
    core NATS, and so the PING, still answer)."""

    def __init__(self, publisher) -> None:
        self._publisher = publisher

    @property
    def max_payload(self) -> int:
        return self._publisher.max_payload

    async def publish(self, subject, payload, msg_id, on_settled) -> None:
        return None  # sent, never acknowledged

    def fail_pending(self, error) -> int:
        return self._publisher.fail_pending(error)


def _sweep_40_events(
    bridge_env, monkeypatch, jetstream: type[_SilentJetStream], timeout_s: float
) -> tuple[dict, float]:
    """40 events, then one scheduled invocation of `timeout_s` whose publisher is wrapped in
    `jetstream` (batches of 10, ack timeout 5 s): its answer, and the seconds it took."""
    bridge_env.write_events(40, per_aggregate=1)
    real = bridge.connection.publisher

    async def wrapped():
        return jetstream(await real())

    monkeypatch.setattr(bridge.connection, "publisher", wrapped)
    function, region = get_function("bridge"), primary_region()
    endpoints = bridge_env.endpoints(BRIDGE_BATCH_SIZE="10", BRIDGE_ACK_TIMEOUT_S="5")
    started = time.monotonic()
    with environment(function_environment(function, region, endpoints)):
        response = load_handler(function)(
            scheduled_event(region.aws_region), LocalContext(function, region, timeout_s=timeout_s)
        )
    return response, time.monotonic() - started


def test_a_pass_ends_within_the_invocation_when_jetstream_stops_answering(
    bridge_env, monkeypatch
) -> None:
    """No batch is read once its acknowledgements, all timing out, would run into the reserve:
    with JetStream silent, one batch is tried (5 s) and the invocation ends within its 10 s.
    Reading a second one (5 to 10 s) would outlive the Lambda, whose SQS batch would then be
    retried whole with no metrics emitted."""
    timeout_s = 10.0  # reserve 3 s: a batch may start until 2 s in
    response, elapsed = _sweep_40_events(bridge_env, monkeypatch, _SilentJetStream, timeout_s)
    assert response["failed"] >= 10, response  # a batch was tried, and nothing acknowledged
    assert elapsed < timeout_s, f"invocation took {elapsed:.1f} s of its {timeout_s} s"


class _SlowJetStream(_SilentJetStream):
    """Acknowledges every publish, 3.5 s late: each batch takes that long."""

    async def publish(self, subject, payload, msg_id, on_settled) -> None:
        loop = asyncio.get_running_loop()

        def late(error) -> None:
            loop.call_later(3.5, on_settled, error)

        await self._publisher.publish(subject, payload, msg_id, late)


def test_no_pass_starts_past_the_deadline_when_jetstream_is_slow(bridge_env, monkeypatch) -> None:
    """Each pass publishes its first batch whatever the time: the invocation must not start
    another pass past the deadline, or a slow JetStream walks it into its reserve and past its
    timeout one batch at a time."""
    timeout_s = 10.0  # reserve 3 s, ack timeout 5 s: nothing new starts after 2 s
    response, elapsed = _sweep_40_events(bridge_env, monkeypatch, _SlowJetStream, timeout_s)
    # The first two batches, both published at once (the second while the first waits for
    # its acknowledgements), both acknowledged at 3.5 s; the third, read by then, is past the
    # deadline and left for the next pass, and no second pass starts.
    assert response["published"] == 20, response
    assert elapsed < timeout_s - 3, f"took {elapsed:.1f} s, into the 3 s reserve"

"""A pass publishes its next batch while the previous one's acknowledgements are on their way,
and an aggregate's events still go one at a time across batches: an event waits for its
aggregate's previous one, whichever batch that is in, and a failure stops the aggregate's
later batches too. A publisher that holds every acknowledgement until the test releases it
(no server); tests/functions/bridge/test_delivery.py has the order on a real JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js.errors import APIError

from bridge import relay
from bridge.relay import OutboxEvent, RelayResult


class HeldPublisher:
    """Records what is sent; acknowledges only on `release` (with `outcomes` by event id)."""

    max_payload = 1024 * 1024

    def __init__(self, outcomes: dict[str, BaseException] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.sent: list[str] = []
        self.held: dict[str, Callable[[BaseException | None], None]] = {}

    async def publish(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        on_settled: Callable[[BaseException | None], None],
    ) -> None:
        self.sent.append(msg_id)
        self.held[msg_id] = on_settled

    def release(self) -> None:
        held, self.held = self.held, {}
        for msg_id, on_settled in held.items():
            asyncio.get_running_loop().call_soon(on_settled, self.outcomes.get(msg_id))

    def fail_pending(self, error: BaseException) -> int:
        return 0

    async def stream_exists(self, stream: str, timeout_s: float) -> bool | None:
        return True


def _event(seq: int, aggregate: str) -> OutboxEvent:
    id_ = f"00000000-0000-0000-0000-{seq:012d}"
    return OutboxEvent(seq, id_, "covenant.projects.updated", f"project:{aggregate}", "{}", 0)


A1, B1, A2, C1 = _event(1, "a"), _event(2, "b"), _event(3, "a"), _event(4, "c")


def test_the_next_batch_is_sent_before_the_acknowledgements_and_in_order() -> None:
    async def scenario() -> None:
        publisher = HeldPublisher()
        publishing = relay._Publishing(publisher, 1.0, RelayResult(), set())
        first = await publishing.add([A1, B1])
        second = await publishing.add([A2, C1])
        # Nothing acknowledged yet: the second batch is on its way, but not a's next event.
        assert publisher.sent == [A1.id, B1.id, C1.id]
        publisher.release()
        assert await publishing.settle(first) == [A1, B1]
        assert publisher.sent[-1] == A2.id  # sent once A1 was acknowledged
        publisher.release()
        assert await publishing.settle(second) == [C1, A2]

    asyncio.run(scenario())


def test_a_failure_stops_its_aggregate_in_the_batches_already_read() -> None:
    async def scenario() -> None:
        refused = APIError(code=400, description="message size exceeds maximum allowed")
        publisher = HeldPublisher({A1.id: refused})
        result, blocked = RelayResult(), set[str]()
        publishing = relay._Publishing(publisher, 1.0, result, blocked)
        first = await publishing.add([A1, B1])
        second = await publishing.add([A2, C1])
        publisher.release()
        assert await publishing.settle(first) == [B1]
        publisher.release()
        assert await publishing.settle(second) == [C1]
        assert A2.id not in publisher.sent  # never sent: it stays in the outbox
        assert set(result.failed) == {A1.id} and result.rejected == {A1.id}
        assert blocked == {"project:a"}

    asyncio.run(scenario())

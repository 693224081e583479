"""How the relay reads the answers a clustered JetStream gives during an election or a quorum
loss, with a scripted publisher (no server): a stream that stored events and then answers
"no responders" has no leader, it is not missing; an earlier copy still being stored ("duplicate
message id is in process") is not a failed attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from nats.js.errors import APIError, NoStreamResponseError

from bridge import relay
from bridge.relay import OutboxEvent, RelayResult, publish_in_order


class ScriptedPublisher:
    """Answers each publish with the next outcome for its subject (None: acknowledged)."""

    max_payload = 1024 * 1024

    def __init__(self, outcomes: dict[str, list[BaseException | None]]) -> None:
        self.outcomes = outcomes

    async def publish(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        on_settled: Callable[[BaseException | None], None],
    ) -> None:
        outcome = self.outcomes[subject].pop(0)
        asyncio.get_running_loop().call_soon(on_settled, outcome)

    def fail_pending(self, error: BaseException) -> int:
        return 0


def _event(seq: int, subject: str, aggregate: str = "project:p1") -> OutboxEvent:
    return OutboxEvent(seq, f"00000000-0000-0000-0000-{seq:012d}", subject, aggregate, "{}", 0)


def _publish(events: list[OutboxEvent], publisher: ScriptedPublisher) -> RelayResult:
    result = RelayResult()
    acknowledged = asyncio.run(publish_in_order(events, publisher, 1.0, result, set()))
    result.published.extend(e.id for e in acknowledged)
    return result


@pytest.fixture(autouse=True)
def fresh_environment():
    relay.forget_seen_streams()
    yield
    relay.forget_seen_streams()


def test_no_responders_from_a_stream_seen_storing_is_a_leaderless_stream() -> None:
    subject = "covenant.projects.updated"
    stored = _publish([_event(1, subject)], ScriptedPublisher({subject: [None]}))
    assert len(stored.published) == 1

    # Its leader died: until a follower is elected, nothing listens on the stream's subjects.
    result = _publish([_event(2, subject)], ScriptedPublisher({subject: [NoStreamResponseError()]}))
    assert result.stream_leaderless == {"COVENANT"}
    assert result.stream_missing == set()
    assert result.rejected == set()  # not the event's fault: no attempt counted
    assert "has no leader" in next(iter(result.failed.values()))


def test_no_responders_from_a_stream_never_seen_storing_is_a_missing_stream() -> None:
    subject = "audit.projects.updated"
    result = _publish([_event(1, subject)], ScriptedPublisher({subject: [NoStreamResponseError()]}))
    assert result.stream_missing == {subject}
    assert result.stream_leaderless == set()


def test_an_earlier_copy_still_being_stored_is_not_a_failed_attempt() -> None:
    """A publish whose acknowledgement came late is sent again by the next pass; a clustered
    stream still storing the first copy answers 409 "duplicate message id is in process"."""
    subject = "covenant.projects.updated"
    in_process = APIError(
        code=409,
        err_code=relay.DUPLICATE_IN_PROCESS,
        description="duplicate message id is in process",
    )
    refused = APIError(code=400, err_code=10054, description="message size exceeds maximum allowed")
    events = [_event(1, subject, "project:a"), _event(2, subject, "project:b")]
    result = _publish(events, ScriptedPublisher({subject: [in_process, refused]}))
    assert set(result.failed) == {events[0].id, events[1].id}
    assert result.rejected == {events[1].id}  # only the real refusal counts an attempt
    assert "still being stored" in result.failed[events[0].id]

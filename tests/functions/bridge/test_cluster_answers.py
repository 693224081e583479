"""How the relay reads the answers a clustered JetStream gives during an election or a quorum
loss, with a scripted publisher (no server): "no responders" from a stream JetStream knows, or
when JetStream does not answer at all, is a leaderless stream; only JetStream's "stream not
found" makes it missing; an earlier copy still being stored ("duplicate message id is in
process") is not a failed attempt. tests/functions/bridge/test_cluster.py has the real answers
of a three-node cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js.errors import APIError, NoStreamResponseError

from bridge import relay
from bridge.relay import OutboxEvent, RelayResult, publish_in_order


class ScriptedPublisher:
    """Answers each publish with the next outcome for its subject (None: acknowledged), and
    whether a stream exists with `exists` (None: no answer)."""

    max_payload = 1024 * 1024

    def __init__(
        self, outcomes: dict[str, list[BaseException | None]], exists: bool | None = True
    ) -> None:
        self.outcomes = outcomes
        self.exists = exists
        self.asked: list[str] = []

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

    async def stream_exists(self, stream: str, timeout_s: float) -> bool | None:
        self.asked.append(stream)
        return self.exists


def _event(seq: int, subject: str, aggregate: str = "project:p1") -> OutboxEvent:
    return OutboxEvent(seq, f"00000000-0000-0000-0000-{seq:012d}", subject, aggregate, "{}", 0)


def _publish(
    events: list[OutboxEvent], publisher: ScriptedPublisher, result: RelayResult | None = None
) -> RelayResult:
    result = result or RelayResult()
    acknowledged = asyncio.run(publish_in_order(events, publisher, 1.0, result, set()))
    result.published.extend(e.id for e in acknowledged)
    return result


def test_no_responders_from_a_stream_jetstream_knows_is_a_leaderless_stream() -> None:
    """Even in a fresh execution environment that never saw the stream store anything."""
    subject = "covenant.projects.updated"
    publisher = ScriptedPublisher({subject: [NoStreamResponseError()]}, exists=True)
    result = _publish([_event(1, subject)], publisher)
    assert publisher.asked == ["COVENANT"]
    assert result.stream_leaderless == {"COVENANT"}
    assert result.stream_missing == set()
    assert result.rejected == set()  # not the event's fault: no attempt counted
    assert "has no leader" in next(iter(result.failed.values()))


def test_no_responders_from_a_stream_jetstream_does_not_know_is_a_missing_stream() -> None:
    subject = "audit.projects.updated"
    publisher = ScriptedPublisher({subject: [NoStreamResponseError()]}, exists=False)
    result = _publish([_event(1, subject)], publisher)
    assert result.stream_missing == {subject}
    assert result.stream_leaderless == set()
    assert result.rejected == set()
    assert result.failed[_event(1, subject).id] == f"no JetStream stream captures {subject}"


def test_no_answer_about_the_stream_is_a_leaderless_stream_not_a_missing_one() -> None:
    """A cluster that lost its JetStream meta leader too answers nothing about any stream;
    nothing can have deleted the stream meanwhile, so the operator is not sent to apply."""
    subject = "covenant.projects.updated"
    publisher = ScriptedPublisher({subject: [NoStreamResponseError()]}, exists=None)
    result = _publish([_event(1, subject)], publisher)
    assert result.stream_leaderless == {"COVENANT"}
    assert result.stream_missing == set()
    assert "nor JetStream" in next(iter(result.failed.values()))


def test_jetstream_is_asked_once_per_stream_and_pass() -> None:
    covenant, audit = "covenant.projects.updated", "audit.projects.updated"
    no_one = NoStreamResponseError()
    publisher = ScriptedPublisher({covenant: [no_one] * 4, audit: [no_one] * 4}, exists=True)
    result = RelayResult()
    for batch in range(2):  # two batches of one pass, four aggregates each
        events = [
            _event(10 * batch + n, subject, f"project:{batch}-{n}")
            for n, subject in enumerate((covenant, audit, covenant, audit))
        ]
        _publish(events, publisher, result)
    assert sorted(publisher.asked) == ["AUDIT", "COVENANT"]
    assert result.stream_leaderless == {"AUDIT", "COVENANT"}
    assert len(result.failed) == 8


def test_a_subject_no_stream_of_the_topology_captures_is_missing_without_asking() -> None:
    subject = "elsewhere.projects.updated"
    publisher = ScriptedPublisher({subject: [NoStreamResponseError()]})
    result = _publish([_event(1, subject)], publisher)
    assert publisher.asked == []
    assert result.stream_missing == {subject}


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

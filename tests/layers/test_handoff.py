"""covenant.handoff on its own: the mark, the refusals, and the answers Lambda can give."""

from __future__ import annotations

from typing import Any

import pytest

from covenant import handoff
from covenant.config import environment

SECONDARY = {"COVENANT_REGION": "ams", "COVENANT_PRIMARY_FUNCTION": "covenant-iad-graphql"}


def _event(**context: Any) -> dict[str, Any]:
    return {
        "rawPath": "/ams/graphql",
        "headers": {"covenant": '{"handedOffFrom": "iad"}', "x-covenant-handed-off-from": "iad"},
        "requestContext": {"stage": "ams", "requestId": "r-1", **context},
        "body": "{}",
    }


def test_only_the_request_context_marks_a_handed_off_event() -> None:
    """API Gateway builds requestContext: a client's headers cannot pass for the mark."""
    assert handoff.handed_off_from(_event()) is None
    assert handoff.handed_off_from(_event(covenant={"handedOffFrom": "syd"})) == "syd"
    with environment(SECONDARY):
        forwarded = handoff.forwarded(_event(), "mutation")
    assert forwarded["requestContext"]["covenant"] == {"handedOffFrom": "ams", "reason": "mutation"}
    assert forwarded["headers"] == _event()["headers"] and forwarded["body"] == "{}"


def test_the_primary_never_hands_off_and_a_secondary_never_forwards_twice() -> None:
    with environment({"COVENANT_REGION": "iad"}):
        assert handoff.must_hand_off(_event()) is False
        assert handoff.must_hand_off(_event(covenant={"handedOffFrom": "ams"})) is False
    with environment(SECONDARY):
        assert handoff.must_hand_off(_event()) is True
        with pytest.raises(handoff.PrimaryMoved):
            handoff.must_hand_off(_event(covenant={"handedOffFrom": "syd"}))


def test_a_secondary_without_its_primary_function_says_so(primary_lambda) -> None:
    with environment({"COVENANT_REGION": "syd"}), pytest.raises(handoff.HopFailed) as failed:
        handoff.hand_off(_event(), "mutation")
    assert failed.value.kind == "not_configured"
    assert failed.value.may_have_applied is False
    assert "COVENANT_PRIMARY_FUNCTION is not set in the secondary region syd" in str(failed.value)


def test_an_event_over_lambdas_6_mb_is_413_nothing_applied(primary_lambda) -> None:
    event = {**_event(), "body": "x" * (6 * 1024 * 1024 + 1)}
    with environment(SECONDARY), pytest.raises(handoff.HopFailed) as failed:
        handoff.hand_off(event, "mutation")
    assert (failed.value.kind, failed.value.status) == ("too_large", 413)
    assert failed.value.may_have_applied is False


def test_an_unknown_function_never_ran(primary_lambda) -> None:
    unknown = {**SECONDARY, "COVENANT_PRIMARY_FUNCTION": "covenant-ams-graphql"}
    with environment(unknown), pytest.raises(handoff.HopFailed) as failed:
        handoff.hand_off(_event(), "mutation")
    assert failed.value.may_have_applied is False


def test_invokes_are_never_retried_by_botocore(primary_lambda) -> None:
    with environment(SECONDARY):
        client = handoff.lambda_client()
        assert handoff.lambda_client() is client  # one per environment, kept warm
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert client.meta.config.read_timeout == 12 and client.meta.config.connect_timeout == 2
    assert client.meta.region_name == "us-east-1"  # the primary's, from the region table

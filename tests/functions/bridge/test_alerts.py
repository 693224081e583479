"""The operational alerts the bridge raises on the ALERTS stream (covenant.alerts): events set
aside (test_rejections), the outbox lagging, a spike of failed sign-ins; one message per
condition and producer window, however many runs see it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from covenant import db
from covenant.alerts import PRODUCER_WINDOW_S


def _alerts(bridge_env) -> list[dict]:
    return [json.loads(m.data) for m in bridge_env.messages("ALERTS")]


def _windows(since: float) -> int:
    """How many producer windows the time from `since` to now touches (1, or 2 when the runs
    straddled a window's end: each window has its own alert id)."""
    return len({int(since // PRODUCER_WINDOW_S), int(time.time() // PRODUCER_WINDOW_S)})


def test_an_outbox_lagging_past_the_threshold_raises_one_warning(bridge_env) -> None:
    waiting = bridge_env.write_events(2)
    with db.writer().session() as session:
        session.run(
            "UPDATE outbox SET created_at = now() - interval '10 minutes' "
            "WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=waiting,
        )
    started = time.time()
    for _ in range(2):  # too young for these sweeps (min age one hour): they wait, and lag
        assert bridge_env.sweep(BRIDGE_SWEEP_MIN_AGE_S="3600")["published"] == 0
    raised = _alerts(bridge_env)
    assert len(raised) == _windows(started)
    alert = raised[0]
    assert alert["type"] == "alerts.warning.outbox_lag"
    assert alert["data"]["details"]["lagSeconds"] >= 600
    assert alert["data"]["details"]["thresholdSeconds"] == 120

    # Under the threshold, nothing more is raised.
    assert bridge_env.sweep()["published"] == 2
    assert len(_alerts(bridge_env)) == len(raised)


@pytest.fixture
def failed_sign_ins() -> Iterator[str]:
    address = f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    with db.writer().session() as session:
        session.run(
            "INSERT INTO auth_failures (account_key, address) "
            "SELECT NULL, :address FROM generate_series(1, 5)",
            address=address,
        )
    yield address
    with db.writer().session() as session:
        session.run("DELETE FROM auth_failures WHERE address = :address", address=address)


def test_a_spike_of_failed_sign_ins_raises_one_warning(bridge_env, failed_sign_ins) -> None:
    assert bridge_env.sweep(BRIDGE_ALERT_SIGN_IN_FAILURES="1000") == {
        "published": 0,
        "failed": 0,
        "pruned": 0,
    }
    assert _alerts(bridge_env) == []
    started = time.time()
    for _ in range(2):
        bridge_env.sweep(BRIDGE_ALERT_SIGN_IN_FAILURES="4")
    raised = _alerts(bridge_env)
    assert len(raised) == _windows(started)
    alert = raised[0]
    assert alert["type"] == "alerts.warning.sign_in_failures"
    assert alert["data"]["details"]["failures"] >= 5

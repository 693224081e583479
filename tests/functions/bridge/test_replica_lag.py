"""Replica lag on ALERTS: the bridge's scheduled run reads how far the streaming replica is
behind (pg_stat_replication on the real primary), and a replica held back past the threshold
raises one alert per window, warning then critical; a healthy one raises none."""

from __future__ import annotations

import json
import time

from bridge.replica_lag import replica_lags
from covenant import db
from covenant.alerts import PRODUCER_WINDOW_S
from devstack.processes import wait_until
from migrator import handler as migrator

from ...replica import replay_paused

# The replica must pass the warning within the test's seconds; the run's own thresholds are
# the configuration's (5 s and 30 s by default).
WARNING = {"BRIDGE_ALERT_REPLICA_LAG_WARNING_S": "1", "BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S": "600"}
CRITICAL = {"BRIDGE_ALERT_REPLICA_LAG_WARNING_S": "1", "BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S": "2"}


def _replica_lag_alerts(bridge_env) -> list[dict]:
    raised = [json.loads(m.data) for m in bridge_env.messages("ALERTS")]
    return [alert for alert in raised if alert["data"]["kind"] == "replica_lag"]


def _windows(since: float) -> int:
    """Producer windows from `since` to now (1, or 2 when the runs straddled a window's end)."""
    return len({int(since // PRODUCER_WINDOW_S), int(time.time() // PRODUCER_WINDOW_S)})


def _worst_lag_s() -> float:
    with db.writer().session() as session:
        return max((replica.lag_s for replica in replica_lags(session)), default=0.0)


def _commit_on_the_primary() -> None:
    with db.writer().session() as session:
        session.run("UPDATE sectors SET description = description WHERE id = 'health'")


def test_a_healthy_replica_raises_nothing(bridge_env, wait_for_replica, capsys) -> None:
    _commit_on_the_primary()
    wait_for_replica()
    with db.writer().session() as session:
        (replica,) = replica_lags(session)  # devstack's one standby, streaming
    assert replica.region is None and replica.lag_s < 1
    capsys.readouterr()
    bridge_env.sweep(**WARNING)
    assert _replica_lag_alerts(bridge_env) == []
    (reported,) = bridge_env.metric_values(capsys.readouterr().out, "ReplicaLagSeconds")
    assert 0 <= reported < 1


def test_a_lagging_replica_raises_one_alert_per_window_warning_then_critical(
    bridge_env, servers, wait_for_replica
) -> None:
    with replay_paused(servers):
        _commit_on_the_primary()  # a commit the paused replica cannot replay
        wait_until(lambda: _worst_lag_s() > 1.2, 20, "the paused replica past 1.2 s of lag")
        started = time.time()
        for _ in range(3):  # three scheduled runs see the same condition
            bridge_env.sweep(**WARNING)
        warnings = _replica_lag_alerts(bridge_env)
        assert len(warnings) == _windows(started)
        warning = warnings[0]
        assert warning["type"] == "alerts.warning.replica_lag"
        assert warning["data"]["dedupKey"] == "replica_lag.warning"
        details = warning["data"]["details"]
        assert details["thresholdSeconds"] == 1
        assert details["lagSeconds"][details["worst"]] > 1

        # Still held back, now past the critical threshold: one critical alert, at once (its
        # own key: the warning's dedup window does not hold it back).
        wait_until(lambda: _worst_lag_s() > 2.2, 20, "the paused replica past 2.2 s of lag")
        started = time.time()
        for _ in range(2):
            bridge_env.sweep(**CRITICAL)
        criticals = [a for a in _replica_lag_alerts(bridge_env) if a not in warnings]
        assert len(criticals) == _windows(started)
        assert criticals[0]["type"] == "alerts.critical.replica_lag"
        assert criticals[0]["data"]["details"]["thresholdSeconds"] == 2

    # Replay resumed: caught up, the next runs raise nothing more.
    wait_for_replica()
    wait_until(lambda: _worst_lag_s() < 1, 20, "the resumed replica's lag back under 1 s")
    raised = len(_replica_lag_alerts(bridge_env))
    bridge_env.sweep(**CRITICAL)
    assert len(_replica_lag_alerts(bridge_env)) == raised


def test_a_role_without_the_grant_reports_the_lag_unreadable(
    bridge_env, servers, capsys, caplog
) -> None:
    """The bridge signed in as a login role the migrator gave the data privileges but not the
    monitoring ones: its run goes on, says so and counts it, and raises no alert."""
    user = "covenant_ci_bridge_unmonitored"
    migrator.ensure_login_roles(db.writer(), [user])
    url = servers.writer_url.replace("postgres@", f"{user}@", 1)
    capsys.readouterr()
    response = bridge_env.sweep(DATABASE_URL=url, DATABASE_READER_URL=url, **WARNING)
    assert response["failed"] == 0
    output = capsys.readouterr()
    assert bridge_env.metric_values(output.out, "ReplicaLagUnreadable") == [1.0]
    assert bridge_env.metric_values(output.out, "ReplicaLagSeconds") == []
    # The logger writes to standard output, or to logging's handlers once another test has
    # had it propagate (Powertools' logger, shared by the module): the line is in one of them.
    assert "grant it pg_read_all_stats" in output.out + output.err + caplog.text
    assert _replica_lag_alerts(bridge_env) == []

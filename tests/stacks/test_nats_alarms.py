"""Issue 19: none of a cluster's faults raised an alarm in AWS. The primary region alarms when
the bridge cannot reach NATS, and when a stream is leaderless or missing (by the bridge's or
the jetstream probe's count), each on the region's topic; secondaries relay no events."""

from __future__ import annotations

import json
from typing import Any

from covenant.regions import load_regions

from .conftest import resources

REGIONS = load_regions()
PRIMARY = next(r for r in REGIONS if r.primary)


def _alarms(templates: Any, code: str) -> dict[str, dict[str, Any]]:
    found = resources(templates[f"Covenant-{code}-Monitoring"], "AWS::CloudWatch::Alarm")
    return {logical: resource["Properties"] for logical, resource in found.items()}


def _named(alarms: dict[str, dict[str, Any]], prefix: str) -> dict[str, Any]:
    [properties] = [p for logical, p in alarms.items() if logical.startswith(prefix)]
    return properties


def test_the_primary_alarms_on_nats_unreachable_for_three_minutes(templates) -> None:
    alarm = _named(_alarms(templates, PRIMARY.code), "NatsUnavailable")
    assert alarm["MetricName"] == "NatsUnavailable" and alarm["Namespace"] == "Covenant"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "bridge"}]
    assert (alarm["Period"], alarm["Statistic"], alarm["Threshold"]) == (60, "Sum", 0)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3
    assert alarm["AlarmActions"] and alarm["OKActions"]


def test_the_primary_alarms_on_a_leaderless_or_missing_stream_from_bridge_or_probe(
    templates,
) -> None:
    alarms = _alarms(templates, PRIMARY.code)
    for name, periods in (("StreamLeaderless", 2), ("StreamMissing", 2)):
        alarm = _named(alarms, name)
        assert "MetricName" not in alarm  # a metric math expression over both sources
        expression = next(q for q in alarm["Metrics"] if "Expression" in q)
        key = name[0].lower() + name[1:]
        assert expression["Expression"] == f"MAX([FILL({key}Bridge, 0), FILL({key}Probe, 0)])"
        assert expression.get("ReturnData", True) is True
        sources = {
            q["Id"]: (
                q["MetricStat"]["Metric"]["MetricName"],
                q["MetricStat"]["Metric"]["Dimensions"][0]["Value"],
                q["MetricStat"]["Period"],
            )
            for q in alarm["Metrics"]
            if "MetricStat" in q
        }
        assert sources == {
            f"{key}Bridge": (name, "bridge", 60),
            f"{key}Probe": (name, "jetstream", 60),
        }
        assert alarm["Threshold"] == 0
        assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == periods
        assert (
            "leader" in alarm["AlarmDescription"] or "does not exist" in alarm["AlarmDescription"]
        )


def test_secondaries_have_no_nats_alarms(templates) -> None:
    for region in REGIONS:
        if region.primary:
            continue
        text = json.dumps(_alarms(templates, region.code))
        for metric in ("NatsUnavailable", "StreamLeaderless", "StreamMissing"):
            assert metric not in text, (region.code, metric)

"""The consumers' stack over the synthesized templates: the audit trail's table, the audit
logger's least privilege (append only), its schedule, its NATS user, its lag alarm."""

from __future__ import annotations

import json
from typing import Any

from covenant import audit_trail
from covenant.regions import load_regions
from stacks.events import consumers_nats_permissions

from .conftest import resources

PRIMARY = next(r for r in load_regions() if r.primary)


def _statements(template: Any, role_fragment: str) -> list[dict[str, Any]]:
    found = []
    for logical_id, policy in resources(template, "AWS::IAM::Policy").items():
        if role_fragment in logical_id:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def test_the_audit_trail_is_a_protected_table_with_its_indexes(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    (table,) = resources(template, "AWS::DynamoDB::Table").values()
    props = table["Properties"]
    assert table["DeletionPolicy"] == "Retain"
    assert props["TableName"] == audit_trail.DEFAULT_TABLE
    assert props["DeletionProtectionEnabled"] is True
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    definition = audit_trail.table_definition(audit_trail.DEFAULT_TABLE)
    assert props["KeySchema"] == definition["KeySchema"]
    assert sorted(i["IndexName"] for i in props["GlobalSecondaryIndexes"]) == sorted(
        i["IndexName"] for i in definition["GlobalSecondaryIndexes"]
    )


def test_the_audit_logger_appends_and_never_deletes(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    statements = _statements(template, "AuditLogger")
    actions = {
        action
        for s in statements
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        if action.startswith("dynamodb:")
    }
    assert actions == {
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:UpdateItem",
    }
    (update,) = [s for s in statements if s["Action"] == "dynamodb:UpdateItem"]
    assert update["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [audit_trail.HEAD_ID]}
    }
    (function,) = [
        r
        for r in resources(template, "AWS::Lambda::Function").values()
        if r["Properties"]["Handler"] == "consumers.audit_logger.handler"
    ]
    assert function["Properties"]["ReservedConcurrentExecutions"] == 1
    rules = resources(template, "AWS::Events::Rule").values()
    assert [r["Properties"]["ScheduleExpression"] for r in rules] == ["rate(1 minute)"] * 2


def test_the_consumers_nats_user_pulls_and_acks_its_consumers_only() -> None:
    permissions = consumers_nats_permissions()
    allowed = permissions["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.AUDIT.AUDIT_LOGGER" in allowed
    assert "$JS.ACK.AUDIT.AUDIT_LOGGER.>" in allowed
    # Reading COVENANT's first sequence is all of the stream API it may use (the fan-out).
    assert not any(
        a.startswith(("$JS.API.STREAM", "$JS.API.CONSUMER.DELETE"))
        for a in allowed
        if a != "$JS.API.STREAM.INFO.COVENANT"
    )
    assert not any(a in ("$JS.>", "$JS.API.>", ">") for a in allowed)
    assert permissions["subscribe"]["allow"] == ["_INBOX_CONSUMERS.>"]


def test_each_consumer_has_a_lag_alarm(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Monitoring"]
    alarms = [
        a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ConsumerLag"
    ]
    assert [a["Dimensions"] for a in alarms] == [
        [{"Name": "service", "Value": "audit_logger"}],
        [{"Name": "service", "Value": "analytics"}],
        [{"Name": "service", "Value": "fanout"}],
    ]
    assert alarms[0]["TreatMissingData"] == "breaching"
    assert json.dumps(alarms[0]["AlarmActions"])  # notifies the alarm topic


def test_analytics_writes_the_database_as_its_own_login_role(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    (function,) = [
        r["Properties"]
        for r in resources(template, "AWS::Lambda::Function").values()
        if r["Properties"]["Handler"] == "consumers.analytics.handler"
    ]
    url = json.dumps(function["Environment"]["Variables"]["DATABASE_URL"])
    assert "covenant_analytics@" in url and "auth=iam" in url
    statements = _statements(template, "Analytics")
    assert any(s["Action"] == "rds-db:connect" for s in statements)
    assert not any("dynamodb" in json.dumps(s["Action"]) for s in statements)

"""The consumers' stack over the synthesized templates: the audit trail's table, the audit
logger's least privilege (append only), the alert router's topics and claims, the push
consumers' SNS and database access, the schedules, the NATS user, the lag alarms."""

from __future__ import annotations

import json
from typing import Any

from covenant import alerts, audit_anchor, audit_trail
from covenant.regions import load_regions
from stacks.consumers import CONSUMER_FUNCTIONS
from stacks.events import consumers_nats_permissions

from .conftest import PUSH_APPLICATIONS, resources

PRIMARY = next(r for r in load_regions() if r.primary)


def _statements(template: Any, role_fragment: str) -> list[dict[str, Any]]:
    found = []
    for logical_id, policy in resources(template, "AWS::IAM::Policy").items():
        if role_fragment in logical_id:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def test_the_audit_trail_is_a_protected_table_with_its_indexes(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    (table,) = [
        t
        for t in resources(template, "AWS::DynamoDB::Table").values()
        if t["Properties"]["TableName"] == audit_trail.DEFAULT_TABLE
    ]
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
    assert [r["Properties"]["ScheduleExpression"] for r in rules] == ["rate(1 minute)"] * len(
        CONSUMER_FUNCTIONS
    )


def test_the_consumers_nats_user_pulls_and_acks_its_consumers_only() -> None:
    permissions = consumers_nats_permissions()
    allowed = permissions["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.AUDIT.AUDIT_LOGGER" in allowed
    assert "$JS.ACK.AUDIT.AUDIT_LOGGER.>" in allowed
    assert "notifications.>" in allowed  # MOBILE_PUSH publishes to the work queue
    assert not any(a.startswith(("covenant.", "audit.", "alerts.")) for a in allowed)
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
        *([{"Name": "service", "Value": name}] for name in CONSUMER_FUNCTIONS),
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


def _function(template: Any, handler: str) -> dict[str, Any]:
    (function,) = [
        r["Properties"]
        for r in resources(template, "AWS::Lambda::Function").values()
        if r["Properties"]["Handler"] == handler
    ]
    return function


def _actions(statements: list[dict[str, Any]], prefix: str) -> set[str]:
    return {
        action
        for s in statements
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        if action.startswith(prefix)
    }


def test_alerts_go_to_an_encrypted_topic_per_severity_and_claims_expire(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    topics = resources(template, "AWS::SNS::Topic")
    assert sorted(t["Properties"]["TopicName"] for t in topics.values()) == sorted(
        f"covenant-alerts-{s}" for s in alerts.SEVERITIES
    )
    assert all("KmsMasterKeyId" in t["Properties"] for t in topics.values())
    emails = [
        s["Properties"]
        for s in resources(template, "AWS::SNS::Subscription").values()
        if s["Properties"]["Protocol"] == "email"
    ]
    assert len(emails) == 2  # critical and warning; info is for dashboards
    (claims,) = [
        t["Properties"]
        for t in resources(template, "AWS::DynamoDB::Table").values()
        if t["Properties"]["TableName"] == alerts.DEFAULT_TABLE
    ]
    assert claims["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert claims["KeySchema"] == alerts.table_definition(alerts.DEFAULT_TABLE)["KeySchema"]

    router = _function(template, "consumers.alert_router.handler")
    variables = router["Environment"]["Variables"]
    assert all(alerts.TOPIC_ENV[s] in variables for s in alerts.SEVERITIES)
    statements = _statements(template, "AlertRouter")
    assert _actions(statements, "dynamodb:") == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    (publish,) = [s for s in statements if s["Action"] == "sns:Publish"]
    assert len(publish["Resource"]) == 3 and "*" not in json.dumps(publish["Resource"])


def test_push_consumers_reach_only_their_endpoints_and_their_login_roles(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    for name, handler in (
        ("MobilePush", "consumers.mobile_push.handler"),
        ("Notifier", "consumers.notifier.handler"),
    ):
        url = json.dumps(_function(template, handler)["Environment"]["Variables"]["DATABASE_URL"])
        user = "covenant_mobile_push@" if name == "MobilePush" else "covenant_notifier@"
        assert user in url and "auth=iam" in url
        statements = _statements(template, name)
        assert any(s["Action"] == "rds-db:connect" for s in statements)
        assert not _actions(statements, "dynamodb:")
    assert not _actions(_statements(template, "MobilePush"), "sns:")
    (push,) = [
        s for s in _statements(template, "Notifier") if "sns:Publish" in json.dumps(s["Action"])
    ]
    assert sorted(push["Action"]) == ["sns:DeleteEndpoint", "sns:Publish"]
    assert sorted(push["Resource"]) == sorted(
        arn.replace(":app/", ":endpoint/") + "/*" for arn in PUSH_APPLICATIONS.values()
    )


def test_the_primary_mobile_function_registers_devices_on_the_configured_platforms(
    templates,
) -> None:
    def mobile_statements(code: str) -> list[dict[str, Any]]:
        return _statements(templates[f"Covenant-{code}-Api"], "MobileFunction")

    primary = mobile_statements(PRIMARY.code)
    (create,) = [s for s in primary if s["Action"] == "sns:CreatePlatformEndpoint"]
    assert sorted(create["Resource"]) == sorted(PUSH_APPLICATIONS.values())
    assert _actions(primary, "sns:") == {
        "sns:CreatePlatformEndpoint",
        "sns:SetEndpointAttributes",
        "sns:DeleteEndpoint",
    }
    secondary = next(r for r in load_regions() if not r.primary)
    assert not _actions(mobile_statements(secondary.code), "sns:")  # hands its writes off


def test_the_audit_chain_is_anchored_in_a_compliance_locked_bucket(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Consumers"]
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": audit_anchor.RETENTION_DAYS}},
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    statements = _statements(template, "AuditLogger")
    assert _actions(statements, "s3:") == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
    env = _function(template, "consumers.audit_logger.handler")["Environment"]["Variables"]
    assert audit_anchor.BUCKET_ENV in env

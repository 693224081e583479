"""The real-time side over the synthesized templates: each region's WebSocket API in front of
the realtime function, its connection table, the fan-out in the primary region with a rule per
served region, least privilege on @connections and the tables, the alarms."""

from __future__ import annotations

import json
from typing import Any

from covenant.regions import load_regions
from realtime import store
from stacks.events import consumers_nats_permissions

from .conftest import resources

REGIONS = load_regions()
PRIMARY = next(r for r in REGIONS if r.primary)


def _policies(template: Any) -> dict[str, list[dict[str, Any]]]:
    return {
        logical_id: policy["Properties"]["PolicyDocument"]["Statement"]
        for logical_id, policy in resources(template, "AWS::IAM::Policy").items()
    }


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_every_region_serves_the_three_routes_on_a_stage_named_as_the_region(templates) -> None:
    for region in REGIONS:
        template = templates[f"Covenant-{region.code}-Api"]
        websocket = [
            a
            for a in resources(template, "AWS::ApiGatewayV2::Api").values()
            if a["Properties"].get("ProtocolType") == "WEBSOCKET"
        ]
        assert [w["Properties"]["Name"] for w in websocket] == [f"covenant-{region.code}-realtime"]
        routes = sorted(
            r["Properties"]["RouteKey"]
            for r in resources(template, "AWS::ApiGatewayV2::Route").values()
            if r["Properties"]["RouteKey"].startswith("$")
        )
        assert routes == ["$connect", "$default", "$disconnect"]
        stages = [
            s["Properties"]
            for s in resources(template, "AWS::ApiGatewayV2::Stage").values()
            if "realtime" in json.dumps(s["Properties"]["ApiId"]).lower()
        ]
        assert [s["StageName"] for s in stages] == [region.code]
        assert "connectionId" in stages[0]["AccessLogSettings"]["Format"]


def test_the_connection_table_has_the_store_s_keys_index_and_ttl(templates) -> None:
    definition = store.table_definition(store.DEFAULT_TABLE)
    for region in REGIONS:
        template = templates[f"Covenant-{region.code}-Api"]
        (table,) = resources(template, "AWS::DynamoDB::Table").values()
        props = table["Properties"]
        assert props["TableName"] == store.DEFAULT_TABLE
        assert props["KeySchema"] == definition["KeySchema"]
        assert [i["IndexName"] for i in props["GlobalSecondaryIndexes"]] == [store.INDEX]
        assert (
            props["GlobalSecondaryIndexes"][0]["KeySchema"]
            == (definition["GlobalSecondaryIndexes"][0]["KeySchema"])
        )
        assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}


def test_the_realtime_function_manages_only_its_own_stage_s_connections(templates) -> None:
    for region in REGIONS:
        template = templates[f"Covenant-{region.code}-Api"]
        manage = [
            s
            for statements in _policies(template).values()
            for s in statements
            if "execute-api:ManageConnections" in _actions(s)
        ]
        assert len(manage) == 1
        arns = json.dumps(manage[0]["Resource"])
        assert f"/{region.code}/POST/@connections/*" in arns
        assert f"/{region.code}/DELETE/@connections/*" in arns
        assert "/GET/" not in arns and ":*/" not in arns  # its own API's id, no wildcard
        env = next(
            f["Properties"]["Environment"]["Variables"]
            for f in resources(template, "AWS::Lambda::Function").values()
            if f["Properties"].get("Handler") == "realtime.handler.handler"
        )
        assert "WEBSOCKET_MANAGEMENT_URL" in env
        assert "DATABASE_URL" not in env  # reads only: no writer, no hand-off


def test_the_fanout_runs_in_the_primary_once_per_served_region(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Realtime"]
    (function,) = [
        f
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == "realtime.fanout.handler"
    ]
    env = function["Properties"]["Environment"]["Variables"]
    assert {"NATS_URL", "NATS_SECRET_ARN", "WEBSOCKET_MANAGEMENT_URLS"} <= set(env)
    rules = resources(template, "AWS::Events::Rule").values()
    inputs = sorted(json.loads(r["Properties"]["Targets"][0]["Input"])["region"] for r in rules)
    assert inputs == sorted(r.code for r in REGIONS)
    assert all(r["Properties"]["ScheduleExpression"] == "rate(1 minute)" for r in rules)
    statements = [s for ss in _policies(template).values() for s in ss]
    manage = [s for s in statements if "execute-api:ManageConnections" in _actions(s)]
    arns = json.dumps([s["Resource"] for s in manage])
    for region in REGIONS:
        assert f"execute-api:{region.aws_region}:" in arns
        assert f"/{region.code}/POST/@connections/*" in arns
    tables = [s for s in statements if any(a.startswith("dynamodb:") for a in _actions(s))]
    assert {a for s in tables for a in _actions(s)} == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:BatchWriteItem",
    }


def test_the_fanout_may_read_covenant_messages_and_nothing_more_of_jetstream() -> None:
    allowed = consumers_nats_permissions()["publish"]["allow"]
    assert "$JS.API.DIRECT.GET.COVENANT" in allowed
    assert "$JS.API.STREAM.INFO.COVENANT" in allowed
    for region in REGIONS:
        name = f"REALTIME_{region.code.upper()}"
        assert f"$JS.API.CONSUMER.MSG.NEXT.COVENANT.{name}" in allowed
    assert not [a for a in allowed if "DELETE" in a or "PURGE" in a or "CREATE" in a]


def test_fanout_lag_and_delivery_errors_alarm_in_the_primary(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Monitoring"]
    alarms = {
        a["Properties"].get("MetricName"): a["Properties"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Dimensions") == [{"Name": "service", "Value": "fanout"}]
    }
    assert set(alarms) == {"ConsumerLag", "DeliveryErrors"}
    assert alarms["ConsumerLag"]["TreatMissingData"] == "breaching"

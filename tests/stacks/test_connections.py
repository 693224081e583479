"""Database connections are bounded by the instances' `max_connections`, and a secondary region
writes only by handing the request to the primary region's same function (issue 13's design):
reader URL only, the primary function's ARN, and the grant to invoke exactly that."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest

from covenant.regions import cdk_context, load_regions
from stacks.capacity import budgets, check_connection_budget
from stacks.functions import primary_function_arn
from stacks.settings import AppSettings, SettingsError

from .conftest import resources

REGIONS = load_regions()
PRIMARY = next(r for r in REGIONS if r.primary)
SECONDARIES = [r for r in REGIONS if not r.primary]
API_FUNCTIONS = {"graphql": "graphql_api.handler.handler", "mobile": "mobile.handler.handler"}


def _settings(context: dict[str, Any] | None = None) -> AppSettings:
    return AppSettings.from_node(cdk.App(context=context or cdk_context()).node)


def _function(template, handler: str) -> dict[str, Any]:
    [found] = [
        r["Properties"]
        for r in resources(template, "AWS::Lambda::Function").values()
        if r["Properties"].get("Handler") == handler
    ]
    return found


def test_max_connections_follows_aurora_postgresqls_formula() -> None:
    database = _settings().database
    # LEAST({DBInstanceClassMemory/9531392}, 5000) for db.r6g.large: AWS's table says 1000.
    assert database.max_connections == 1000
    assert database.function_connections == 1000 - database.reserved_connections
    for budget in budgets(_settings()):
        assert 0 < budget.used <= budget.limit, budget


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.code)
def test_every_database_function_has_the_reserved_concurrency_of_its_region_role(
    templates, region
) -> None:
    deploy = cdk_context()["covenant:deploy"]
    template = templates[f"Covenant-{region.code}-Api"]
    role = "primary" if region.primary else "secondary"
    for name, handler in API_FUNCTIONS.items():
        expected = deploy[name]["reservedConcurrency"][role]
        assert _function(template, handler)["ReservedConcurrentExecutions"] == expected, name


def test_a_budget_an_instance_cannot_hold_stops_the_synth() -> None:
    context = cdk_context()
    context["covenant:deploy"] = {
        **context["covenant:deploy"],
        "graphql": {
            **context["covenant:deploy"]["graphql"],
            "reservedConcurrency": {"primary": 900, "secondary": 600},
        },
    }
    with pytest.raises(SettingsError, match="primary writer: graphql 900 \\+ mobile 300"):
        check_connection_budget(_settings(context))
    context["covenant:deploy"]["graphql"]["reservedConcurrency"] = None
    with pytest.raises(SettingsError, match="unbounded"):
        check_connection_budget(_settings(context))


@pytest.mark.parametrize("region", SECONDARIES, ids=lambda r: r.code)
def test_a_secondary_reads_its_reader_and_hands_writes_to_the_primary_function(
    templates, region
) -> None:
    template = templates[f"Covenant-{region.code}-Api"]
    policies = resources(template, "AWS::IAM::Policy").values()
    for name, handler in API_FUNCTIONS.items():
        env = _function(template, handler)["Environment"]["Variables"]
        assert "DATABASE_URL" not in env, name  # no writer connection in a secondary
        assert "DATABASE_READER_URL" in env
        target = json.dumps(env["COVENANT_PRIMARY_FUNCTION"])
        qualifier = ":live" if name == "graphql" else ""  # GraphQL's API invokes its alias
        assert f":lambda:{PRIMARY.aws_region}:" in target
        assert f':function:covenant-{PRIMARY.code}-{name}{qualifier}"' in target
        invokes = [
            s
            for p in policies
            if f"{name.title()}FunctionRole" in json.dumps(p["Properties"]["Roles"])
            for s in p["Properties"]["PolicyDocument"]["Statement"]
            if "lambda:InvokeFunction" in json.dumps(s["Action"])
        ]
        assert len(invokes) == 1, name
        assert invokes[0]["Action"] == "lambda:InvokeFunction"
        assert invokes[0]["Resource"] == env["COVENANT_PRIMARY_FUNCTION"]


def test_the_primary_functions_have_the_fixed_names_the_secondaries_invoke(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Api"]
    for name, handler in API_FUNCTIONS.items():
        function = _function(template, handler)
        assert function["FunctionName"] == f"covenant-{PRIMARY.code}-{name}"
        env = function["Environment"]["Variables"]
        assert "DATABASE_URL" in env and "COVENANT_PRIMARY_FUNCTION" not in env
    aliases = [a["Properties"] for a in resources(template, "AWS::Lambda::Alias").values()]
    assert [a["Name"] for a in aliases] == ["live"]
    # The alias the secondaries invoke is the one API Gateway's GraphQL integration invokes.
    integrations = json.dumps(resources(template, "AWS::ApiGatewayV2::Integration"))
    assert "GraphqlFunctionLive" in integrations


def test_failover_is_the_primary_flag_only() -> None:
    context = cdk_context()
    context["covenant:regions"] = [
        {**entry, "primary": entry["code"] == "ams"} for entry in context["covenant:regions"]
    ]
    arn = primary_function_arn(_settings(context), "graphql")
    assert ":lambda:eu-west-1:" in arn and arn.endswith(":function:covenant-ams-graphql:live")


def test_secondary_clusters_do_not_forward_writes(templates) -> None:
    for region in SECONDARIES:
        template = templates[f"Covenant-{region.code}-Data"]
        for cluster in resources(template, "AWS::RDS::DBCluster").values():
            assert not cluster["Properties"].get("EnableGlobalWriteForwarding"), region.code

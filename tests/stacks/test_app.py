"""The CDK app synthesizes offline and each regional stack has the shape the clients rely on."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from app import build_app
from covenant.regions import cdk_context, load_regions


@pytest.fixture(scope="module")
def assembly() -> cdk.cx_api.CloudAssembly:
    return build_app(cdk.App(context=cdk_context())).synth()


@pytest.fixture(scope="module")
def templates(assembly) -> dict[str, Template]:
    stacks = {s.stack_name: s for s in assembly.stacks}
    return {
        region.code: Template.from_json(stacks[f"Covenant-{region.code}-Api"].template)
        for region in load_regions()
    }


def test_one_stack_per_region_in_its_aws_region(assembly) -> None:
    regions = {s.stack_name: s.environment.region for s in assembly.stacks}
    assert regions == {f"Covenant-{r.code}-Api": r.aws_region for r in load_regions()}


@pytest.mark.parametrize("code", [r.code for r in load_regions()])
def test_regional_api_serves_health_on_a_stage_named_after_the_region(templates, code) -> None:
    template: Template = templates[code]
    template.resource_count_is("AWS::ApiGatewayV2::Api", 1)
    template.has_resource_properties("AWS::ApiGatewayV2::Api", {"ProtocolType": "HTTP"})
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "StageName": code,
            "AutoDeploy": True,
            "DefaultRouteSettings": {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400},
        },
    )
    template.has_resource_properties("AWS::ApiGatewayV2::Route", {"RouteKey": "GET /health"})
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "mobile.handler.handler",
            "Runtime": "python3.13",
            "Architectures": ["arm64"],
            "TracingConfig": {"Mode": "Active"},
            "Layers": Match.any_value(),
            "Environment": {
                "Variables": Match.object_like(
                    {"COVENANT_REGION": code, "POWERTOOLS_SERVICE_NAME": "mobile"}
                )
            },
        },
    )
    variables = next(
        r["Properties"]["Environment"]["Variables"]
        for r in template.find_resources("AWS::Lambda::Function").values()
        if r["Properties"].get("Handler") == "mobile.handler.handler"
    )
    assert [r["code"] for r in json.loads(variables["COVENANT_REGIONS"])] == [
        r.code for r in load_regions()
    ]
    template.resource_count_is("AWS::Lambda::LayerVersion", 2)
    template.has_resource_properties(
        "AWS::Lambda::LayerVersion",
        {"CompatibleRuntimes": ["python3.13"], "CompatibleArchitectures": ["arm64"]},
    )


def test_the_dependencies_layer_holds_the_pinned_packages_for_arm64() -> None:
    from stacks.layers import build_dependencies, runtime_requirements

    folder = build_dependencies(runtime_requirements()) / "python"
    for package in ("pg8000", "aws_lambda_powertools", "ariadne", "nats"):
        assert (folder / package).is_dir()
    assert any(p.name == "pg8000-1.31.6.dist-info" for p in folder.iterdir())

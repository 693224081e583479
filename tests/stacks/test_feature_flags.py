"""cdk.json holds the feature flags `cdk init` writes for the pinned aws-cdk-lib, and with them a
change in any layer publishes a new GraphQL version (the one the `live` alias serves)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_

from covenant.regions import cdk_context
from stacks.functions import CovenantFunction
from stacks.layers import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from stacks.settings import AppSettings

LAYER_FLAG = "@aws-cdk/aws-lambda:recognizeLayerVersion"


def recommended_flags() -> dict[str, Any]:
    """The flags `cdk init` writes, as the installed aws-cdk-lib ships them."""
    package = Path(cdk.__file__).parent / "_jsii"
    [assembly] = package.glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(assembly) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        flags: dict[str, Any] = json.load(member)
    return flags


def test_cdk_json_sets_every_recommended_flag_of_the_pinned_aws_cdk_lib() -> None:
    context = cdk_context()
    flags = recommended_flags()
    assert len(flags) > 80
    assert {k: context.get(k) for k in flags} == flags
    # Nothing stale: every @aws-cdk key in cdk.json is one the pinned library recommends.
    assert {k for k in context if k.startswith("@aws-cdk")} == set(flags)
    assert context[LAYER_FLAG] is True


def _layer(root: Path, name: str, content: str) -> Path:
    folder = root / name
    (folder / "python").mkdir(parents=True, exist_ok=True)
    (folder / "python" / f"{name}.py").write_text(content)
    return folder


def _graphql_version(tmp: Path, context: dict[str, Any], changed: str | None) -> str:
    """The logical id of the GraphQL function's published version, with the three layers
    (dependencies, shared code, database CA) and one of them changed."""
    app = cdk.App(context=context, outdir=str(tmp / "out"))
    settings = AppSettings.from_node(app.node)
    stack = cdk.Stack(app, "Api", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    layers = [
        lambda_.LayerVersion(
            stack,
            name,
            code=lambda_.Code.from_asset(str(_layer(tmp, name, "v2" if name == changed else "v1"))),
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[LAMBDA_ARCHITECTURE],
        )
        for name in ("Dependencies", "SharedCode", "DatabaseCa")
    ]
    function = CovenantFunction(
        stack,
        "GraphqlFunction",
        package="graphql_api",
        handler="graphql_api.handler.handler",
        description="GraphQL",
        deploy=settings.deploy_settings("graphql"),
        settings=settings,
        layers=layers,
        environment={},
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        security_group=ec2.SecurityGroup(stack, "Group", vpc=vpc),
        log_key=kms.Key(stack, "Key"),
    )
    assert isinstance(function.target, lambda_.Alias)  # SnapStart: the live alias
    template = app.synth().get_stack_by_name("Api").template
    [alias] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Alias"]
    version: str = alias["Properties"]["FunctionVersion"]["Fn::GetAtt"][0]
    assert template["Resources"][version]["Type"] == "AWS::Lambda::Version"
    return version


@pytest.mark.parametrize("changed", ["Dependencies", "SharedCode", "DatabaseCa"])
def test_a_change_in_any_layer_publishes_a_new_graphql_version(tmp_path: Path, changed) -> None:
    context = cdk_context()
    assert settings_has_snap_start(context)
    before = _graphql_version(tmp_path / "a", context, None)
    after = _graphql_version(tmp_path / "b", context, changed)
    assert before != after, f"a change in the {changed} layer kept the version"


def test_without_the_flag_a_layer_change_would_keep_the_stale_version(tmp_path: Path) -> None:
    # The finding of issue 14: what the flag fixes, so this test fails if it stops mattering.
    context = {**cdk_context(), LAYER_FLAG: False}
    before = _graphql_version(tmp_path / "a", context, None)
    after = _graphql_version(tmp_path / "b", context, "SharedCode")
    assert before == after


def settings_has_snap_start(context: dict[str, Any]) -> bool:
    return bool(context["covenant:deploy"]["graphql"]["snapStart"])

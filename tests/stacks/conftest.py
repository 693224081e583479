"""The whole app, synthesized once per test session, offline, as `cdk synth` would: every stack
of the six regions, cdk-nag's AwsSolutions pack enabled (an unacknowledged finding fails the
synth, and with it every test here, with the findings in the message).

The custom domain and the alarm e-mail are optional in cdk.json; the tests switch them on so
their resources are synthesized and checked too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from app import build_app
from covenant.regions import cdk_context

DOMAIN = {"name": "covenant.example.org", "hostedZoneId": "Z0123456789EXAMPLEZONE"}


def synth_context() -> dict[str, Any]:
    context = cdk_context()
    context["covenant:domain"] = DOMAIN
    context["covenant:alarmEmail"] = "oncall@example.org"
    return context


def _findings(outdir: Path) -> str:
    report = outdir / "validation-report.json"
    if not report.exists():
        return "(no validation report)"
    lines = []
    for plugin in json.loads(report.read_text())["pluginReports"]:
        for violation in plugin["violations"]:
            for construct in violation["violatingConstructs"]:
                lines.append(f"{violation['ruleName']} at {construct['constructPath']}")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cdk.cx_api.CloudAssembly]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    try:
        assembly = build_app(cdk.App(context=synth_context(), outdir=str(outdir))).synth()
    except RuntimeError as exc:
        if "ValidationFailed" not in str(exc):
            raise
        pytest.fail(f"cdk-nag findings nobody acknowledged:\n{_findings(outdir)}")
    yield assembly


@pytest.fixture(scope="session")
def stacks(cloud_assembly: cdk.cx_api.CloudAssembly) -> dict[str, Any]:
    return {s.stack_name: s for s in cloud_assembly.stacks}


@pytest.fixture(scope="session")
def templates(stacks: dict[str, Any]) -> dict[str, Template]:
    return {name: Template.from_json(stack.template) for name, stack in stacks.items()}


def resources(template: Template, kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = template.find_resources(kind)
    return found

"""cdk-nag (AwsSolutions) and cfn-lint pass on every synthesized stack."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from cfnlint.api import ManualArgs, lint_by_config

from stacks.nag import enable_nag

# CDK writes an explicit DependsOn on a function's role next to the GetAtt of it; redundant, harmless.
CFN_LINT_IGNORED = ["W3005"]


def test_cdk_nag_reports_no_finding_anyone_left_unacknowledged(cloud_assembly) -> None:
    # The session's synth ran the AwsSolutions pack on every stack; it fails on any finding.
    assert len(cloud_assembly.stacks) == 29


def test_cdk_nag_is_wired_to_fail_the_synth_on_a_finding(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Careless")
    sqs.Queue(stack, "Plain")  # no SSL enforcement, no DLQ
    enable_nag(app)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert "AwsSolutions-SQS4" in (tmp_path / "validation-report.json").read_text()


def test_cfn_lint_passes_on_every_template(cloud_assembly) -> None:
    # One cfn-lint run per AWS region (its resource specs), over that region's templates.
    by_region: dict[str, list[str]] = {}
    for stack in cloud_assembly.stacks:
        path = Path(cloud_assembly.directory) / stack.template_file
        by_region.setdefault(stack.environment.region, []).append(str(path))
    assert sum(len(paths) for paths in by_region.values()) == 29
    problems = [
        str(match)
        for region, paths in by_region.items()
        for match in lint_by_config(
            ManualArgs(templates=paths, regions=[region], ignore_checks=CFN_LINT_IGNORED)
        )
    ]
    assert problems == []

"""Smaller findings of issue 14: log groups under the region's data key, stateful secrets kept,
no cross-stack export that would lock a producer, and docs that say what the templates do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import resources

REPO = Path(__file__).resolve().parents[2]


def _resolve(templates: dict[str, Any], stack: str, value: Any) -> tuple[str, Any]:
    while isinstance(value, dict) and "Fn::GetStackOutput" in value:
        ref = value["Fn::GetStackOutput"]
        stack = ref["StackName"]
        value = templates[stack].to_json()["Outputs"][ref["OutputName"]]["Value"]
    return stack, value


def test_every_log_group_is_encrypted_with_its_regions_data_key(templates) -> None:
    seen = 0
    for name, template in templates.items():
        code = name.split("-")[1]
        for logical, group in resources(template, "AWS::Logs::LogGroup").items():
            assert "KmsKeyId" in group["Properties"], f"{name}/{logical}"
            stack, value = _resolve(templates, name, group["Properties"]["KmsKeyId"])
            assert stack == f"Covenant-{code}-Network", f"{name}/{logical}"
            key = templates[stack].to_json()["Resources"][value["Fn::GetAtt"][0]]
            assert key["Type"] == "AWS::KMS::Key"
            assert "logs" in key["Properties"]["Description"]
            seen += 1
    assert seen > 30
    for name, template in templates.items():
        if name.endswith("-Network"):
            policy = json.dumps(resources(template, "AWS::KMS::Key"))
            assert "logs." in policy and "kms:EncryptionContext:aws:logs:arn" in policy


def test_every_secret_outlives_its_stack(templates) -> None:
    secrets = [
        (name, secret)
        for name, template in templates.items()
        for secret in resources(template, "AWS::SecretsManager::Secret").values()
    ]
    assert len(secrets) == 4  # the master password, the three NATS users
    for name, secret in secrets:
        assert secret["DeletionPolicy"] == "Retain", name


def test_no_stack_exports_a_value_another_must_import(stacks) -> None:
    # Exports lock their producer (a security group could not be replaced while imported);
    # references are weak (Fn::GetStackOutput), within and across regions.
    weak = 0
    for name, stack in stacks.items():
        text = json.dumps(stack.template)
        assert "Fn::ImportValue" not in text, name
        assert not any("Export" in o for o in stack.template.get("Outputs", {}).values()), name
        assert "Custom::CrossRegionExport" not in text, name
        weak += text.count("Fn::GetStackOutput")
    assert weak > 0


def test_the_deploy_doc_says_what_aurora_and_the_templates_allow() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    assert "at most 5 secondary" not in doc
    assert "10 secondary regions" in doc
    # The secondaries hand writes to the primary's functions; the doc may say why write
    # forwarding was not chosen, never that a cluster uses it.
    assert "with global write forwarding" not in doc
    assert "secondaries forward writes" not in doc

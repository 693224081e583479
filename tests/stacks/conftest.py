"""The whole app, synthesized once per test session, offline, as `cdk synth` would: every stack
of the six regions, cdk-nag's AwsSolutions pack enabled (an unacknowledged finding fails the
synth, and with it every test here, with the findings in the message).

The custom domain, the alarm e-mail and the database CA bundle are optional in cdk.json; the
tests switch them on so their resources are synthesized and checked too (the bundle is a CA
made for the test: AWS's cannot be fetched offline).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app import build_app
from covenant.regions import cdk_context

DOMAIN = {"name": "covenant.example.org", "hostedZoneId": "Z0123456789EXAMPLEZONE"}
# SNS platform applications are made by an operator (no CloudFormation resource): their ARNs.
PUSH_APPLICATIONS = {
    "apnsApplicationArn": "arn:aws:sns:us-east-1:111122223333:app/APNS/covenant-apns",
    "fcmApplicationArn": "arn:aws:sns:us-east-1:111122223333:app/GCM/covenant-fcm",
}


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate valid for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_ca_bundle(path: Path) -> Path:
    """A self-signed CA certificate in PEM, standing in for AWS's RDS global bundle."""
    _, certificate = make_ca("Covenant Test RDS CA")
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def synth_context() -> dict[str, Any]:
    """cdk.json as committed (database CA fetched at deploy time), plus a domain, an alarm
    e-mail and the push platform applications so their resources are synthesized too."""
    context = cdk_context()
    context["covenant:domain"] = DOMAIN
    context["covenant:alarmEmail"] = "oncall@example.org"
    context["covenant:push"] = PUSH_APPLICATIONS
    return context


@pytest.fixture(scope="session")
def ca_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca_bundle(tmp_path_factory.mktemp("ca") / "rds-test-bundle.pem")


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
def cloud_assembly(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[cdk.cx_api.CloudAssembly]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    try:
        app = cdk.App(context=synth_context(), outdir=str(outdir))
        assembly = build_app(app).synth()
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

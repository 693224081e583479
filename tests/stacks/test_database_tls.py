"""How the functions' database connections are secured: always verify-full. By default the CA
is AWS's RDS bundle of the region, fetched inside AWS at deploy time (Custom::CovenantDatabaseCa)
into SSM, which the functions read at their first connection; a `caBundle` in cdk.json ships a
PEM file in a layer instead. Nothing is fetched at synth time."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from database_ca import handler as ca_handler
from moto import mock_aws

from covenant import aws, db
from covenant.db import ConnectionSpec, DatabaseUnavailable, ssm_ca_bundle
from covenant.regions import load_regions
from stacks.layers import build_ca_layer
from stacks.settings import (
    DATABASE_CA_FILE,
    DATABASE_CA_PARAMETER_PATH,
    RDS_TRUSTSTORE,
    SettingsError,
    _ca_bundle,
)

from .conftest import make_ca_bundle, resources

PATH = DATABASE_CA_PARAMETER_PATH
REGIONS = load_regions()
SSM_TLS = f"sslmode=verify-full&sslrootcert=ssm:{PATH}"


def _functions(template: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical, resource in resources(template, "AWS::Lambda::Function").items():
        yield logical, resource["Properties"]


def test_every_database_url_of_every_template_verifies_the_server(templates) -> None:
    seen = 0
    for name, template in templates.items():
        for logical, props in _functions(template):
            variables = props.get("Environment", {}).get("Variables", {})
            for key in ("DATABASE_URL", "DATABASE_READER_URL", "DATABASE_TLS"):
                if key in variables:
                    seen += 1
                    assert SSM_TLS in json.dumps(variables[key]), (name, logical, key)
                    assert "sslmode=require" not in json.dumps(variables[key])
    # GraphQL and mobile: writer and reader URLs in the primary, the reader's in the five
    # secondaries; the bridge (two), the analytics consumer (two), the migrator (DATABASE_TLS);
    # the realtime handler's reader URL in all six, the fan-out's writer (two)
    assert seen == 2 * 2 + 5 * 2 + 2 + 2 + 1 + 6 + 2


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.code)
def test_each_data_stack_stores_its_regions_rds_bundle_at_deploy_time(templates, region) -> None:
    template = templates[f"Covenant-{region.code}-Data"]
    [stored] = resources(template, "Custom::CovenantDatabaseCa").values()
    props = stored["Properties"]
    assert props["Path"] == PATH
    assert props["Url"] == (f"{RDS_TRUSTSTORE}/{region.aws_region}/{region.aws_region}-bundle.pem")
    [handler] = [
        p for _, p in _functions(template) if p.get("Handler") == "database_ca.handler.handler"
    ]
    assert "VpcConfig" not in handler  # reaches the truststore over the internet
    if region.primary:
        [migrations] = [r for r in resources(template, "Custom::CovenantMigrations").values()]
        depends = json.dumps(migrations.get("DependsOn", []))
        assert "DatabaseCaStored" in depends  # the migrator's verify-full needs the CA first


def test_the_ca_handler_may_write_only_under_its_path(templates) -> None:
    template = templates["Covenant-iad-Data"]
    statements = [
        s
        for policy in resources(template, "AWS::IAM::Policy").values()
        if "DatabaseCaRole" in json.dumps(policy["Properties"]["Roles"])
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    ssm = [s for s in statements if any(a.startswith("ssm:") for a in _list(s["Action"]))]
    text = json.dumps(ssm)
    assert set().union(*(_list(s["Action"]) for s in ssm)) == {
        "ssm:PutParameter",
        "ssm:DeleteParameters",
        "ssm:GetParametersByPath",
    }
    assert f"parameter{PATH}/*" in text and '"*"' not in text


def test_every_function_with_a_database_url_may_read_exactly_the_ca_path(templates) -> None:
    for name, template in templates.items():
        policies = resources(template, "AWS::IAM::Policy").values()
        for logical, props in _functions(template):
            variables = json.dumps(props.get("Environment", {}).get("Variables", {}))
            if "sslrootcert=ssm:" not in variables:
                continue
            role = props["Role"]["Fn::GetAtt"][0]
            statements = [
                s
                for p in policies
                if role in json.dumps(p["Properties"]["Roles"])
                for s in p["Properties"]["PolicyDocument"]["Statement"]
            ]
            reads = [s for s in statements if "ssm:GetParametersByPath" in _list(s["Action"])]
            assert len(reads) == 1, (name, logical)
            assert json.dumps(reads[0]["Resource"]).endswith(f':parameter{PATH}"]]}}'), reads


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- the handler and the reader, against moto's SSM -------------------------------------------


def _bundle(tmp_path: Path, count: int) -> str:
    return "".join(make_ca_bundle(tmp_path / f"ca{i}.pem").read_text() for i in range(count))


@mock_aws
def test_the_handler_stores_one_parameter_per_certificate_and_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bundles = iter([_bundle(tmp_path, 3), _bundle(tmp_path, 2)])
    fetched: list[str] = []

    def fetch(url: str) -> str:
        fetched.append(url)
        return next(bundles)

    monkeypatch.setattr(ca_handler, "fetch", fetch)
    url = f"{RDS_TRUSTSTORE}/us-east-1/us-east-1-bundle.pem"
    event = {"RequestType": "Create", "ResourceProperties": {"Url": url, "Path": PATH}}
    ca_handler.handler(event, None)
    ssm = boto3.client("ssm", "us-east-1")
    names = lambda: sorted(  # noqa: E731
        p["Name"] for p in ssm.get_parameters_by_path(Path=PATH)["Parameters"]
    )
    assert names() == [f"{PATH}/0", f"{PATH}/1", f"{PATH}/2"]
    ca_handler.handler({**event, "RequestType": "Update"}, None)
    assert names() == [f"{PATH}/0", f"{PATH}/1"]
    assert fetched == [url, url]
    ca_handler.handler({**event, "RequestType": "Delete"}, None)
    assert names() == []


def test_the_handler_refuses_what_is_not_a_bundle_from_the_truststore() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        ca_handler.certificates("<html>not found</html>")
    with pytest.raises(ValueError, match="must come from"):
        ca_handler.fetch("https://example.org/bundle.pem")


@mock_aws
def test_a_connection_with_sslrootcert_ssm_verifies_against_the_stored_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    aws.forget_clients()
    db.forget_ca_bundles()
    ssm = boto3.client("ssm", "us-east-1")
    pems = ca_handler.certificates(_bundle(tmp_path, 2))
    ca_handler.store(ssm, PATH, pems)
    url = f"postgresql://covenant_graphql@db.example:5432/covenant?{SSM_TLS}&auth=iam"
    context = ConnectionSpec.from_url(url).ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 2
    assert ssm_ca_bundle(PATH) == "".join(pems)
    db.forget_ca_bundles()
    aws.forget_clients()


@mock_aws
def test_without_the_stored_ca_the_database_is_unavailable_not_unverified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    aws.forget_clients()
    db.forget_ca_bundles()
    spec = ConnectionSpec.from_url(f"postgresql://u@h:5432/d?{SSM_TLS}&auth=iam")
    with pytest.raises(OSError, match="no database CA"):
        spec.ssl_context()
    assert issubclass(DatabaseUnavailable, RuntimeError)
    aws.forget_clients()


# -- the caBundle alternative -------------------------------------------------------------------


def test_a_bundle_makes_every_connection_verify_the_server(ca_bundle: Path) -> None:
    layer = build_ca_layer(ca_bundle)
    placed = layer / Path(DATABASE_CA_FILE).relative_to("/opt")
    assert placed.read_bytes() == ca_bundle.read_bytes()
    url = f"postgresql://covenant_graphql@db.example:5432/covenant?sslmode=verify-full&sslrootcert={placed}&auth=iam"
    context = ConnectionSpec.from_url(url).ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "Covenant Test RDS CA"),),)
    ]


def test_no_synth_warning_about_unverified_database_tls(stacks) -> None:
    warnings = [
        str(message.entry.data)
        for artifact in stacks.values()
        for message in artifact.messages
        if message.level == cdk.cx_api.SynthesisMessageLevel.WARNING
    ]
    assert not [w for w in warnings if "not verified" in w]


def test_a_bundle_path_that_is_missing_or_not_pem_stops_the_synth(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        _ca_bundle(str(tmp_path / "absent.pem"))
    (tmp_path / "key.txt").write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="no PEM certificate"):
        _ca_bundle(str(tmp_path / "key.txt"))
    assert _ca_bundle(None) is None and _ca_bundle("") is None
    good = make_ca_bundle(tmp_path / "ca.pem")
    assert _ca_bundle(str(good)) == good

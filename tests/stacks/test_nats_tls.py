"""NATS speaks TLS inside the VPC, verified: cert-manager (its official chart) issues the
servers' certificate from a private CA inside the EKS cluster; the NATS chart serves clients
and routes with it; the CA certificate is read at deploy time and handed to every function that
connects to NATS, with the name to verify and a tls:// URL. Nothing is fetched at synth time.
tests/functions/bridge/test_tls.py holds the clients' side against a real nats-server."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Template

from covenant.regions import cdk_context, load_regions
from stacks.events import NATS_TLS_HOSTNAME

from .conftest import resources

PRIMARY = next(r for r in load_regions() if r.primary)
EVENTS = f"Covenant-{PRIMARY.code}-Events"


def _charts(template: Template) -> dict[str, tuple[str, dict[str, Any]]]:
    """Chart name -> (logical id, properties) of the Helm releases of a template."""
    return {
        r["Properties"]["Chart"]: (logical_id, r)
        for logical_id, r in resources(template, "Custom::AWSCDK-EKS-HelmChart").items()
    }


def _values(properties: dict[str, Any]) -> Any:
    """Helm values that CloudFormation assembles with Fn::Join, every token as "TOKEN"."""
    value = properties["Values"]
    if isinstance(value, str):
        return json.loads(value)
    return json.loads("".join(p if isinstance(p, str) else "TOKEN" for p in value["Fn::Join"][1]))


def _manifests(template: Template) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Logical id -> (resource, the Kubernetes objects it applies)."""
    found = {}
    for logical_id, resource in resources(
        template, "Custom::AWSCDK-EKS-KubernetesResource"
    ).items():
        manifest = resource["Properties"]["Manifest"]
        if not isinstance(manifest, str):
            manifest = "".join(
                p if isinstance(p, str) else "TOKEN" for p in manifest["Fn::Join"][1]
            )
        found[logical_id] = (resource, json.loads(manifest))
    return found


def _certificates(template: Template) -> tuple[str, list[dict[str, Any]]]:
    [(logical_id, objects)] = [
        (logical_id, objects)
        for logical_id, (_, objects) in _manifests(template).items()
        if any(o.get("apiVersion", "").startswith("cert-manager.io/") for o in objects)
    ]
    return logical_id, objects


def _depends_on(template: Template, logical_id: str) -> set[str]:
    depends = template.to_json()["Resources"][logical_id].get("DependsOn", [])
    return set([depends] if isinstance(depends, str) else depends)


def test_cert_manager_runs_from_its_official_chart_at_the_pinned_version(templates) -> None:
    template = templates[EVENTS]
    _, chart = _charts(template)["cert-manager"]
    properties = chart["Properties"]
    assert properties["Repository"] == "https://charts.jetstack.io"
    assert properties["Version"] == cdk_context()["covenant:events"]["certManagerChartVersion"]
    assert properties["Wait"] is True  # its webhook answers before the certificates apply
    assert _values(properties)["crds"] == {"enabled": True, "keep": True}


def test_a_private_ca_inside_the_cluster_issues_the_servers_certificate(templates) -> None:
    template = templates[EVENTS]
    _, objects = _certificates(template)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert all(o["metadata"]["namespace"] == "nats" for o in objects)
    assert by_name[("Issuer", "nats-selfsigned")]["spec"] == {"selfSigned": {}}
    ca = by_name[("Certificate", "nats-ca")]["spec"]
    assert ca["isCA"] is True
    assert ca["issuerRef"] == {"name": "nats-selfsigned", "kind": "Issuer"}
    # Renewed with the same key: the CA the functions hold verifies what the renewed CA signs.
    assert ca["privateKey"]["rotationPolicy"] == "Never"
    assert by_name[("Issuer", "nats-ca")]["spec"] == {"ca": {"secretName": ca["secretName"]}}
    server = by_name[("Certificate", "nats-server-tls")]["spec"]
    assert server["issuerRef"] == {"name": "nats-ca", "kind": "Issuer"}
    assert "isCA" not in server
    assert NATS_TLS_HOSTNAME in server["dnsNames"]  # what clients verify
    assert "*.nats-headless.nats.svc.cluster.local" in server["dnsNames"]  # the routes
    assert set(server["usages"]) == {"server auth", "client auth"}


def test_nats_serves_clients_and_routes_with_that_certificate(templates) -> None:
    template = templates[EVENTS]
    charts = _charts(template)
    nats_id, nats = charts["nats"]
    config = _values(nats["Properties"])["config"]
    certificates_id, objects = _certificates(template)
    [server] = [o for o in objects if o["metadata"]["name"] == "nats-server-tls"]
    secret = server["spec"]["secretName"]
    assert config["nats"]["tls"] == {"enabled": True, "secretName": secret}
    # Routes verify each other against the CA (the chart renders ca_file and verify: true).
    assert config["cluster"]["tls"] == {"enabled": True, "secretName": secret, "ca": "ca.crt"}
    # Ordered: cert-manager, then its objects, then NATS (whose pods mount the secret).
    assert certificates_id in _depends_on(template, nats_id)
    cert_manager_id, _ = charts["cert-manager"]
    assert cert_manager_id in _depends_on(template, certificates_id)


def _nats_clients(templates) -> dict[str, dict[str, Any]]:
    """Every function of the app that connects to NATS (it has NATS_URL): name -> its
    environment. Derived from the templates, not listed by hand."""
    found = {}
    for stack, template in templates.items():
        for logical_id, function in resources(template, "AWS::Lambda::Function").items():
            variables = function["Properties"].get("Environment", {}).get("Variables", {})
            if "NATS_URL" in variables:
                found[f"{stack}/{logical_id}"] = variables
    return found


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def test_every_nats_client_verifies_the_servers_against_the_ca_read_at_deploy_time(
    templates,
) -> None:
    events = templates[EVENTS]
    [(authority_id, authority)] = [
        (logical_id, r)
        for logical_id, r in resources(events, "Custom::AWSCDK-EKS-KubernetesObjectValue").items()
        if r["Properties"]["ObjectType"] == "secret"
    ]
    properties = authority["Properties"]
    assert properties["ObjectName"] == "nats-server-tls"
    assert properties["ObjectNamespace"] == "nats"
    assert properties["JsonPath"] == r".data.ca\.crt"
    certificates_id, _ = _certificates(events)
    assert certificates_id in _depends_on(events, authority_id)

    clients = _nats_clients(templates)
    names = {name.split("/")[1] for name in clients}
    # The bridge, the topology function and the stream consumers, at least.
    assert any(n.startswith("Bridge") for n in names), names
    assert any(n.startswith("JetStream") for n in names), names
    assert len(clients) >= 4, names
    for name, variables in clients.items():
        url = _text(variables["NATS_URL"])
        assert "tls://" in url and "nats://" not in url, name
        if "NATS_SECRET_ARN" not in variables:
            # /health's probe (the primary's mobile function) holds no credentials and sends
            # nothing: it reads the INFO greeting, which NATS sends before the TLS handshake.
            assert name.split("/")[1].startswith("Mobile"), name
            assert "NATS_TLS_CA_BASE64" not in variables, name
            continue
        assert variables["NATS_TLS_HOSTNAME"] == NATS_TLS_HOSTNAME, name
        # The Events stack's value of that object, across the stack boundary (weakly).
        assert _resolved(templates, variables["NATS_TLS_CA_BASE64"]) == {
            "Fn::GetAtt": [authority_id, "Value"]
        }, name


def _resolved(templates, value: Any) -> Any:
    """A weak cross-stack reference (Fn::GetStackOutput) as the producer's output value."""
    if not isinstance(value, dict) or "Fn::GetStackOutput" not in value:
        return value
    reference = value["Fn::GetStackOutput"]
    outputs = templates[reference["StackName"]].to_json()["Outputs"]
    return outputs[reference["OutputName"]]["Value"]

"""Every workload the app deploys can open the connections it needs: to the interface endpoints
of the AWS services it calls, to the database, to NATS; the security groups on both sides admit
it on the right port. The workloads come from the synthesized templates (connectivity.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from covenant.regions import load_regions

from .connectivity import Model, Need

REGIONS = load_regions()
PRIMARY = next(r for r in REGIONS if r.primary)


@pytest.fixture(scope="session")
def model(stacks) -> Model:
    return _model(stacks)


def _model(stacks: dict[str, Any], edit: Any = None) -> Model:
    templates = {name: copy.deepcopy(stack.template) for name, stack in stacks.items()}
    if edit is not None:
        edit(templates)
    return Model(templates, {name: s.environment.region for name, s in stacks.items()})


def _refused(model: Model) -> list[Need]:
    return [need for need in model.needs() if not model.admitted(need)]


def test_every_workload_reaches_what_it_calls_on_the_right_port(model: Model) -> None:
    refused = _refused(model)
    assert refused == [], "\n".join(
        f"{n.workload} -> {n.target} :{n.port} refused" for n in refused
    )


def test_the_derived_workloads_cover_every_kind_the_app_deploys(model: Model) -> None:
    # A floor, not the list: the derivation must find at least these.
    names = " ".join(w.name for w in model.workloads())
    for handler in ("graphql_api.handler.handler", "mobile.handler.handler"):
        assert names.count(f"({handler})") == len(REGIONS), handler
    for what in (
        "(bridge.handler.handler)",
        "(jetstream.handler.handler)",
        "(migrator.handler.handler)",
        "(hosted rotation)",
        "(pods of external-secrets/external-secrets)",
        "(framework.onEvent)",  # the kubectl provider's, in the VPC
        "(index.handler)",  # the kubectl handler
    ):
        assert what in names, what
    targets = {(n.workload.split(" ")[-1], n.target.split(" ")[0], n.port) for n in model.needs()}
    assert ("(bridge.handler.handler)", "NATS", 4222) in targets
    assert ("(jetstream.handler.handler)", "NATS", 4222) in targets
    assert ("(mobile.handler.handler)", "NATS", 4222) in targets  # the primary's /health
    assert ("(migrator.handler.handler)", "database", 5432) in targets
    assert ("rotation)", "database", 5432) in targets
    assert ("external-secrets/external-secrets)", "secretsmanager", 443) in targets
    assert ("(mobile.handler.handler)", "cognito-idp", 443) in targets
    assert ("(graphql_api.handler.handler)", "sqs", 443) in targets
    # A secondary's functions reach the primary's Lambda, SQS and Cognito through NAT.
    assert ("(graphql_api.handler.handler)", "lambda", 443) in targets


def test_the_secrets_endpoint_admits_the_eks_nodes_where_external_secrets_runs(stacks) -> None:
    """Finding 1 of issue 14: without this rule the nats-auth secret is never written."""

    def drop_rule(templates: dict[str, Any]) -> None:
        for template in templates.values():
            resources = template["Resources"]
            for logical in [
                k
                for k, r in resources.items()
                if r["Type"] == "AWS::EC2::SecurityGroupIngress"
                and "ClusterSecurityGroupId" in str(r["Properties"].get("SourceSecurityGroupId"))
            ]:
                del resources[logical]

    refused = _refused(_model(stacks, drop_rule))
    assert [(n.target, n.port) for n in refused if "external-secrets" in n.workload] == [
        ("secretsmanager endpoint", 443)
    ]

"""A model of who may talk to whom, read from the synthesized templates alone.

Workloads are derived from the templates, not listed by hand:

- every Lambda function in a VPC (ours, the custom-resource providers', kubectl's), with the
  AWS services its role may call, the database when its role may `rds-db:connect` or read the
  cluster's attached secret, and NATS when its environment has a `NATS_URL`;
- every hosted rotation function of a secret (Secrets Manager's own, in our security group):
  it calls Secrets Manager and connects to the database whose secret it rotates;
- every EKS pod identity (namespace/service account -> role): pods run on EKS Auto Mode nodes,
  which carry the cluster security group that EKS creates (self: all traffic; egress: all);
- the NATS servers, reached through the internal NLB whose security group the Helm values name.

A connection is admitted when one of the caller's groups lets it out (to the target's group,
or to a CIDR holding it) and one of the target's groups lets it in (from the caller's group,
or from a CIDR holding it), on the port.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

HTTPS = 443
# Calls the Lambda service makes for a function (ENIs, logs, traces), never from its ENI.
NOT_FROM_THE_FUNCTION = {"ec2", "logs", "xray", "rds-db", "kms"}
EKS_CLUSTER_GROUP = "ClusterSecurityGroupId"

GroupKey = tuple[str, str]  # (stack, logical id) of a group; ("eks", stack/cluster) for EKS's


@dataclass(frozen=True)
class Rule:
    protocol: str
    from_port: int
    to_port: int
    peer_group: GroupKey | None = None
    cidr: str | None = None  # a literal, or "VPC" for the VPC's own CIDR block

    def admits(self, port: int) -> bool:
        return self.protocol == "-1" or (
            self.protocol == "tcp" and self.from_port <= port <= self.to_port
        )


@dataclass
class Group:
    key: GroupKey
    vpc: str  # stack/logical id of the VPC
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class Need:
    """A connection a workload must be able to open."""

    workload: str
    groups: tuple[GroupKey, ...]
    target: str
    target_groups: tuple[GroupKey, ...]
    port: int


@dataclass(frozen=True)
class Workload:
    name: str
    stack: str
    groups: tuple[GroupKey, ...]
    services: frozenset[str]  # AWS service prefixes it calls (same region)
    database: tuple[str, str] | None = None  # (stack, cluster logical id)
    nats: bool = False


class Model:
    def __init__(self, templates: dict[str, dict[str, Any]], regions: dict[str, str]) -> None:
        self.templates = templates
        self.regions = regions  # stack -> AWS region
        self.groups: dict[GroupKey, Group] = {}
        self.vpc_cidrs: dict[str, str] = {}
        self._read_groups()

    # -- references -----------------------------------------------------------------------------

    def resources(self, stack: str) -> dict[str, Any]:
        found: dict[str, Any] = self.templates[stack]["Resources"]
        return found

    def resolve(self, stack: str, value: Any) -> tuple[str, Any]:
        """Follows Fn::GetStackOutput to the producing stack's output value."""
        while isinstance(value, dict) and "Fn::GetStackOutput" in value:
            ref = value["Fn::GetStackOutput"]
            stack = ref["StackName"]
            value = self.templates[stack]["Outputs"][ref["OutputName"]]["Value"]
        return stack, value

    def group_key(self, stack: str, value: Any) -> GroupKey | None:
        stack, value = self.resolve(stack, value)
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            if attribute == "GroupId":
                return (stack, logical)
            if attribute == EKS_CLUSTER_GROUP:
                return ("eks", f"{stack}/{logical}")
        if isinstance(value, dict) and "Ref" in value:
            resource = self.resources(stack).get(value["Ref"], {})
            if resource.get("Type") == "AWS::EC2::SecurityGroup":
                return (stack, value["Ref"])
        return None

    def group_keys(self, stack: str, values: Any) -> tuple[GroupKey, ...]:
        stack_of_list, values = self.resolve(stack, values)
        values = values if isinstance(values, list) else [values]
        keys = [self.group_key(stack_of_list, v) for v in values]
        assert all(keys), f"unresolved security group in {stack}: {values}"
        return tuple(k for k in keys if k is not None)

    def _vpc(self, stack: str, value: Any) -> str:
        stack, value = self.resolve(stack, value)
        return f"{stack}/{value['Ref']}"

    def _cidr(self, stack: str, value: Any) -> str:
        stack, value = self.resolve(stack, value)
        if isinstance(value, str):
            return value
        if "Fn::GetAtt" in value and value["Fn::GetAtt"][1] == "CidrBlock":
            return "VPC"
        raise AssertionError(f"unreadable CIDR {value}")

    # -- security groups ------------------------------------------------------------------------

    def _rule(self, stack: str, raw: dict[str, Any], peer_key: str) -> Rule:
        peer = raw.get(peer_key)
        cidr = raw.get("CidrIp")
        return Rule(
            protocol=str(raw["IpProtocol"]),
            from_port=int(raw.get("FromPort", 0)),
            to_port=int(raw.get("ToPort", 65535)),
            peer_group=self.group_key(stack, peer) if peer is not None else None,
            cidr=self._cidr(stack, cidr) if cidr is not None else None,
        )

    def _read_groups(self) -> None:
        for stack in self.templates:
            for logical, resource in self.resources(stack).items():
                props = resource.get("Properties", {})
                if resource["Type"] == "AWS::EC2::VPC":
                    self.vpc_cidrs[f"{stack}/{logical}"] = props["CidrBlock"]
                if resource["Type"] == "AWS::EC2::SecurityGroup":
                    group = Group((stack, logical), self._vpc(stack, props["VpcId"]))
                    for raw in props.get("SecurityGroupIngress", []):
                        group.ingress.append(self._rule(stack, raw, "SourceSecurityGroupId"))
                    for raw in props.get("SecurityGroupEgress", []):
                        group.egress.append(self._rule(stack, raw, "DestinationSecurityGroupId"))
                    self.groups[group.key] = group
                if resource["Type"] == "AWS::EKS::Cluster":
                    # EKS creates the cluster security group: all traffic from itself, all out.
                    control = props["ResourcesVpcConfig"]["SecurityGroupIds"][0]
                    key: GroupKey = ("eks", f"{stack}/{logical}")
                    vpc = ""
                    self._eks_pending = getattr(self, "_eks_pending", [])
                    self._eks_pending.append((key, stack, control))
                    self.groups[key] = Group(
                        key,
                        vpc,
                        ingress=[Rule("-1", 0, 65535, peer_group=key)],
                        egress=[Rule("-1", 0, 65535, cidr="0.0.0.0/0")],
                    )
        for key, stack, control in getattr(self, "_eks_pending", []):
            control_key = self.group_key(stack, control)
            assert control_key is not None
            self.groups[key].vpc = self.groups[control_key].vpc
        for stack in self.templates:
            for resource in self.resources(stack).values():
                props = resource.get("Properties", {})
                if resource["Type"] == "AWS::EC2::SecurityGroupIngress":
                    target = self.group_key(stack, props["GroupId"])
                    assert target is not None, props
                    self.groups[target].ingress.append(
                        self._rule(stack, props, "SourceSecurityGroupId")
                    )
                if resource["Type"] == "AWS::EC2::SecurityGroupEgress":
                    target = self.group_key(stack, props["GroupId"])
                    assert target is not None, props
                    self.groups[target].egress.append(
                        self._rule(stack, props, "DestinationSecurityGroupId")
                    )

    # -- workloads ------------------------------------------------------------------------------

    def _statements(self, stack: str, role: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        role_resource = self.resources(stack)[role]
        for policy in role_resource["Properties"].get("Policies", []):
            found += policy["PolicyDocument"]["Statement"]
        for resource in self.resources(stack).values():
            if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource[
                "Properties"
            ].get("Roles", []):
                found += resource["Properties"]["PolicyDocument"]["Statement"]
        return found

    def _role_calls(self, stack: str, role: str) -> tuple[frozenset[str], list[dict[str, Any]]]:
        statements = self._statements(stack, role)
        services = set()
        for statement in statements:
            actions = statement["Action"]
            for action in actions if isinstance(actions, list) else [actions]:
                services.add(action.split(":", 1)[0])
        return frozenset(services - NOT_FROM_THE_FUNCTION), statements

    def _cluster_secrets(self, stack: str) -> dict[str, str]:
        """JSON of every way a template names a cluster's attached secret -> the cluster."""
        found = {}
        for logical, resource in self.resources(stack).items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::SecretsManager::SecretTargetAttachment":
                cluster = props["TargetId"]["Ref"]
                found[json.dumps({"Ref": logical})] = cluster
                found[json.dumps(props["SecretId"])] = cluster
        return found

    def _database_of(self, stack: str, statements: list[dict[str, Any]]) -> tuple[str, str] | None:
        """The cluster a role may connect to: rds-db:connect on its resource id, or reading
        the secret attached to it."""
        text = json.dumps(statements)
        for db_stack in self.templates:
            for logical, resource in self.resources(db_stack).items():
                if resource["Type"] != "AWS::RDS::DBCluster":
                    continue
                if "rds-db:connect" in text and self._mentions(stack, text, db_stack, logical):
                    return (db_stack, logical)
        for statement in statements:
            actions = json.dumps(statement["Action"])
            if "secretsmanager:GetSecretValue" not in actions:
                continue
            for secret, cluster in self._cluster_secrets(stack).items():
                if secret in json.dumps(statement["Resource"]):
                    return (stack, cluster)
        return None

    def _mentions(self, stack: str, text: str, db_stack: str, cluster: str) -> bool:
        """Whether a policy names this cluster's resource id (directly or through outputs)."""
        if stack == db_stack:
            return f'["{cluster}", "DBClusterResourceId"]' in text
        outputs = self.templates[db_stack].get("Outputs", {})
        return any(
            f'"OutputName": "{name}"' in text and f'"StackName": "{db_stack}"' in text
            for name, output in outputs.items()
            if output["Value"] == {"Fn::GetAtt": [cluster, "DBClusterResourceId"]}
        )

    def workloads(self) -> list[Workload]:
        found: list[Workload] = []
        for stack in self.templates:
            resources = self.resources(stack)
            for logical, resource in resources.items():
                props = resource.get("Properties", {})
                if resource["Type"] == "AWS::Lambda::Function" and "VpcConfig" in props:
                    role = props["Role"]["Fn::GetAtt"][0]
                    services, statements = self._role_calls(stack, role)
                    variables = props.get("Environment", {}).get("Variables", {})
                    found.append(
                        Workload(
                            name=f"{stack}/{logical} ({props.get('Handler')})",
                            stack=stack,
                            groups=self.group_keys(stack, props["VpcConfig"]["SecurityGroupIds"]),
                            services=services,
                            database=self._database_of(stack, statements),
                            nats="NATS_URL" in variables,
                        )
                    )
                if resource["Type"] == "AWS::SecretsManager::RotationSchedule" and (
                    "HostedRotationLambda" in props
                ):
                    hosted = props["HostedRotationLambda"]
                    cluster = self._cluster_secrets(stack).get(json.dumps(props["SecretId"]))
                    database = (stack, cluster) if cluster else None
                    found.append(
                        Workload(
                            name=f"{stack}/{logical} (hosted rotation)",
                            stack=stack,
                            groups=self.group_keys(stack, hosted["VpcSecurityGroupIds"]),
                            services=frozenset({"secretsmanager"}),
                            database=database,
                        )
                    )
                if resource["Type"] == "AWS::EKS::PodIdentityAssociation":
                    role = props["RoleArn"]["Fn::GetAtt"][0]
                    services, statements = self._role_calls(stack, role)
                    cluster = props["ClusterName"]["Ref"]
                    found.append(
                        Workload(
                            name=(
                                f"{stack}/{logical} (pods of {props['Namespace']}/"
                                f"{props['ServiceAccount']})"
                            ),
                            stack=stack,
                            groups=(("eks", f"{stack}/{cluster}"),),
                            services=services,
                            database=self._database_of(stack, statements),
                        )
                    )
        return found

    # -- what must be admitted ------------------------------------------------------------------

    def endpoints(self, vpc: str) -> dict[str, tuple[GroupKey, ...]]:
        """Service prefix -> groups of the interface endpoints with private DNS in a VPC."""
        stack = vpc.split("/", 1)[0]
        found: dict[str, tuple[GroupKey, ...]] = {}
        for resource in self.resources(stack).values():
            props = resource.get("Properties", {})
            if (
                resource["Type"] == "AWS::EC2::VPCEndpoint"
                and props.get("PrivateDnsEnabled")
                and self._vpc(stack, props["VpcId"]) == vpc
            ):
                service = str(props["ServiceName"]).rsplit(".", 1)[-1]
                found[service] = self.group_keys(stack, props["SecurityGroupIds"])
        return found

    def nats_groups(self) -> list[tuple[GroupKey, ...]]:
        """The groups of the NLB in front of NATS, as the chart's service annotation names
        them, where the load balancer controller also manages the pods' rules."""
        found = []
        for stack in self.templates:
            for resource in self.resources(stack).values():
                if resource["Type"] != "Custom::AWSCDK-EKS-HelmChart":
                    continue
                if resource["Properties"].get("Chart") != "nats":
                    continue
                values = resource["Properties"]["Values"]
                parts = values["Fn::Join"][1] if isinstance(values, dict) else [values]
                annotation = "service.beta.kubernetes.io/aws-load-balancer-security-groups"
                for index, part in enumerate(parts):
                    if isinstance(part, str) and part.endswith(f'"{annotation}":"'):
                        found.append((self.group_key(stack, parts[index + 1]),))
                text = "".join(p for p in parts if isinstance(p, str))
                assert re.search(
                    r'"service.beta.kubernetes.io/aws-load-balancer-manage-backend-security-'
                    r'group-rules":"true"',
                    text,
                ), "the controller must admit the NLB at the NATS pods"
        return [tuple(k for k in keys if k is not None) for keys in found]

    def needs(self) -> list[Need]:
        needs: list[Need] = []
        nats = self.nats_groups()
        for workload in self.workloads():
            vpc = self.groups[workload.groups[0]].vpc
            endpoints = self.endpoints(vpc)
            for service in sorted(workload.services):
                if service in endpoints:
                    target = f"{service} endpoint"
                    needs.append(
                        Need(workload.name, workload.groups, target, endpoints[service], HTTPS)
                    )
                else:  # the service's public endpoint, through the NAT gateways
                    needs.append(
                        Need(workload.name, workload.groups, f"{service} (NAT)", (), HTTPS)
                    )
            if workload.database is not None:
                db_stack, cluster = workload.database
                props = self.resources(db_stack)[cluster]["Properties"]
                needs.append(
                    Need(
                        workload.name,
                        workload.groups,
                        f"database {db_stack}/{cluster}",
                        self.group_keys(db_stack, props["VpcSecurityGroupIds"]),
                        int(props["Port"]),
                    )
                )
            if workload.nats:
                for groups in nats:
                    needs.append(Need(workload.name, workload.groups, "NATS", groups, 4222))
        return needs

    def _covers(self, rule: Rule, peer: GroupKey, vpc: str) -> bool:
        if rule.peer_group is not None:
            return rule.peer_group == peer
        if rule.cidr in ("0.0.0.0/0", "VPC"):
            return True
        return rule.cidr == self.vpc_cidrs.get(vpc)

    def admitted(self, need: Need) -> bool:
        if not need.target_groups:  # out to the Internet: only the caller's egress matters
            return any(
                r.admits(need.port) and r.cidr == "0.0.0.0/0"
                for source in need.groups
                for r in self.groups[source].egress
            )
        for source in need.groups:
            for target in need.target_groups:
                vpc = self.groups[target].vpc
                out = any(
                    r.admits(need.port) and self._covers(r, target, vpc)
                    for r in self.groups[source].egress
                )
                into = any(
                    r.admits(need.port) and self._covers(r, source, vpc)
                    for r in self.groups[target].ingress
                )
                if out and into:
                    return True
        return False

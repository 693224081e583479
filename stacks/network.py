"""One region's network: the VPC, its endpoints, and every security group of the region.

All security groups and their rules live here, so one file says who may talk to whom:

    API functions ──5432──► database          bridge ──5432──► database
    migrator      ──5432──► database          bridge ──4222──► NATS load balancer
    rotation      ──5432──► database          jetstream ──4222──► NATS load balancer
    bridge, jetstream, migrator, rotation, API functions ──443──► interface endpoints
    consumers ──5432──► database; consumers ──4222──► NATS load balancer
    API functions ──4222──► NATS load balancer (primary: the mobile /health reads NATS's
    greeting; they hold no NATS credentials, so the server answers nothing else)
    consumers ──443──► AWS APIs (DynamoDB, SNS)

Interface endpoints (primary region only, where the services the functions call live):
Secrets Manager (bridge, JetStream probe, migrator, rotation, and External Secrets Operator on the
EKS nodes: the events stack adds that rule, naming the cluster security group EKS creates),
SQS (GraphQL and mobile wake-ups)
and Cognito user pools (the mobile function's sign-in and admin calls, GraphQL's setUserRole and
its token key set; the pool has no domain, which PrivateLink requires). Lambda itself carries
logs, EMF metrics and X-Ray segments, and IAM database tokens are signed locally: no endpoint.
API functions also reach 443 anywhere (through the NAT gateways): in the secondary regions,
Cognito and the wake-up queue live in another region, and a VPC endpoint serves only its own
region. Nothing else leaves.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, RemovalPolicy, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from covenant.regions import Region
from stacks.functions import log_retention
from stacks.settings import AppSettings, RegionNetwork

POSTGRES_PORT = 5432
NATS_PORT = 4222
HTTPS_PORT = 443


class SecurityGroups(Construct):
    """The region's security groups; primary-only ones are None elsewhere."""

    def __init__(
        self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, primary: bool
    ) -> None:
        super().__init__(scope, construct_id)

        def group(name: str, description: str) -> ec2.SecurityGroup:
            return ec2.SecurityGroup(
                self, name, vpc=vpc, description=description, allow_all_outbound=False
            )

        self.database = group("Database", "Aurora PostgreSQL: 5432 from the functions only")
        self.api_functions = group("ApiFunctions", "GraphQL and mobile Lambdas")
        self._to_database(self.api_functions, "API functions")
        self.api_functions.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(HTTPS_PORT),
            "AWS APIs of the primary region (Cognito, SQS) and Cognito's JWKS, through NAT",
        )
        self.bridge: ec2.SecurityGroup | None = None
        self.jetstream: ec2.SecurityGroup | None = None
        self.migrator: ec2.SecurityGroup | None = None
        self.rotation: ec2.SecurityGroup | None = None
        self.consumers: ec2.SecurityGroup | None = None
        self.nats_load_balancer: ec2.SecurityGroup | None = None
        self.endpoints: ec2.SecurityGroup | None = None
        if not primary:
            return

        self.endpoints = group("Endpoints", "Interface VPC endpoints: 443 from the functions")
        self.nats_load_balancer = group("NatsLoadBalancer", "Internal NLB in front of NATS")
        self.nats_load_balancer.add_egress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(NATS_PORT), "NATS pods (IP targets)"
        )
        self.bridge = group("Bridge", "Outbox bridge Lambda")
        self.jetstream = group("JetStream", "JetStream topology and health probe Lambda")
        self.migrator = group("Migrator", "Migration custom resource Lambda")
        self.rotation = group("Rotation", "Secrets Manager rotation Lambda of the master user")
        self.consumers = group("Consumers", "JetStream consumer Lambdas (audit logger, ...)")
        # DynamoDB (its gateway endpoint, whose prefix list is unknown offline) and SNS.
        self.consumers.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(HTTPS_PORT), "DynamoDB and SNS APIs"
        )
        self._to_database(self.bridge, "bridge")
        self._to_database(self.migrator, "migrator")
        self._to_database(self.consumers, "consumers (analytics)")
        self._to_database(self.rotation, "secret rotation")
        for client, label in (
            (self.bridge, "bridge"),
            (self.jetstream, "JetStream probe"),
            (self.consumers, "consumers"),
            (self.api_functions, "API functions (health probe, no credentials)"),
        ):
            client.add_egress_rule(self.nats_load_balancer, ec2.Port.tcp(NATS_PORT), "NATS")
            self.nats_load_balancer.add_ingress_rule(
                client, ec2.Port.tcp(NATS_PORT), f"NATS clients: {label}"
            )
        for client, label in (
            (self.api_functions, "API functions"),
            (self.bridge, "bridge"),
            (self.jetstream, "JetStream probe"),
            (self.migrator, "migrator"),
            (self.rotation, "secret rotation"),
            (self.consumers, "consumers"),
        ):
            if client is not self.api_functions:
                client.add_egress_rule(self.endpoints, ec2.Port.tcp(HTTPS_PORT), "VPC endpoints")
            self.endpoints.add_ingress_rule(client, ec2.Port.tcp(HTTPS_PORT), label)

    def _to_database(self, client: ec2.SecurityGroup, label: str) -> None:
        client.add_egress_rule(self.database, ec2.Port.tcp(POSTGRES_PORT), "Aurora PostgreSQL")
        self.database.add_ingress_rule(client, ec2.Port.tcp(POSTGRES_PORT), label)


def data_key(scope: Construct, region: Region) -> kms.Key:
    """The region's customer key for data at rest: Aurora storage and Performance Insights,
    the master secret, and every log group of the region (CloudWatch Logs may use it for log
    groups of this account and region only). It lives in the network stack, the first of the
    region, so every later stack (and the flow logs here) can use it."""
    key = kms.Key(
        scope,
        "DataKey",
        alias=f"alias/covenant/{region.code}/data",
        description=f"Covenant data at rest in {region.code}: Aurora storage, secrets, logs",
        enable_key_rotation=True,
        removal_policy=RemovalPolicy.RETAIN,
    )
    stack = Stack.of(scope)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=[
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
                "kms:GenerateDataKey",
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:DescribeKey",
            ],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )
    return key


class RegionalNetwork(Construct):
    """VPC with public (NAT only), private (functions, EKS) and isolated (database) subnets
    in two or more AZs, flow logs of rejected traffic, and the endpoints the functions use."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        network: RegionNetwork,
        nat_gateways: int,
        region: Region,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        primary = region.primary
        self.data_key = data_key(self, region)
        azs = list(network.availability_zones) or None
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(network.vpc_cidr),
            availability_zones=azs,
            max_azs=None if azs else 2,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
                ec2.SubnetConfiguration(
                    name="Database", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
            restrict_default_security_group=False,
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=log_retention,
            encryption_key=self.data_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "RejectedTraffic",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        # The audit trail's table (and any regional DynamoDB call) without the NAT gateways.
        self.vpc.add_gateway_endpoint("DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        self.security_groups = SecurityGroups(self, "SecurityGroups", vpc=self.vpc, primary=primary)
        if primary:
            # The load balancer controller of EKS Auto Mode places internal NLBs in these.
            for subnet in self.vpc.private_subnets:
                Tags.of(subnet).add("kubernetes.io/role/internal-elb", "1")
            assert self.security_groups.endpoints is not None
            for name, service in (
                ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
                ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
                ("Cognito", ec2.InterfaceVpcEndpointAwsService.COGNITO_IDP),
                # The database CA certificates (sslrootcert=ssm:...) for the bridge and the
                # migrator, which have no route to 443 beyond the endpoints.
                ("Ssm", ec2.InterfaceVpcEndpointAwsService.SSM),
            ):
                self.vpc.add_interface_endpoint(
                    name,
                    service=service,
                    private_dns_enabled=True,
                    open=False,
                    security_groups=[self.security_groups.endpoints],
                    subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                )

    @property
    def function_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    @property
    def database_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)


class NetworkStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.network = RegionalNetwork(
            self,
            "Network",
            network=settings.networks[region.code],
            nat_gateways=settings.nat_gateways,
            region=region,
            log_retention=log_retention(settings.log_retention_days),
        )

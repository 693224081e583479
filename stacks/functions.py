"""One Lambda function as every stack deploys it: its own role, log group and configuration.

Each function gets a role of its own that can write only its own log group; whatever else it
may do (connect to the database as its own user, read its own secret, send to its own queue)
is granted explicitly by the stack that wires it. No AWS managed policy is attached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Annotations, ArnFormat, Aws, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from covenant.regions import Region, regions_as_json
from graphql_api import schema_cache
from stacks.layers import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from stacks.nag import acknowledge, nag_partition
from stacks.settings import DATABASE_CA_PARAMETER_PATH, REPO_ROOT, AppSettings, DeploySettings

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}

# Lambda creates and deletes the ENIs of a VPC function with the function's role. The
# Describe calls have no resource-level permission and Create is granted on "*" as in AWS's
# AWSLambdaVPCAccessExecutionRole (it names subnets, groups and an ENI yet to exist); the calls
# on an existing ENI are held to this account's network interfaces in this region.
_VPC_ACTIONS_ANY_RESOURCE = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
]
_VPC_ACTIONS_ON_ENIS = [
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
]


LIVE_ALIAS = "live"


def log_retention(days: int) -> logs.RetentionDays:
    return _RETENTION.get(days, logs.RetentionDays.ONE_MONTH)


def function_name(region: Region, name: str) -> str:
    """The fixed name of a function of the function table in a region: other regions build its
    ARN from it (stacks of different regions cannot import each other's values)."""
    return f"covenant-{region.code}-{name}"


def primary_function_arn(settings: AppSettings, name: str) -> str:
    """The ARN a secondary invokes to hand a write to the primary's `name` function: its alias
    `live` when it has one (what the primary's API integration invokes, the deployed version),
    the function itself otherwise. Follows the `primary` flag of the region table."""
    primary = settings.primary
    arn = account_arn("lambda", primary.aws_region, f"function:{function_name(primary, name)}")
    return f"{arn}:{LIVE_ALIAS}" if settings.deploy_settings(name).live_alias else arn


def encrypt_log_groups(scope: Construct, key: kms.IKey) -> None:
    """Every log group under `scope` that aws-cdk-lib creates without a key (the kubectl
    provider's, @aws-cdk/aws-lambda:useCdkManagedLogGroup) gets the region's data key."""
    for child in scope.node.find_all():
        if isinstance(child, logs.CfnLogGroup) and child.kms_key_id is None:
            child.kms_key_id = key.key_arn


def base_environment(*, service: str, region: Region, settings: AppSettings) -> dict[str, str]:
    """What every Covenant function reads: its region, the region table, Powertools."""
    return {
        "COVENANT_REGION": region.code,
        "COVENANT_STAGE": settings.stage,
        "COVENANT_REGIONS": regions_as_json(settings.regions),
        "POWERTOOLS_SERVICE_NAME": service,
        "POWERTOOLS_METRICS_NAMESPACE": "Covenant",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        # Events and responses can carry tokens and personal data: never into logs or traces.
        "POWERTOOLS_LOGGER_LOG_EVENT": "false",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    }


class CovenantFunction(Construct):
    """A function of `functions/<package>/`, with the shared and dependency layers."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        package: str,
        handler: str,
        description: str,
        deploy: DeploySettings,
        settings: AppSettings,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        log_key: kms.IKey,
        region: Region | None = None,
        function_name: str | None = None,
        extra_packages: Sequence[str] = (),
    ) -> None:
        """`extra_packages`: other function packages the code imports (the realtime functions
        run the GraphQL contract's code). `region`: the region whose reserved concurrency
        applies (by its role, primary or secondary); without it, the primary's.
        `function_name`: a fixed name, for functions another region invokes."""
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(settings.log_retention_days),
            encryption_key=log_key,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Covenant {package} function",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(actions=_VPC_ACTIONS_ANY_RESOURCE, resources=["*"])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=_VPC_ACTIONS_ON_ENIS,
                resources=[
                    Stack.of(self).format_arn(
                        service="ec2", resource="network-interface", resource_name="*"
                    )
                ],
            )
        )
        if "graphql_api" in (package, *extra_packages):
            schema_cache.write()  # packaged with the code: init loads the SDL parsed
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            handler=handler,
            # The function's own package only; shared code and libraries come from the layers.
            code=lambda_.Code.from_asset(
                str(REPO_ROOT / "functions"),
                exclude=[
                    "*",
                    *(
                        f"!{p}{suffix}"
                        for p in (package, *extra_packages)
                        for suffix in ("", "/**")
                    ),
                    "**/__pycache__",
                ],
            ),
            layers=list(layers),
            memory_size=deploy.memory_mb,
            timeout=Duration.seconds(deploy.timeout_s),
            function_name=function_name,
            reserved_concurrent_executions=(
                deploy.reserved_for(region) if region is not None else deploy.reserved_concurrency
            ),
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            role=self.role,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            snap_start=(lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if deploy.snap_start else None),
            environment=dict(environment),
        )
        # SnapStart and provisioned concurrency apply to published versions: callers invoke
        # the alias, which always points at the version this deploy published.
        self.target: lambda_.IFunction = self.function
        if deploy.live_alias:
            self.target = lambda_.Alias(
                self,
                "Live",
                alias_name=LIVE_ALIAS,
                version=self.function.current_version,
                provisioned_concurrent_executions=deploy.provisioned_concurrency or None,
            )
            Annotations.of(self.function).acknowledge_warning(
                "@aws-cdk/aws-lambda:snapStartRequirePublish",
                "The alias 'live' publishes a version on every change; callers invoke it.",
            )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "Lambda manages the ENIs of a VPC function (ec2:DescribeNetworkInterfaces "
            "has no resource-level permission) and X-Ray's PutTraceSegments and "
            "PutTelemetryRecords accept only '*'. Everything else is scoped.",
            "Resource::*",
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            "Lambda deletes and re-addresses the ENIs it created for this function, whose ids "
            "are unknown until then: held to this account's network interfaces in this region.",
            f"Resource::arn:{nag_partition(self)}:ec2:{Stack.of(self).region}:<AWS::AccountId>:"
            "network-interface/*",
        )

    def grant_database_connect(self, *, cluster_resource_id: str, db_user: str) -> None:
        """IAM database authentication as `db_user` on this region's cluster, and reading the
        region's database CA certificates (sslrootcert=ssm:...), nothing more."""
        grant_database_ca_read(self.role)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["rds-db:connect"],
                resources=[
                    Stack.of(self).format_arn(
                        service="rds-db",
                        resource="dbuser",
                        resource_name=f"{cluster_resource_id}/{db_user}",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )


def grant_database_ca_read(role: iam.IRole) -> None:
    """ssm:GetParametersByPath on exactly the region's database CA path (verify-full)."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["ssm:GetParametersByPath"],
            resources=[
                Stack.of(role).format_arn(
                    service="ssm",
                    resource="parameter",
                    resource_name=DATABASE_CA_PARAMETER_PATH.lstrip("/"),
                )
            ],
        )
    )


def account_arn(service: str, region: str, resource: str) -> str:
    """An ARN in this account, for resources other stacks or regions own by a known name."""
    return f"arn:{Aws.PARTITION}:{service}:{region}:{Aws.ACCOUNT_ID}:{resource}"

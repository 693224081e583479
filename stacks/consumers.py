"""The JetStream consumers of the primary region, each a Lambda function on a one-minute
schedule that pull-fetches its durable consumer for almost the whole minute (docs/deploy.md,
"Stream consumers", says why Lambda and not a worker on the EKS cluster), and what they write:

    EventBridge (every minute) ──► audit_logger ──pull AUDIT/AUDIT_LOGGER──► NATS
                                        └──► DynamoDB covenant-audit (append-only, hash chain)
    EventBridge (every minute) ──► analytics ──pull COVENANT/ANALYTICS──► NATS
                                        └──► Aurora (writer): analytics_* tables (0011)

Reserved concurrency 1 per consumer: one invocation pulls at a time, so an audit batch is
appended in stream order. Every consumer reports `ConsumerLag` (its messages not yet
acknowledged); the monitoring stack alarms on it.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from covenant import audit_trail
from covenant.regions import Region
from stacks.database import database_user
from stacks.events import EventsStack
from stacks.functions import CovenantFunction, base_environment, encrypt_log_groups, function_name
from stacks.layers import SharedLayers
from stacks.network import RegionalNetwork
from stacks.settings import AppSettings

# function name (cdk.json covenant:functions) -> its stream and durable consumer
CONSUMER_FUNCTIONS: dict[str, tuple[str, str]] = {
    "audit_logger": ("AUDIT", "AUDIT_LOGGER"),
    "analytics": ("COVENANT", "ANALYTICS"),
}


def audit_table(scope: Construct) -> dynamodb.Table:
    """The audit trail (covenant.audit_trail): the same keys and indexes as its
    table_definition, point-in-time recovery, deletion protection, kept on stack deletion."""
    table = dynamodb.Table(
        scope,
        "AuditTrail",
        table_name=audit_trail.DEFAULT_TABLE,
        partition_key=dynamodb.Attribute(name="eventId", type=dynamodb.AttributeType.STRING),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        deletion_protection=True,
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        removal_policy=RemovalPolicy.RETAIN,
    )
    for key, index in audit_trail.INDEXES.items():
        table.add_global_secondary_index(
            index_name=index,
            partition_key=dynamodb.Attribute(name=key, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="at", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
    return table


class ConsumersStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        events_stack: EventsStack,
        writer_host: str,
        cluster_resource_id: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        groups = network.security_groups
        assert groups.consumers is not None
        layers = SharedLayers(self, "Layers", ca_bundle=settings.database.ca_bundle)
        self.audit_table = audit_table(self)
        self.functions: dict[str, CovenantFunction] = {}
        for name, (stream, durable) in CONSUMER_FUNCTIONS.items():
            spec = settings.functions[name]
            function = CovenantFunction(
                self,
                "".join(part.title() for part in name.split("_")),
                package=spec.handler.split(".", 1)[0],
                handler=spec.handler,
                description=spec.description,
                deploy=settings.deploy_settings(name),
                settings=settings,
                layers=layers.layers,
                environment={
                    **base_environment(service=name, region=region, settings=settings),
                    "NATS_URL": events_stack.nats.url,
                    "NATS_SECRET_ARN": events_stack.consumers_secret.secret_arn,
                    "CONSUMER_STREAM": stream,
                    "CONSUMER_DURABLE": durable,
                },
                vpc=network.vpc,
                subnets=network.function_subnets,
                security_group=groups.consumers,
                log_key=network.data_key,
                region=region,
                function_name=function_name(region, name),
            )
            grant_secret_read(
                function.role, events_stack.consumers_secret, events_stack.key, self.region
            )
            events.Rule(
                self,
                f"{function.node.id}Schedule",
                rule_name=f"covenant-consumer-{name.replace('_', '-')}",
                description=f"Runs the {durable} consumer: each run pulls for about a minute",
                schedule=events.Schedule.rate(Duration.minutes(1)),
                targets=[targets.LambdaFunction(function.target, retry_attempts=0)],
            )
            self.functions[name] = function
        self._audit_logger_access(self.functions["audit_logger"])
        self._analytics_access(
            self.functions["analytics"], settings, writer_host, cluster_resource_id
        )
        encrypt_log_groups(self, network.data_key)

    def _analytics_access(
        self,
        function: CovenantFunction,
        settings: AppSettings,
        writer_host: str,
        cluster_resource_id: str,
    ) -> None:
        """The writer, as its own IAM-authenticated login role (migration 0011's tables)."""
        url = (
            f"postgresql://{database_user('analytics')}@{writer_host}:5432/"
            f"{settings.database.database_name}?{settings.database.tls_query}&auth=iam"
        )
        function.function.add_environment("DATABASE_URL", url)
        function.function.add_environment("DATABASE_READER_URL", url)
        function.function.add_environment(
            "DB_STATEMENT_TIMEOUT_MS", str(settings.database.statement_timeout_ms)
        )
        function.grant_database_connect(
            cluster_resource_id=cluster_resource_id, db_user=database_user("analytics")
        )

    def _audit_logger_access(self, function: CovenantFunction) -> None:
        """Appends only: new records (PutItem, conditioned in code on the id being new), the
        chain head (UpdateItem on the key `#head` only), reads for the duplicate check. No
        DeleteItem, no UpdateItem of a record."""
        function.function.add_environment("AUDIT_TABLE_NAME", self.audit_table.table_name)
        function.function.add_environment("AUDIT_TABLE_REGION", self.region)
        arn = self.audit_table.table_arn
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"],
                resources=[arn],
            )
        )
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:UpdateItem"],
                resources=[arn],
                conditions={
                    "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [audit_trail.HEAD_ID]}
                },
            )
        )


def grant_secret_read(
    role: iam.IRole, secret: secretsmanager.ISecret, key: kms.IKey, region: str
) -> None:
    """The role's side only (the secret and its key live in the Events stack): see
    BridgeStack._grant_secret_read."""
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            resources=[secret.secret_arn],
        )
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["kms:Decrypt"],
            resources=[key.key_arn],
            conditions={
                "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
            },
        )
    )

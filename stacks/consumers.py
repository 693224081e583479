"""The JetStream consumers of the primary region, each a Lambda function on a one-minute
schedule that pull-fetches its durable consumer for almost the whole minute (docs/deploy.md,
"Stream consumers", says why Lambda and not a worker on the EKS cluster), and what they write:

    EventBridge (every minute) ──► audit_logger ──pull AUDIT/AUDIT_LOGGER──► NATS
                                        ├──► DynamoDB covenant-audit (append-only, hash chain)
                                        └──► S3 (Object Lock, compliance): the chain's anchors
    EventBridge (every minute) ──► analytics ──pull COVENANT/ANALYTICS──► NATS
                                        └──► Aurora (writer): analytics_* tables (0011)
    EventBridge (every minute) ──► mobile_push ──pull COVENANT/MOBILE_PUSH──► NATS
                                        ├──► Aurora (writer): who follows what (0012)
                                        └──► NATS: publish notifications.push (NOTIFICATIONS)
    EventBridge (every minute) ──► notifier ──pull NOTIFICATIONS/NOTIFIER──► NATS
                                        ├──► Aurora (writer): devices, deliveries (0012)
                                        └──► SNS mobile push (APNs / FCM endpoints)
    EventBridge (every minute) ──► alert_router ──pull ALERTS/ALERT_ROUTER──► NATS
                                        ├──► DynamoDB covenant-alerts (dedup window, TTL)
                                        └──► SNS covenant-alerts-{critical,warning,info}

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
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from covenant import alerts, audit_anchor, audit_trail
from covenant.regions import Region
from stacks.database import database_user
from stacks.events import EventsStack
from stacks.functions import CovenantFunction, base_environment, encrypt_log_groups, function_name
from stacks.layers import SharedLayers
from stacks.nag import acknowledge, acknowledge_push_endpoints, logical_id
from stacks.network import RegionalNetwork
from stacks.settings import AppSettings, push_endpoint_arns

# function name (cdk.json covenant:functions) -> its stream and durable consumer
CONSUMER_FUNCTIONS: dict[str, tuple[str, str]] = {
    "audit_logger": ("AUDIT", "AUDIT_LOGGER"),
    "analytics": ("COVENANT", "ANALYTICS"),
    "mobile_push": ("COVENANT", "MOBILE_PUSH"),
    "notifier": ("NOTIFICATIONS", "NOTIFIER"),
    "alert_router": ("ALERTS", "ALERT_ROUTER"),
}
# The consumers that read or write Aurora, each as its own IAM login role (stacks/database.py).
DATABASE_CONSUMERS = ("analytics", "mobile_push", "notifier")


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


def anchor_bucket(scope: Construct) -> s3.Bucket:
    """The audit chain's anchors (covenant.audit_anchor): Object Lock in compliance mode for
    as long as the AUDIT stream keeps events, so no one (the root user included) can delete or
    replace an anchor before then; versioned (Object Lock requires it), private, TLS only."""
    bucket = s3.Bucket(
        scope,
        "AuditAnchors",
        object_lock_enabled=True,
        object_lock_default_retention=s3.ObjectLockRetention.compliance(
            Duration.days(audit_anchor.RETENTION_DAYS)
        ),
        versioned=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        removal_policy=RemovalPolicy.RETAIN,
    )
    acknowledge(
        bucket,
        "AwsSolutions-S1",
        "One small object an hour, written by one role; CloudTrail records the API calls. "
        "Server access logs would need a log bucket of their own for nothing more.",
    )
    return bucket


def alerts_table(scope: Construct) -> dynamodb.Table:
    """The alert router's dedup claims (covenant.alerts): one item per dedup key, expired by
    DynamoDB's TTL a day after its window; nothing in it outlives the window's purpose."""
    table = dynamodb.Table(
        scope,
        "AlertClaims",
        table_name=alerts.DEFAULT_TABLE,
        partition_key=dynamodb.Attribute(name="dedupKey", type=dynamodb.AttributeType.STRING),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        time_to_live_attribute="expiresAt",
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        removal_policy=RemovalPolicy.DESTROY,
    )
    acknowledge(
        table,
        "AwsSolutions-DDB3",
        "Dedup claims that expire within a day: a restore would bring back nothing worth having "
        "(a lost table only lets one repeat of an alert through).",
    )
    return table


def alert_topics(
    scope: Construct, settings: AppSettings
) -> tuple[dict[alerts.Severity, sns.Topic], kms.Key]:
    """One topic per severity, encrypted with their own key; the alarm e-mail (if any) is
    subscribed to critical and warning (info is for dashboards and chat)."""
    key = kms.Key(
        scope,
        "AlertsKey",
        alias="alias/covenant/alerts",
        description="Covenant operational alerts (SNS topics of ALERT_ROUTER)",
        enable_key_rotation=True,
        removal_policy=RemovalPolicy.DESTROY,
    )
    topics: dict[alerts.Severity, sns.Topic] = {}
    for severity in alerts.SEVERITIES:
        topic = sns.Topic(
            scope,
            f"Alerts{severity.title()}",
            topic_name=f"covenant-alerts-{severity}",
            display_name=f"Covenant {severity} alerts",
            master_key=key,
            enforce_ssl=True,
        )
        if settings.alarm_email and severity != "info":
            topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        topics[severity] = topic
    return topics, key


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
        self.anchor_bucket = anchor_bucket(self)
        self.alerts_table = alerts_table(self)
        self.alert_topics, self.alerts_key = alert_topics(self, settings)
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
                    **events_stack.nats.tls_environment,
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
        for name in DATABASE_CONSUMERS:
            self._database_access(
                name, self.functions[name], settings, writer_host, cluster_resource_id
            )
        self._notifier_access(self.functions["notifier"], settings)
        self._alert_router_access(self.functions["alert_router"])
        encrypt_log_groups(self, network.data_key)

    def _notifier_access(self, function: CovenantFunction, settings: AppSettings) -> None:
        """Pushes to, and deletes disabled, endpoints of the configured platform applications
        only; no other SNS target, no topic."""
        if not settings.push_applications:
            return
        endpoints = push_endpoint_arns(settings)
        function.role.add_to_policy(
            iam.PolicyStatement(actions=["sns:Publish", "sns:DeleteEndpoint"], resources=endpoints)
        )
        acknowledge_push_endpoints(function, endpoints)

    def _alert_router_access(self, function: CovenantFunction) -> None:
        """Claims in its table (no Delete, no Scan), publishes to the three alert topics."""
        for severity, topic in self.alert_topics.items():
            function.function.add_environment(alerts.TOPIC_ENV[severity], topic.topic_arn)
        function.function.add_environment("ALERTS_TABLE_NAME", self.alerts_table.table_name)
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                resources=[self.alerts_table.table_arn],
            )
        )
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["sns:Publish"],
                resources=[t.topic_arn for t in self.alert_topics.values()],
            )
        )
        # SNS encrypts what the router publishes with the topics' key, as the router.
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[self.alerts_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"sns.{self.region}.amazonaws.com"}},
            )
        )

    def _database_access(
        self,
        name: str,
        function: CovenantFunction,
        settings: AppSettings,
        writer_host: str,
        cluster_resource_id: str,
    ) -> None:
        """The writer, as the consumer's own IAM-authenticated login role."""
        url = (
            f"postgresql://{database_user(name)}@{writer_host}:5432/"
            f"{settings.database.database_name}?{settings.database.tls_query}&auth=iam"
        )
        function.function.add_environment("DATABASE_URL", url)
        function.function.add_environment("DATABASE_READER_URL", url)
        function.function.add_environment(
            "DB_STATEMENT_TIMEOUT_MS", str(settings.database.statement_timeout_ms)
        )
        function.grant_database_connect(
            cluster_resource_id=cluster_resource_id, db_user=database_user(name)
        )

    def _audit_logger_access(self, function: CovenantFunction) -> None:
        """Appends only: new records (PutItem, conditioned in code on the id being new), the
        chain head (UpdateItem on the key `#head` only), reads for the duplicate check. No
        DeleteItem, no UpdateItem of a record."""
        function.function.add_environment("AUDIT_TABLE_NAME", self.audit_table.table_name)
        function.function.add_environment("AUDIT_TABLE_REGION", self.region)
        function.function.add_environment(audit_anchor.BUCKET_ENV, self.anchor_bucket.bucket_name)
        # Anchors: new objects (locked by the bucket's default retention), reads, the listing
        # of the prefix; no delete, no retention change, no bypass of governance.
        anchors = self.anchor_bucket.arn_for_objects(f"{audit_anchor.PREFIX}*")
        function.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:PutObject", "s3:GetObject"], resources=[anchors])
        )
        bucket = self.anchor_bucket.node.default_child
        assert isinstance(bucket, s3.CfnBucket)
        acknowledge(
            function,
            "AwsSolutions-IAM5",
            "Anchors are named by the hour they are written in: the objects under anchors/.",
            f"Resource::<{logical_id(bucket)}.Arn>/{audit_anchor.PREFIX}*",
        )
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.anchor_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{audit_anchor.PREFIX}*"]}},
            )
        )
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

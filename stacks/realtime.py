"""GraphQL subscriptions in AWS (docs/realtime.md, docs/deploy.md "Real-time fan-out"):

    per region (RegionalApiStack):  RealtimeApi
        API Gateway WebSocket API covenant-<code>-realtime, stage <code>
            $connect / $default / $disconnect ──► realtime Lambda
        DynamoDB covenant-realtime (connections, subscriptions, cursors; TTL)

    in the primary region:  Covenant-iad-Realtime (FanOutStack)
        EventBridge, one rule per served region, every minute ──► fanout Lambda
            pull COVENANT/REALTIME_<REGION> (NATS, the consumers' user)
            read that region's covenant-realtime ──► POST that region's @connections

Least privilege: the realtime function may manage the connections of its own API's stage
only; the fan-out those of the six stages, and the six tables' items (no table changes).
"""

from __future__ import annotations

import json
from typing import Any

import jsii
from aws_cdk import CfnElement, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw_v1
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from covenant.regions import Region
from realtime import store
from stacks.consumers import grant_secret_read
from stacks.database import database_user
from stacks.events import EventsStack
from stacks.functions import (
    CovenantFunction,
    account_arn,
    base_environment,
    encrypt_log_groups,
    function_name,
    log_retention,
)
from stacks.layers import SharedLayers
from stacks.nag import acknowledge, logical_id, nag_partition
from stacks.network import RegionalNetwork
from stacks.settings import AppSettings

# What a function does with a connection store: items only, never the table itself.
STORE_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:BatchWriteItem",
]


def connection_table(scope: Construct) -> dynamodb.Table:
    """The region's store: the keys, index and TTL of realtime.store.table_definition."""
    table = dynamodb.Table(
        scope,
        "Connections",
        table_name=store.DEFAULT_TABLE,
        partition_key=dynamodb.Attribute(name="connectionId", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="item", type=dynamodb.AttributeType.STRING),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        time_to_live_attribute="expiresAt",
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        # Connection state only: a new deployment starts with no connections anyway.
        removal_policy=RemovalPolicy.DESTROY,
    )
    table.add_global_secondary_index(
        index_name=store.INDEX,
        partition_key=dynamodb.Attribute(name="shard", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="member", type=dynamodb.AttributeType.STRING),
        projection_type=dynamodb.ProjectionType.ALL,
    )
    return table


@jsii.implements(apigw.IAccessLogSettings)
class WebSocketAccessLogs:
    """One JSON line per connect, message and disconnect (WebSocket context variables)."""

    def __init__(self, group: logs.ILogGroup) -> None:
        self._destination = apigw.LogGroupLogDestination(group)

    @property
    def destination(self) -> apigw.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw_v1.AccessLogFormat:
        return apigw_v1.AccessLogFormat.custom(
            json.dumps(
                {
                    "requestId": "$context.requestId",
                    "ip": "$context.identity.sourceIp",
                    "requestTime": "$context.requestTime",
                    "routeKey": "$context.routeKey",
                    "eventType": "$context.eventType",
                    "connectionId": "$context.connectionId",
                    "status": "$context.status",
                    "integrationLatency": "$context.integrationLatency",
                    "integrationError": "$context.integrationErrorMessage",
                    "disconnectStatusCode": "$context.disconnectStatusCode",
                },
                separators=(",", ":"),
            )
        )


def grant_manage_connections(
    scope: Construct, role: iam.IRole, apis: dict[Region, apigw.WebSocketApi | None]
) -> None:
    """POST (send) and DELETE (close) on the `@connections` of each region's stage (named as
    the region), nothing else. `None` for an API of another region: any API id of this
    account in that region, with that stage (an id read across regions would have to be
    resolved at deploy time, and cdk-nag could not be told which wildcard it accepts)."""
    stack = Stack.of(scope)
    partition = nag_partition(scope)
    resources: list[str] = []
    findings: list[str] = []
    for region, api in apis.items():
        for method in ("POST", "DELETE"):
            path = f"{region.code}/{method}/@connections/*"
            prefix = f"arn:{stack.partition}:execute-api:{region.aws_region}:{stack.account}"
            named = f"arn:{partition}:execute-api:{region.aws_region}:<AWS::AccountId>"
            if api is None:
                resources.append(f"{prefix}:*/{path}")
                findings.append(f"Resource::{named}:*/{path}")
            else:
                cfn = api.node.default_child
                assert isinstance(cfn, CfnElement)
                resources.append(f"{prefix}:{api.api_id}/{path}")
                findings.append(f"Resource::{named}:<{logical_id(cfn)}>/{path}")
    policy = iam.Policy(
        scope,
        "ManageConnections",
        statements=[
            iam.PolicyStatement(actions=["execute-api:ManageConnections"], resources=resources)
        ],
    )
    policy.attach_to_role(role)
    acknowledge(
        policy,
        "AwsSolutions-IAM5",
        "A connection id is known only at run time: @connections/<id> of the stage, POST and "
        "DELETE only (and, across regions, the API id: see grant_manage_connections).",
        *findings,
    )


def table_arns(aws_region: str) -> list[str]:
    arn = account_arn("dynamodb", aws_region, f"table/{store.DEFAULT_TABLE}")
    return [arn, f"{arn}/index/{store.INDEX}"]


class RealtimeApi(Construct):
    """One region's WebSocket API, its stage (named as the HTTP API's: the region code) and
    store, in front of the realtime function built by the regional API stack."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        function: CovenantFunction,
        log_key: Any,
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = connection_table(self)

        def route(name: str) -> apigw.WebSocketRouteOptions:
            return apigw.WebSocketRouteOptions(
                integration=integrations.WebSocketLambdaIntegration(
                    f"{name}Integration", function.target
                )
            )

        self.api = apigw.WebSocketApi(
            self,
            "Api",
            api_name=f"covenant-{region.code}-realtime",
            description=f"Covenant GraphQL subscriptions (graphql-transport-ws), {region.code}",
            connect_route_options=route("Connect"),
            disconnect_route_options=route("Disconnect"),
            default_route_options=route("Default"),
        )
        self.stage = apigw.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=region.code,
            auto_deploy=True,
            throttle=apigw.ThrottleSettings(
                rate_limit=settings.throttle_rate, burst_limit=settings.throttle_burst
            ),
            access_log_settings=WebSocketAccessLogs(
                logs.LogGroup(
                    self,
                    "AccessLogs",
                    retention=log_retention(settings.log_retention_days),
                    encryption_key=log_key,
                    removal_policy=RemovalPolicy.RETAIN,
                )
            ),
        )
        for child in self.api.node.children:
            if isinstance(child, apigw.WebSocketRoute):
                acknowledge(
                    child,
                    "AwsSolutions-APIG4",
                    "graphql-transport-ws authenticates in connection_init (browsers cannot "
                    "send headers on a WebSocket); the function verifies the token there with "
                    "the HTTP API's checks, and anonymous subscribers read what anyone may.",
                )
        function.function.add_environment("WEBSOCKET_MANAGEMENT_URL", self.stage.callback_url)
        function.function.add_environment("REALTIME_TABLE_NAME", self.table.table_name)
        grant_manage_connections(self, function.role, {region: self.api})
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=STORE_ACTIONS,
                resources=[self.table.table_arn, f"{self.table.table_arn}/index/{store.INDEX}"],
            )
        )


class FanOutStack(Stack):
    """The fan-out of every region, in the primary region next to NATS."""

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
        apis: dict[str, RealtimeApi],
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        groups = network.security_groups
        assert groups.consumers is not None
        layers = SharedLayers(self, "Layers", ca_bundle=settings.database.ca_bundle)
        spec = settings.functions["fanout"]
        user = database_user("fanout")
        url = (
            f"postgresql://{user}@{writer_host}:5432/"
            f"{settings.database.database_name}?{settings.database.tls_query}&auth=iam"
        )
        self.fanout = CovenantFunction(
            self,
            "FanOut",
            package="realtime",
            extra_packages=("graphql_api",),
            handler=spec.handler,
            description=spec.description,
            deploy=settings.deploy_settings("fanout"),
            settings=settings,
            layers=layers.layers,
            environment={
                **base_environment(service="fanout", region=region, settings=settings),
                "NATS_URL": events_stack.nats.url,
                "NATS_SECRET_ARN": events_stack.consumers_secret.secret_arn,
                # The figures of statsChanged are read where the change was written.
                "DATABASE_URL": url,
                "DATABASE_READER_URL": url,
                "DB_STATEMENT_TIMEOUT_MS": str(settings.database.statement_timeout_ms),
                "REALTIME_TABLE_NAME": store.DEFAULT_TABLE,
                "WEBSOCKET_MANAGEMENT_URLS": self.to_json_string(
                    {code: api.stage.callback_url for code, api in apis.items()}
                ),
            },
            vpc=network.vpc,
            subnets=network.function_subnets,
            security_group=groups.consumers,
            log_key=network.data_key,
            region=region,
            function_name=function_name(region, "fanout"),
        )
        role = self.fanout.role
        grant_secret_read(role, events_stack.consumers_secret, events_stack.key, self.region)
        self.fanout.grant_database_connect(cluster_resource_id=cluster_resource_id, db_user=user)
        served = {r.code: r for r in settings.regions}
        role.add_to_policy(
            iam.PolicyStatement(
                actions=STORE_ACTIONS,
                resources=[a for r in served.values() for a in table_arns(r.aws_region)],
            )
        )
        grant_manage_connections(self, role, dict.fromkeys(served[code] for code in apis))
        for code in apis:
            events.Rule(
                self,
                f"Schedule{code.title()}",
                rule_name=f"covenant-fanout-{code}",
                description=f"Runs the fan-out to {code}'s subscribers: each run pulls a minute",
                schedule=events.Schedule.rate(Duration.minutes(1)),
                targets=[
                    targets.LambdaFunction(
                        self.fanout.target,
                        event=events.RuleTargetInput.from_object({"region": code}),
                        retry_attempts=0,
                    )
                ],
            )
        encrypt_log_groups(self, network.data_key)

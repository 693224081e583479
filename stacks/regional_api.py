"""One region's API: the HTTP API (stage = region code) and the functions behind its routes.

Routes come from the function table (`covenant:functions` in cdk.json). How each route's `auth`
maps onto API Gateway:

- "none": no authorizer.
- "jwt": the JWT authorizer on the Cognito user pool (issuer = the pool, audience = the mobile
  client): a request without a valid token gets 401 and never reaches the function.
- "jwt-optional" (GraphQL, whose reads are public): no authorizer on the route, because API
  Gateway's JWT authorizer refuses every request without a token. The GraphQL function verifies
  a token when one is sent, with the same checks as the authorizer (and as the local gateway),
  from COGNITO_USER_POOL_ID / COGNITO_CLIENT_ID / COGNITO_REGION; without a token the caller is
  anonymous. A Lambda authorizer could do the same at the edge but would put the claims under
  `authorizer.lambda` and add an invocation to every request.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsii
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw_v1
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from constructs import Construct

from covenant import audit_trail, notifications
from covenant.regions import Region
from covenant.topology import FunctionSpec, Route
from stacks.database import database_user
from stacks.functions import (
    CovenantFunction,
    account_arn,
    base_environment,
    function_name,
    log_retention,
    primary_function_arn,
)
from stacks.layers import SharedLayers
from stacks.nag import acknowledge, acknowledge_push_endpoints
from stacks.network import RegionalNetwork
from stacks.realtime import RealtimeApi
from stacks.settings import AppSettings, DomainSettings, push_endpoint_arns

# Cognito calls that need IAM (the others are authorized by the user's own token or none).
COGNITO_ADMIN_ACTIONS = {
    # register (viewer role only; a half-made account is deleted), me, logout everywhere,
    # the password policy for weak-password answers (functions/mobile/auth/cognito.py)
    "mobile": [
        "cognito-idp:AdminCreateUser",
        "cognito-idp:AdminSetUserPassword",
        "cognito-idp:AdminAddUserToGroup",
        "cognito-idp:AdminDeleteUser",
        "cognito-idp:AdminGetUser",
        "cognito-idp:AdminListGroupsForUser",
        "cognito-idp:AdminUserGlobalSignOut",
        "cognito-idp:DescribeUserPool",
        # The app client's secret (SECRET_HASH, GetTokensFromRefreshToken), read at the first
        # sign-in of an execution environment. IAM scopes this action to the pool (Cognito has
        # no client-level resource), whose only client is covenant-mobile.
        "cognito-idp:DescribeUserPoolClient",
    ],
    # setUserRole (admins only, checked by the function; a demotion counts the admins left)
    "graphql": [
        "cognito-idp:AdminAddUserToGroup",
        "cognito-idp:AdminRemoveUserFromGroup",
        "cognito-idp:AdminListGroupsForUser",
        "cognito-idp:AdminGetUser",
        "cognito-idp:ListUsersInGroup",
    ],
}
# The functions whose writes add outbox events (GraphQL mutations, the sync push) and then
# send a wake-up to the bridge's queue (covenant.domain_events.wake_bridge_after_commit).
OUTBOX_WRITERS = ("graphql", "mobile")
# Behind the API but never writing: no writer URL, no hand-off to the primary.
READ_ONLY_FUNCTIONS = ("realtime",)
# Function packages a function's code imports besides its own.
EXTRA_PACKAGES = {"realtime": ("graphql_api",)}
AUTH_ROUTES_THROTTLED = ("POST /auth/login", "POST /auth/register", "POST /auth/refresh")
CORS_HEADERS = [
    "authorization",
    "content-type",
    "accept",
    "idempotency-key",
    "covenant-min-position",  # read-your-writes (docs/deploy.md)
]
# What a browser may read of an answer: the position a write returns, to send back.
CORS_EXPOSED_HEADERS = ["covenant-position", "idempotent-replayed"]


class UserPoolRef:
    """What a regional API needs of the Cognito pool in the primary region."""

    def __init__(self, *, pool_id: str, pool_arn: str, client_id: str, region: str) -> None:
        self.pool_id = pool_id
        self.pool_arn = pool_arn
        self.client_id = client_id
        self.region = region

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.pool_id}"


class DatabaseEndpoints:
    """Where this region's functions connect: the writer (primary region only: a secondary
    hands writes to the primary's function), the reader endpoint, the cluster id."""

    def __init__(
        self, *, writer_host: str | None, reader_host: str, cluster_resource_id: str
    ) -> None:
        self.writer_host = writer_host
        self.reader_host = reader_host
        self.cluster_resource_id = cluster_resource_id

    def url(self, *, host: str, user: str, database: str, tls: str) -> str:
        # IAM authentication (`auth=iam`): no password anywhere, a 15-minute token per connect.
        return f"postgresql://{user}@{host}:5432/{database}?{tls}&auth=iam"


def _access_log_format() -> apigw_v1.AccessLogFormat:
    return apigw_v1.AccessLogFormat.custom(
        json.dumps(
            {
                "requestId": "$context.requestId",
                "ip": "$context.identity.sourceIp",
                "requestTime": "$context.requestTime",
                "method": "$context.httpMethod",
                "routeKey": "$context.routeKey",
                "path": "$context.path",
                "status": "$context.status",
                "protocol": "$context.protocol",
                "responseLength": "$context.responseLength",
                "responseLatency": "$context.responseLatency",
                "integrationLatency": "$context.integrationLatency",
                "integrationError": "$context.integrationErrorMessage",
                "authorizerError": "$context.authorizer.error",
                "userAgent": "$context.identity.userAgent",
            },
            separators=(",", ":"),
        )
    )


@jsii.implements(apigw.IAccessLogSettings)
class _AccessLogs:
    """Access logs of a stage: one JSON line per request into the stage's log group."""

    def __init__(self, destination: apigw.IAccessLogDestination) -> None:
        self._destination = destination

    @property
    def destination(self) -> apigw.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw_v1.AccessLogFormat:
        return _access_log_format()


def _route_id(route: Route) -> str:
    return "Route" + re.sub(r"[^A-Za-z0-9]", "", route.key.title())


class RegionalApiStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        database: DatabaseEndpoints,
        user_pool: UserPoolRef,
        nats_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.region_config = region
        self._nats_url = nats_url  # the primary's: the mobile function's /health probes it
        layers = SharedLayers(self, "Layers", ca_bundle=settings.database.ca_bundle)
        cors_origins = list(settings.cors_allowed_origins)
        self.api = apigw.HttpApi(
            self,
            "HttpApi",
            api_name=f"covenant-{region.code}",
            description=f"Covenant API, region {region.code} ({region.aws_region})",
            create_default_stage=False,
            cors_preflight=apigw.CorsPreflightOptions(
                allow_origins=cors_origins,
                allow_methods=[
                    apigw.CorsHttpMethod.GET,
                    apigw.CorsHttpMethod.POST,
                    apigw.CorsHttpMethod.OPTIONS,
                ],
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSED_HEADERS,
                max_age=Duration.days(1),
            ),
        )
        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=log_retention(settings.log_retention_days),
            encryption_key=network.data_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.stage = apigw.HttpStage(
            self,
            "Stage",
            http_api=self.api,
            stage_name=region.code,
            auto_deploy=True,
            throttle=apigw.ThrottleSettings(
                rate_limit=settings.throttle_rate, burst_limit=settings.throttle_burst
            ),
            access_log_settings=_AccessLogs(apigw.LogGroupLogDestination(access_logs)),
        )
        self.authorizer = authorizers.HttpJwtAuthorizer(
            "Cognito",
            jwt_issuer=user_pool.issuer,
            jwt_audience=[user_pool.client_id],
            authorizer_name="cognito",
        )
        self.functions: dict[str, CovenantFunction] = {}
        routes: dict[str, apigw.HttpRoute] = {}
        for name, spec in settings.functions.items():
            if not spec.routes:
                continue  # not behind the API (the bridge): the events stack deploys it
            function = self._function(
                name, spec, region, settings, network, database, user_pool, layers.layers
            )
            self.functions[name] = function
            integration = integrations.HttpLambdaIntegration(
                f"{name.title()}Integration", function.target
            )
            for route in spec.routes:
                routes[route.key] = self._route(route, integration)
        self._throttle_auth_routes(settings, routes)
        realtime_spec = settings.functions.get("realtime")
        self.realtime: RealtimeApi | None = None
        if realtime_spec is not None and realtime_spec.websocket is not None:
            function = self._function(
                "realtime",
                realtime_spec,
                region,
                settings,
                network,
                database,
                user_pool,
                layers.layers,
            )
            self.functions["realtime"] = function
            self.realtime = RealtimeApi(
                self,
                "Realtime",
                region=region,
                settings=settings,
                function=function,
                log_key=network.data_key,
            )
            # The explorer's subscriptions go to this region's own WebSocket stage (same
            # stack, so no cross-stack reference).
            self.functions["graphql"].function.add_environment(
                "GRAPHQL_SUBSCRIPTIONS_URL", self.realtime.stage.url
            )
        if settings.domain is not None:
            RegionalDomain(self, "Domain", region=region, domain=settings.domain, stage=self.stage)

    def _function(
        self,
        name: str,
        spec: FunctionSpec,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        database: DatabaseEndpoints,
        user_pool: UserPoolRef,
        layers: list[Any],
    ) -> CovenantFunction:
        user = database_user(name)
        db_name = settings.database.database_name
        tls = settings.database.tls_query
        environment = {
            **base_environment(service=name, region=region, settings=settings),
            "DATABASE_READER_URL": database.url(
                host=database.reader_host, user=user, database=db_name, tls=tls
            ),
            "DB_STATEMENT_TIMEOUT_MS": str(settings.database.statement_timeout_ms),
            "COGNITO_USER_POOL_ID": user_pool.pool_id,
            "COGNITO_CLIENT_ID": user_pool.client_id,
            "COGNITO_REGION": user_pool.region,
            "CORS_ALLOWED_ORIGINS": ",".join(settings.cors_allowed_origins),
        }
        if name == "mobile":
            # /health reports "degraded" beyond the lag the bridge warns about.
            environment["HEALTH_MAX_REPLICA_LAG_S"] = str(settings.events.replica_lag_warning_s)
        queue_arn = account_arn(
            "sqs", settings.primary.aws_region, settings.events.wakeup_queue_name
        )
        primary_function: str | None = None
        if name in READ_ONLY_FUNCTIONS:
            pass
        elif region.primary:
            assert database.writer_host is not None
            environment["DATABASE_URL"] = database.url(
                host=database.writer_host, user=user, database=db_name, tls=tls
            )
            if name == "mobile" and self._nats_url is not None:
                environment["NATS_URL"] = self._nats_url  # no credentials: /health's probe
        else:
            # Every write request goes whole to the primary region's same function (one
            # synchronous Invoke); this region connects to its own reader only.
            primary_function = primary_function_arn(settings, name)
            environment["COVENANT_PRIMARY_FUNCTION"] = primary_function
        audit_table_arn = account_arn(
            "dynamodb", settings.primary.aws_region, f"table/{audit_trail.DEFAULT_TABLE}"
        )
        if name == "graphql":
            # auditLog reads the primary region's audit trail (stacks/consumers.py).
            environment["AUDIT_TABLE_NAME"] = audit_trail.DEFAULT_TABLE
            environment["AUDIT_TABLE_REGION"] = settings.primary.aws_region
            environment["GRAPHQL_INTROSPECTION"] = str(settings.graphql_introspection).lower()
            environment["GRAPHQL_EXPLORER"] = str(settings.graphql_explorer).lower()
        if name in OUTBOX_WRITERS:
            environment["OUTBOX_WAKEUP_QUEUE_URL"] = (
                f"https://sqs.{settings.primary.aws_region}.amazonaws.com/"
                f"{self.account}/{settings.events.wakeup_queue_name}"
            )
        security_group = network.security_groups.api_functions
        function = CovenantFunction(
            self,
            f"{name.title()}Function",
            package=spec.handler.split(".", 1)[0],
            handler=spec.handler,
            description=spec.description,
            deploy=settings.deploy_settings(name),
            settings=settings,
            layers=layers,
            environment=environment,
            vpc=network.vpc,
            subnets=network.function_subnets,
            security_group=security_group,
            log_key=network.data_key,
            region=region,
            function_name=function_name(region, name),
            extra_packages=EXTRA_PACKAGES.get(name, ()),
        )
        if primary_function is not None:
            function.role.add_to_policy(
                iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[primary_function])
            )
        function.grant_database_connect(
            cluster_resource_id=database.cluster_resource_id, db_user=user
        )
        if name in OUTBOX_WRITERS:
            function.role.add_to_policy(
                iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[queue_arn])
            )
        if name == "graphql":
            function.role.add_to_policy(
                iam.PolicyStatement(
                    actions=["dynamodb:Query"],
                    resources=[
                        audit_table_arn,
                        *(f"{audit_table_arn}/index/{i}" for i in audit_trail.INDEXES.values()),
                    ],
                )
            )
        if name == "mobile" and region.primary:
            self._push_registration(function, settings)
        if COGNITO_ADMIN_ACTIONS.get(name):
            function.role.add_to_policy(
                iam.PolicyStatement(
                    actions=COGNITO_ADMIN_ACTIONS[name], resources=[user_pool.pool_arn]
                )
            )
        return function

    @staticmethod
    def _push_registration(function: CovenantFunction, settings: AppSettings) -> None:
        """POST/DELETE /devices (run in the primary region): endpoints of the configured
        platform applications only (covenant.notifications)."""
        for platform, arn in settings.push_applications.items():
            function.function.add_environment(notifications.APPLICATION_ENV[platform], arn)
        if not settings.push_applications:
            return
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["sns:CreatePlatformEndpoint"],
                resources=list(settings.push_applications.values()),
            )
        )
        endpoints = push_endpoint_arns(settings)
        function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["sns:SetEndpointAttributes", "sns:DeleteEndpoint"], resources=endpoints
            )
        )
        acknowledge_push_endpoints(function, endpoints)

    def _route(self, route: Route, integration: apigw.HttpRouteIntegration) -> apigw.HttpRoute:
        http_route = apigw.HttpRoute(
            self,
            _route_id(route),
            http_api=self.api,
            route_key=apigw.HttpRouteKey.with_(route.path, apigw.HttpMethod[route.method]),
            integration=integration,
            authorizer=self.authorizer if route.auth == "jwt" else apigw.HttpNoneAuthorizer(),
        )
        if route.auth != "jwt":
            reason = (
                "Public by contract (health, sign-in, registration, CORS preflight)."
                if route.auth == "none"
                else "jwt-optional: GraphQL reads are public; the function verifies any token "
                "it is sent with the authorizer's checks (see this module's docstring)."
            )
            acknowledge(
                http_route,
                "AwsSolutions-APIG4",
                reason,
            )
        return http_route

    def _throttle_auth_routes(
        self, settings: AppSettings, routes: dict[str, apigw.HttpRoute]
    ) -> None:
        """Tighter limits on the routes that take passwords: a brake on credential stuffing
        before any Lambda runs (the function throttles per account and address as well)."""
        throttled = [key for key in AUTH_ROUTES_THROTTLED if key in routes]
        if not throttled:
            return
        cfn_stage = self.stage.node.default_child
        assert isinstance(cfn_stage, apigw.CfnStage)
        cfn_stage.route_settings = {
            key: {
                "ThrottlingRateLimit": settings.auth_throttle_rate,
                "ThrottlingBurstLimit": settings.auth_throttle_burst,
            }
            for key in throttled
        }
        for key in throttled:
            cfn_stage.node.add_dependency(routes[key])


class RegionalDomain(Construct):
    """api-<code>.<domain> for this region, and this region's latency record of
    api.<domain>, withdrawn by Route 53 while /health of this region fails."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        domain: DomainSettings,
        stage: apigw.HttpStage,
    ) -> None:
        super().__init__(scope, construct_id)
        zone = route53.HostedZone.from_hosted_zone_id(self, "Zone", domain.hosted_zone_id)
        regional_name = domain.regional_name(region)
        certificate = acm.Certificate(
            self,
            "Certificate",
            domain_name=regional_name,
            subject_alternative_names=[domain.global_name],
            validation=acm.CertificateValidation.from_dns(zone),
        )
        names: dict[str, apigw.DomainName] = {}
        for label, name in (("Regional", regional_name), ("Global", domain.global_name)):
            names[label] = apigw.DomainName(
                self,
                f"{label}Name",
                domain_name=name,
                certificate=certificate,
                security_policy=apigw.SecurityPolicy.TLS_1_2,
            )
            apigw.ApiMapping(
                self, f"{label}Mapping", api=stage.api, domain_name=names[label], stage=stage
            )
        route53.CfnRecordSet(
            self,
            "RegionalRecord",
            hosted_zone_id=domain.hosted_zone_id,
            name=regional_name,
            type="A",
            alias_target=route53.CfnRecordSet.AliasTargetProperty(
                dns_name=names["Regional"].regional_domain_name,
                hosted_zone_id=names["Regional"].regional_hosted_zone_id,
            ),
        )
        health = route53.CfnHealthCheck(
            self,
            "Health",
            health_check_config=route53.CfnHealthCheck.HealthCheckConfigProperty(
                type="HTTPS",
                fully_qualified_domain_name=regional_name,
                resource_path="/health",
                port=443,
                enable_sni=True,
                request_interval=30,
                failure_threshold=3,
            ),
            health_check_tags=[
                route53.CfnHealthCheck.HealthCheckTagProperty(
                    key="Name", value=f"covenant-{region.code}"
                )
            ],
        )
        route53.CfnRecordSet(
            self,
            "LatencyRecord",
            hosted_zone_id=domain.hosted_zone_id,
            name=domain.global_name,
            type="A",
            set_identifier=region.code,
            region=region.aws_region,
            health_check_id=health.attr_health_check_id,
            alias_target=route53.CfnRecordSet.AliasTargetProperty(
                dns_name=names["Global"].regional_domain_name,
                hosted_zone_id=names["Global"].regional_hosted_zone_id,
                evaluate_target_health=True,
            ),
        )

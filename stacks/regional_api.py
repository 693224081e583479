"""One region's API: its HTTP API (stage = region code) and the functions behind its routes.

Grows with the other issues: VPC, Aurora reader endpoint, JWT authorizer, alarms.
"""

from __future__ import annotations

import re
from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from covenant.regions import Region, regions_as_json
from covenant.topology import FunctionSpec
from stacks.layers import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME, REPO_ROOT, SharedLayers
from stacks.settings import AppSettings

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    7: logs.RetentionDays.ONE_WEEK,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


class RegionalFunction(Construct):
    """One function of the function table, deployed in one region."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: FunctionSpec,
        region: Region,
        settings: AppSettings,
        layers: list[lambda_.ILayerVersion],
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=_RETENTION.get(settings.log_retention_days, logs.RetentionDays.ONE_MONTH),
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=spec.description,
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            handler=spec.handler,
            # The function's own package only; shared code and libraries come from the layers.
            code=lambda_.Code.from_asset(
                str(REPO_ROOT / "functions"),
                exclude=["*", f"!{spec.name}", f"!{spec.name}/**", "**/__pycache__"],
            ),
            layers=layers,
            memory_size=1024,
            timeout=Duration.seconds(15),
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
            environment={
                "COVENANT_REGION": region.code,
                "COVENANT_STAGE": settings.stage,
                "COVENANT_REGIONS": regions_as_json(settings.regions),
                "POWERTOOLS_SERVICE_NAME": spec.name,
                "POWERTOOLS_METRICS_NAMESPACE": "Covenant",
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )


class RegionalApiStack(Stack):
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
        layers = SharedLayers(self, "Layers")
        self.api = apigw.HttpApi(
            self,
            "HttpApi",
            api_name=f"covenant-{region.code}",
            description=f"Covenant API, region {region.code} ({region.aws_region})",
            create_default_stage=False,
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
        )
        for name, spec in settings.functions.items():
            if not spec.routes:
                continue  # not behind the API (the bridge): deployed by its own stack
            function = RegionalFunction(
                self,
                f"{name.title()}Function",
                spec=spec,
                region=region,
                settings=settings,
                layers=layers.layers,
            ).function
            integration = integrations.HttpLambdaIntegration(f"{name.title()}Integration", function)
            for route in spec.routes:
                apigw.HttpRoute(
                    self,
                    "Route" + re.sub(r"[^A-Za-z0-9]", "", route.key.title()),
                    http_api=self.api,
                    route_key=apigw.HttpRouteKey.with_(route.path, apigw.HttpMethod[route.method]),
                    integration=integration,
                )

"""One region's dashboard and alarms; every alarm notifies the region's SNS topic.

Alarms: API 5xx rate and p99 latency, each function's errors and throttles, Aurora replica
lag (in-cluster in the primary, global replication lag in the secondaries), and in the primary
region the wake-up dead-letter queue depth, the outbox lag, JetStream health, NATS unreachable
from the bridge, and a stream leaderless or missing (bridge or probe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from covenant.regions import Region
from stacks.settings import AppSettings

# Thresholds: page when users notice, not on one stray error.
API_5XX_RATE_PERCENT = 1.0
API_MIN_REQUESTS = 20  # per 5 minutes, below which the 5xx rate is not judged
API_P99_LATENCY_MS = 2000
FUNCTION_ERRORS = 5  # per 5 minutes
OUTBOX_LAG_S = 120
CONSUMER_LAG_MESSAGES = 1000
FANOUT_DELIVERY_ERRORS = 10  # failed @connections posts per 5 minutes (410 is not one)
# Minutes in a row: a leader election or a node restart lasts seconds, a quorum loss or an
# unreachable cluster longer; the bridge runs at least every minute (its schedule).
NATS_UNAVAILABLE_MINUTES = 3
STREAM_LEADERLESS_MINUTES = 2


@dataclass(frozen=True)
class EventsMonitoring:
    """What the primary region's events stack contributes to its dashboard."""

    dead_letters: sqs.IQueue
    bridge: lambda_.IFunction
    jetstream: lambda_.IFunction
    # JetStream consumer functions by name (stacks/consumers.py): each reports ConsumerLag.
    consumers: Mapping[str, lambda_.IFunction] = field(default_factory=dict)


class MonitoringStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        api: apigw.HttpApi,
        stage_name: str,
        functions: dict[str, lambda_.IFunction],
        cluster_identifier: str,
        events: EventsMonitoring | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        key = kms.Key(
            self,
            "AlarmsKey",
            alias=f"alias/covenant/{region.code}/alarms",
            description="Covenant alarm notifications (SNS)",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        # CloudWatch encrypts what it publishes to the topic with this key.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "Alarms",
            topic_name=f"covenant-{region.code}-alarms",
            display_name=f"Covenant alarms ({region.code})",
            master_key=key,
            enforce_ssl=True,
        )
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        self._action = actions.SnsAction(self.topic)
        self.alarms: list[cloudwatch.Alarm] = []
        dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"covenant-{region.code}"
        )

        api_dimensions = {"ApiId": api.api_id, "Stage": stage_name}
        requests = _metric("AWS/ApiGateway", "Count", api_dimensions, "SampleCount")
        server_errors = _metric("AWS/ApiGateway", "5xx", api_dimensions, "Sum")
        error_rate = cloudwatch.MathExpression(
            expression=f"IF(requests >= {API_MIN_REQUESTS}, 100 * errors / requests, 0)",
            using_metrics={"requests": requests, "errors": server_errors},
            label="5xx rate (%)",
            period=Duration.minutes(5),
        )
        latency = _metric("AWS/ApiGateway", "Latency", api_dimensions, "p99")
        self._alarm(
            "Api5xxRate",
            error_rate,
            API_5XX_RATE_PERCENT,
            "API 5xx rate above 1 % of requests",
        )
        self._alarm("ApiLatencyP99", latency, API_P99_LATENCY_MS, "API p99 latency above 2 s")
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="API requests and 5xx", left=[requests, server_errors]),
            cloudwatch.GraphWidget(title="API 5xx rate (%)", left=[error_rate]),
            cloudwatch.GraphWidget(title="API latency p99 (ms)", left=[latency]),
        )

        function_metrics: list[cloudwatch.IMetric] = []
        all_functions = dict(functions)
        if events is not None:
            all_functions["bridge"] = events.bridge
            all_functions["jetstream"] = events.jetstream
            all_functions.update(events.consumers)
        for name, function in all_functions.items():
            errors = function.metric_errors(period=Duration.minutes(5), statistic="Sum")
            throttles = function.metric_throttles(period=Duration.minutes(5), statistic="Sum")
            self._alarm(
                f"{name.title()}Errors",
                errors,
                FUNCTION_ERRORS,
                f"{name} function errors",
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            )
            self._alarm(
                f"{name.title()}Throttles",
                throttles,
                0,
                f"{name} function throttled",
            )
            function_metrics += [errors, throttles]
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Function errors and throttles", left=function_metrics)
        )

        if region.primary:
            replica_lag = _metric(
                "AWS/RDS",
                "AuroraReplicaLagMaximum",
                {"DBClusterIdentifier": cluster_identifier},
                "Maximum",
            )
            lag_title = "Aurora replica lag, in-cluster (ms)"
        else:
            replica_lag = _metric(
                "AWS/RDS",
                "AuroraGlobalDBReplicationLag",
                {"DBClusterIdentifier": cluster_identifier},
                "Maximum",
            )
            lag_title = "Aurora global replication lag from the primary (ms)"
        # The same threshold as the bridge's replica-lag warning and /health's "degraded"
        # (covenant:events.replicaLagWarningSeconds), in the metric's milliseconds.
        lag_threshold_ms = settings.events.replica_lag_warning_s * 1000
        self._alarm("ReplicaLag", replica_lag, lag_threshold_ms, lag_title, periods=3)
        dashboard.add_widgets(cloudwatch.GraphWidget(title=lag_title, left=[replica_lag]))

        if events is not None:
            depth = events.dead_letters.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"
            )
            outbox_lag = _metric(
                "Covenant", "OutboxLagSeconds", {"service": "bridge"}, "Maximum", minutes=1
            )
            jetstream = _metric(
                "Covenant", "JetStreamHealthy", {"service": "jetstream"}, "Minimum", minutes=1
            )
            set_aside = _metric(
                "Covenant", "EventsDeadLettered", {"service": "bridge"}, "Sum", minutes=5
            )
            self._alarm("WakeupDeadLetters", depth, 0, "Wake-ups in the dead-letter queue")
            self._alarm(
                "EventsSetAside",
                set_aside,
                0,
                "Outbox events the stream kept refusing, set aside unpublished (dead_at): "
                "see docs/deploy.md, Operating",
            )
            self._alarm(
                "OutboxLag",
                outbox_lag,
                OUTBOX_LAG_S,
                "Oldest unpublished outbox event older than 2 minutes (or no bridge run)",
                periods=3,
                missing=cloudwatch.TreatMissingData.BREACHING,
            )
            self._alarm(
                "NatsHealth",
                jetstream,
                1,
                "JetStream unhealthy or unreachable from the VPC (or no probe run)",
                comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                periods=3,
                missing=cloudwatch.TreatMissingData.BREACHING,
            )
            consumer_lags: list[cloudwatch.IMetric] = []
            for name in events.consumers:
                lag = _metric("Covenant", "ConsumerLag", {"service": name}, "Maximum", minutes=5)
                self._alarm(
                    f"{''.join(p.title() for p in name.split('_'))}Lag",
                    lag,
                    CONSUMER_LAG_MESSAGES,
                    f"{name}: more than {CONSUMER_LAG_MESSAGES} events unacknowledged for 15 "
                    "minutes (or no run reported): see docs/deploy.md, Stream consumers",
                    periods=3,
                    missing=cloudwatch.TreatMissingData.BREACHING,
                )
                consumer_lags.append(lag)
            if "fanout" in events.consumers:
                self._alarm(
                    "FanoutDeliveryErrors",
                    _metric("Covenant", "DeliveryErrors", {"service": "fanout"}, "Sum"),
                    FANOUT_DELIVERY_ERRORS,
                    "The real-time fan-out's posts to @connections failed (throttled, too "
                    "large, unavailable; a gone connection is not an error) more than "
                    f"{FANOUT_DELIVERY_ERRORS} times in 5 minutes, twice in a row: see "
                    "docs/realtime.md",
                    periods=2,
                )
            nats_unavailable = _metric(
                "Covenant", "NatsUnavailable", {"service": "bridge"}, "Sum", minutes=1
            )
            self._alarm(
                "NatsUnavailable",
                nats_unavailable,
                0,
                "The bridge cannot reach any NATS server (every run for "
                f"{NATS_UNAVAILABLE_MINUTES} minutes): events wait in the outbox",
                periods=NATS_UNAVAILABLE_MINUTES,
            )
            leaderless = self._bridge_or_probe("StreamLeaderless")
            self._alarm(
                "StreamLeaderless",
                leaderless,
                0,
                "A JetStream stream exists but has no leader (quorum of its servers lost) for "
                f"{STREAM_LEADERLESS_MINUTES} minutes: its events wait in the outbox; bring "
                "the NATS servers back, do not re-apply the topology",
                periods=STREAM_LEADERLESS_MINUTES,
            )
            missing = self._bridge_or_probe("StreamMissing")
            self._alarm(
                "StreamMissing",
                missing,
                0,
                "A stream of the topology does not exist: its events wait in the outbox; "
                "apply the topology (deploy again)",
                periods=2,
            )
            dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title="NATS unreachable, streams leaderless or missing",
                    left=[nats_unavailable, leaderless, missing],
                ),
            )
            dashboard.add_widgets(
                cloudwatch.GraphWidget(title="Consumer lag (messages)", left=consumer_lags),
                cloudwatch.GraphWidget(title="Outbox lag (s)", left=[outbox_lag]),
                cloudwatch.GraphWidget(title="Wake-up DLQ depth", left=[depth]),
                cloudwatch.GraphWidget(title="Events set aside", left=[set_aside]),
                cloudwatch.GraphWidget(title="JetStream healthy (1/0)", left=[jetstream]),
            )
        dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=24)
        )

    @staticmethod
    def _bridge_or_probe(name: str) -> cloudwatch.MathExpression:
        """The larger of the bridge's count and the jetstream probe's, per minute: the bridge
        sees it first, the probe (admin user) for certain."""
        key = name[0].lower() + name[1:]  # ids are unique within a graph: one per metric
        bridge, probe = f"{key}Bridge", f"{key}Probe"
        return cloudwatch.MathExpression(
            expression=f"MAX([FILL({bridge}, 0), FILL({probe}, 0)])",
            using_metrics={
                bridge: _metric("Covenant", name, {"service": "bridge"}, "Maximum", minutes=1),
                probe: _metric("Covenant", name, {"service": "jetstream"}, "Maximum", minutes=1),
            },
            label=name,
            period=Duration.minutes(1),
        )

    def _alarm(
        self,
        name: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        description: str,
        *,
        comparison: cloudwatch.ComparisonOperator = (
            cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
        ),
        periods: int = 1,
        missing: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            treat_missing_data=missing,
            alarm_description=description,
        )
        alarm.add_alarm_action(self._action)
        alarm.add_ok_action(self._action)
        self.alarms.append(alarm)


def _metric(
    namespace: str,
    name: str,
    dimensions: dict[str, str],
    statistic: str,
    *,
    minutes: int = 5,
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=namespace,
        metric_name=name,
        dimensions_map=dimensions,
        statistic=statistic,
        period=Duration.minutes(minutes),
    )

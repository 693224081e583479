#!/usr/bin/env python3
"""The Covenant CDK app: every stack of every region of the cdk.json region table.

Per region: Network -> Data -> Api -> Monitoring. The primary region adds Auth (Cognito),
Events (stateful: EKS/NATS, the NATS secrets, the wake-up queue) and Bridge (stateless: the
outbox bridge and the JetStream topology/probe functions). `cdk deploy --all` follows the
dependencies below; stacks of different regions deploy in parallel with `--concurrency`.

    Covenant-<code>-Network ─► Covenant-<code>-Data ─┬─► Covenant-<code>-Api ─► ...-Monitoring
    Covenant-iad-Data ─► (every secondary Data)      │
    Covenant-iad-Auth, Covenant-iad-Events ──────────┘
    Covenant-iad-Events, Covenant-iad-Data ─► Covenant-iad-Bridge ─► Covenant-iad-Monitoring
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk

from stacks.auth import AuthStack
from stacks.capacity import check_connection_budget
from stacks.consumers import ConsumersStack
from stacks.database import DataStack
from stacks.events import BridgeStack, EventsStack
from stacks.monitoring import EventsMonitoring, MonitoringStack
from stacks.nag import enable_nag
from stacks.network import NetworkStack
from stacks.realtime import FanOutStack
from stacks.regional_api import DatabaseEndpoints, RegionalApiStack, UserPoolRef
from stacks.settings import AppSettings


def build_app(app: cdk.App | None = None) -> cdk.App:
    app = app or cdk.App()
    settings = AppSettings.from_node(app.node)
    primary = settings.primary
    check_connection_budget(settings)

    def env(aws_region: str) -> cdk.Environment:
        return cdk.Environment(account=settings.account, region=aws_region)

    networks = {
        r.code: NetworkStack(
            app,
            f"Covenant-{r.code}-Network",
            region=r,
            settings=settings,
            env=env(r.aws_region),
            description=f"Covenant network ({r.code}): VPC, endpoints, security groups",
        ).network
        for r in settings.regions
    }
    data: dict[str, DataStack] = {}
    for r in (primary, *settings.secondaries):
        data[r.code] = DataStack(
            app,
            f"Covenant-{r.code}-Data",
            region=r,
            settings=settings,
            network=networks[r.code],
            env=env(r.aws_region),
            termination_protection=True,
            description=(
                f"Covenant data ({r.code}): Aurora PostgreSQL "
                + ("primary cluster, global cluster, migrations" if r.primary else "secondary")
            ),
        )
        if not r.primary:
            data[r.code].add_stack_dependency(data[primary.code], "the global cluster must exist")

    auth = AuthStack(
        app,
        f"Covenant-{primary.code}-Auth",
        settings=settings,
        env=env(primary.aws_region),
        termination_protection=True,
        cross_region_references=True,
        description="Covenant Cognito user pool",
    )
    primary_data = data[primary.code]
    events = EventsStack(
        app,
        f"Covenant-{primary.code}-Events",
        region=primary,
        settings=settings,
        network=networks[primary.code],
        env=env(primary.aws_region),
        termination_protection=True,
        description="Covenant events: NATS JetStream on EKS, NATS secrets, wake-up queue",
    )
    # What the primary region's event-path stacks (bridge, consumers, fan-out) all take.
    event_path: dict[str, Any] = {
        "region": primary,
        "settings": settings,
        "network": networks[primary.code],
        "events_stack": events,
        "writer_host": primary_data.writer_host,
        "cluster_resource_id": primary_data.cluster_resource_id,
    }
    bridge = BridgeStack(
        app,
        f"Covenant-{primary.code}-Bridge",
        **event_path,
        env=env(primary.aws_region),
        description="Covenant outbox bridge and JetStream topology functions",
    )
    bridge.add_stack_dependency(events, "NATS and the wake-up queue exist")
    bridge.add_stack_dependency(primary_data, "migrations before the bridge runs")
    consumers = ConsumersStack(
        app,
        f"Covenant-{primary.code}-Consumers",
        **event_path,
        env=env(primary.aws_region),
        # It holds the audit trail (a retained table besides): never deleted by accident.
        termination_protection=True,
        description="Covenant JetStream consumers (audit, analytics, push, notifications, alerts)",
    )
    consumers.add_stack_dependency(events, "NATS, its consumers' user and the topology exist")
    consumers.add_stack_dependency(primary_data, "migrations (analytics tables) before it runs")

    user_pool = UserPoolRef(
        pool_id=auth.user_pool.pool.user_pool_id,
        pool_arn=auth.user_pool.pool.user_pool_arn,
        client_id=auth.user_pool.client.user_pool_client_id,
        region=primary.aws_region,
    )
    apis: dict[str, RegionalApiStack] = {}
    for r in settings.regions:
        regional = data[r.code]
        api = RegionalApiStack(
            app,
            f"Covenant-{r.code}-Api",
            region=r,
            settings=settings,
            network=networks[r.code],
            database=DatabaseEndpoints(
                writer_host=regional.writer_host if r.primary else None,
                reader_host=regional.reader_host,
                cluster_resource_id=regional.cluster_resource_id,
            ),
            user_pool=user_pool,
            nats_url=events.nats.url if r.primary else None,
            env=env(r.aws_region),
            cross_region_references=True,
            description=f"Covenant regional API ({r.code})",
        )
        api.add_stack_dependency(primary_data, "the schema is migrated before new code serves")
        api.add_stack_dependency(events, "the wake-up queue exists")
        apis[r.code] = api
    fanout = FanOutStack(
        app,
        f"Covenant-{primary.code}-Realtime",
        **event_path,
        apis={code: api.realtime for code, api in apis.items() if api.realtime is not None},
        env=env(primary.aws_region),
        cross_region_references=True,
        description="Covenant real-time fan-out: COVENANT events to every region's subscribers",
    )
    fanout.add_stack_dependency(events, "NATS, its consumers' user and the topology exist")
    for api in apis.values():
        fanout.add_stack_dependency(api, "the WebSocket APIs it posts to exist")
    for r in settings.regions:
        regional = data[r.code]
        api = apis[r.code]
        MonitoringStack(
            app,
            f"Covenant-{r.code}-Monitoring",
            region=r,
            settings=settings,
            api=api.api,
            stage_name=api.stage.stage_name,
            functions={name: f.function for name, f in api.functions.items()},
            cluster_identifier=regional.cluster_identifier,
            events=(
                EventsMonitoring(
                    dead_letters=events.wakeup.dead_letters,
                    bridge=bridge.bridge.function,
                    jetstream=bridge.jetstream.function,
                    consumers={
                        **{n: f.function for n, f in consumers.functions.items()},
                        "fanout": fanout.fanout.function,
                    },
                )
                if r.primary
                else None
            ),
            env=env(r.aws_region),
            description=f"Covenant dashboard and alarms ({r.code})",
        ).add_stack_dependency(regional)

    cdk.Tags.of(app).add("project", "covenant")
    cdk.Tags.of(app).add("covenant:stage", settings.stage)
    if settings.nag:
        enable_nag(app)
    return app


if __name__ == "__main__":
    build_app().synth()

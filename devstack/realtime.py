"""`make dev`'s side of the real-time subscriptions (docs/realtime.md): each region's
connection store in moto (one `covenant-realtime` table per AWS region, as CDK creates one per
region), the `@connections` URLs of the gateway's WebSocket emulation, and the fan-out running
without pause, one loop per served region, in the primary region as in AWS (one EventBridge
rule per served region there)."""

from __future__ import annotations

from collections.abc import Mapping

from covenant.config import environment
from covenant.regions import load_regions, primary_region
from devstack.consumers import ConsumerLoops, Invoker
from devstack.functions import get_function
from realtime import store

FANOUT_FUNCTION = "fanout"


def provision(endpoints: Mapping[str, str], gateway_url: str) -> dict[str, str]:
    """Creates the six tables (DYNAMODB_ENDPOINT_URL of `endpoints`: moto); the variables the
    realtime and fan-out functions need besides."""
    with environment(dict(endpoints)):
        for region in load_regions():
            store.ensure_table(store.client(region.aws_region))
    return {"WEBSOCKET_MANAGEMENT_BASE_URL": gateway_url}


def fanout_loops(
    invoker: Invoker, first_run_after_s: float = 0.0, stagger_s: float = 0.0
) -> list[ConsumerLoops]:
    """One loop per served region; the n-th (from 0) runs first after `first_run_after_s` +
    n * `stagger_s`."""
    function = get_function(FANOUT_FUNCTION)
    return [
        ConsumerLoops(
            [function],
            primary_region(),
            invoker,
            event={"region": region.code},
            first_run_after_s=first_run_after_s + index * stagger_s,
        )
        for index, region in enumerate(load_regions())
    ]

"""`make dev`'s stand-in for the consumers' one-minute schedule (stacks/consumers.py): one
thread per consumer function invokes it in its Lambda environments (devstack.runtime) again
as soon as the previous run returns. Each run pulls from its durable consumer until its time
runs low, so the loop keeps one consumer pulling at all times, as the schedule does in AWS
(where a run starts every minute and lasts about as long). The AWS side is moto's: the audit
trail's table is created at start, as CDK creates it in AWS."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from covenant import audit_trail
from covenant.config import environment
from covenant.regions import Region
from covenant.topology import FunctionSpec
from devstack.event_sources import scheduled_event

logger = logging.getLogger("devstack.consumers")

# The consumer functions (cdk.json covenant:functions), as stacks/consumers.py deploys them.
CONSUMER_FUNCTIONS = ("audit_logger", "analytics")

Invoker = Callable[[FunctionSpec, Region, dict[str, Any]], Any]


def provision(endpoints: Mapping[str, str], moto_url: str, region: Region) -> dict[str, str]:
    """The AWS resources the consumers use, in moto; the endpoint variables for every
    function (GraphQL reads the audit trail too)."""
    variables = {
        "DYNAMODB_ENDPOINT_URL": moto_url,
        "AUDIT_TABLE_NAME": audit_trail.DEFAULT_TABLE,
        "AUDIT_TABLE_REGION": region.aws_region,
    }
    with environment({**endpoints, **variables}):
        audit_trail.ensure_table(audit_trail.client())
    return variables


class ConsumerLoops:
    """`event`: what each run is invoked with (an EventBridge rule's constant input, as the
    fan-out's rule per served region has), else a scheduled event."""

    def __init__(
        self,
        functions: list[FunctionSpec],
        region: Region,
        invoker: Invoker,
        event: dict[str, Any] | None = None,
    ) -> None:
        self.functions = functions
        self.region = region
        self.invoker = invoker
        self.event = event
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for function in self.functions:
            thread = threading.Thread(
                target=self._loop,
                args=(function,),
                name=f"consumer-{function.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        # A run in flight ends when the runtime stops its environment; nothing waits for it.
        self._stop.set()

    def _loop(self, function: FunctionSpec) -> None:
        while not self._stop.is_set():
            try:
                event = self.event or scheduled_event(self.region.aws_region)
                self.invoker(function, self.region, event)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("consumer %s run failed; running it again in 2 s", function.name)
                self._stop.wait(2)

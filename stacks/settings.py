"""Everything the stacks are configured by, read from cdk.json context (never literals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from constructs import Node

from covenant.regions import CONTEXT_KEY as REGIONS_KEY
from covenant.regions import Region, parse_regions
from covenant.topology import CONTEXT_KEY as FUNCTIONS_KEY
from covenant.topology import FunctionSpec, parse_functions


@dataclass(frozen=True)
class AppSettings:
    regions: tuple[Region, ...]
    functions: dict[str, FunctionSpec]
    account: str | None
    stage: str
    log_retention_days: int
    throttle_rate: int
    throttle_burst: int

    @classmethod
    def from_node(cls, node: Node) -> AppSettings:
        def get(key: str, default: Any) -> Any:
            value = node.try_get_context(key)
            return default if value is None else value

        return cls(
            regions=parse_regions(get(REGIONS_KEY, None)),
            functions=parse_functions(get(FUNCTIONS_KEY, {})),
            account=get("covenant:account", None),
            stage=str(get("covenant:stage", "prod")),
            log_retention_days=int(get("covenant:logRetentionDays", 30)),
            throttle_rate=int(get("covenant:apiThrottleRate", 200)),
            throttle_burst=int(get("covenant:apiThrottleBurst", 400)),
        )

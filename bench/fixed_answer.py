"""A Lambda handler that does no work: the same 20-project answer (about 4.5 KB, like the
project page of bench/gateway.py) for every event, so that what a request costs through the
gateway is the gateway's and the runtime's alone (`python -m bench.gateway overhead`)."""

from __future__ import annotations

import json
from typing import Any

_ANSWER = {
    "statusCode": 200,
    "headers": {"Content-Type": "application/graphql-response+json", "Cache-Control": "no-store"},
    "body": json.dumps(
        {
            "data": {
                "projects": {
                    "totalCount": 50,
                    "nodes": [
                        {
                            "id": f"6f1c2d1e-1234-4c1a-9a2b-{n:012d}",
                            "name": f"Project number {n} of the region",
                            "status": "ACTIVE",
                            "budgetUsd": 12_345_678,
                            "progress": 42,
                            "sector": {"name": "Agriculture"},
                            "country": {"name": "Netherlands"},
                        }
                        for n in range(20)
                    ],
                }
            }
        }
    ),
}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _ANSWER

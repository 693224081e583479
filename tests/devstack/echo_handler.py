"""A Lambda handler for the gateway's authorizer tests: answers with the event's
`requestContext.authorizer` (null when there is none) and records every call."""

from __future__ import annotations

import json
from typing import Any

CALLS: list[dict[str, Any]] = []


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    CALLS.append(event)
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(event["requestContext"].get("authorizer")),
    }

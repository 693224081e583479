"""A Lambda handler for the gateway's tests: answers with the event's
`requestContext.authorizer` (null when there is none) and the whole event it was given."""

from __future__ import annotations

import json
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(
            {"authorizer": event["requestContext"].get("authorizer"), "event": event}
        ),
    }

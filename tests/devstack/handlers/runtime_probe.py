"""Lambda handlers for the local runtime's tests, each doing one thing Lambda must contain."""

from __future__ import annotations

import json
import os
import time
from typing import Any

INVOCATIONS = 0  # module state: one count per execution environment
STARTED = time.time()


def _answer(body: Any, status: int = 200) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }


def state(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Counts its invocations in module state; answers who and where it is."""
    global INVOCATIONS
    INVOCATIONS += 1
    delay = float((event.get("queryStringParameters") or {}).get("sleep", "0"))
    time.sleep(delay)
    return _answer(
        {
            "pid": os.getpid(),
            "invocations": INVOCATIONS,
            "region": os.environ.get("COVENANT_REGION"),
            "function": context.function_name,
            "memory": context.memory_limit_in_mb,
            "remainingMs": context.get_remaining_time_in_millis(),
            "requestId": context.aws_request_id,
            "isBase64Encoded": event.get("isBase64Encoded"),
            "hasWriter": "DATABASE_URL" in os.environ,
            "primaryFunction": os.environ.get("COVENANT_PRIMARY_FUNCTION"),
            "lambdaEndpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
            "body": event.get("body"),
        }
    )


def sleeps(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(float((event.get("queryStringParameters") or {}).get("s", "60")))
    return _answer({"slept": True, "pid": os.getpid()})


def raises(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise ValueError("the handler failed on purpose")


def garbage(event: dict[str, Any], context: Any) -> Any:
    kind = (event.get("queryStringParameters") or {}).get("kind", "status")
    if kind == "status":
        return {"statusCode": "two hundred", "body": "x"}
    if kind == "body":
        return {"statusCode": 200, "body": {"not": "a string"}}
    if kind == "unserializable":
        return {"statusCode": 200, "body": object()}
    if kind == "bare":
        return {"bare": "value"}  # no statusCode: API Gateway infers a 200 JSON answer
    if kind == "exit":
        os._exit(3)
    raise AssertionError(kind)

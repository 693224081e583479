"""A Lambda handler behind the local WebSocket API, for its tests: it appends every event it
is given to the JSON-lines file WS_PROBE_LOG and acts on what a message says."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import boto3


def _log(event: dict[str, Any]) -> None:
    with open(os.environ["WS_PROBE_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(event) + "\n")


def _management() -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=os.environ["WEBSOCKET_MANAGEMENT_URL"],
        region_name=os.environ["AWS_REGION"],
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _log(event)
    route = event["requestContext"]["routeKey"]
    if route == "$connect":
        return _connect(event)
    if route == "$disconnect":
        return {"statusCode": 200}
    command, _, argument = event["body"].partition(":")
    connection = event["requestContext"]["connectionId"]
    if command == "id":
        return {"statusCode": 200, "body": connection}
    if command == "echo":  # the route response (two-way) carries it back
        return {"statusCode": 200, "body": argument}
    if command == "post":  # through @connections
        _management().post_to_connection(ConnectionId=connection, Data=argument.encode())
        return {"statusCode": 200}
    if command == "fail":
        raise RuntimeError("asked to fail")
    if command == "sleep":
        time.sleep(float(argument))
        return {"statusCode": 200, "body": "slept"}
    return {"statusCode": 200}


def _connect(event: dict[str, Any]) -> dict[str, Any]:
    query = event.get("queryStringParameters") or {}
    if "refuse" in query:
        return {"statusCode": int(query["refuse"]), "body": "refused"}
    if "fail" in query:
        raise RuntimeError("connect fails")
    time.sleep(float(query.get("sleep", "0")))
    offered = (event["headers"].get("Sec-WebSocket-Protocol") or "").split(",")
    if "graphql-transport-ws" in [p.strip() for p in offered]:
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "graphql-transport-ws"}}
    return {"statusCode": 200}


def health(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": json.dumps({"status": "healthy"})}

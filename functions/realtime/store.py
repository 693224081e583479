"""The regional store of WebSocket connections and their subscriptions: one DynamoDB table per
region (`covenant-realtime`), next to the region's API Gateway WebSocket API
(docs/realtime.md, "The store", says why these keys).

    connectionId (HASH)  item (RANGE)       what
    <connection id>      connection         state (open | ready), the actor, token expiry
    <connection id>      sub#<id>           the subscription: document, variables, what it
                                            listens to, `cursor` = last stream sequence delivered
    #shard/<n>           checkpoint         the last stream sequence the fan-out of shard n
                                            finished (every subscription examined)

    GSI byShard: shard (HASH) + member (RANGE, "<connection id>#<item>"), all attributes: the
    fan-out's one read, "every connection and subscription of my shard".

Every connection's items expire (`expiresAt`, DynamoDB TTL) two hours and ten minutes after
the connection opened: API Gateway closes every connection at two hours, so an item whose
`$disconnect` was lost never outlives its connection by much.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from covenant import aws
from covenant.config import env

DEFAULT_TABLE = "covenant-realtime"
INDEX = "byShard"
CONNECTION = "connection"
CHECKPOINT = "checkpoint"
MAX_CONNECTION_S = 2 * 3600  # API Gateway's maximum connection duration
EXPIRY_SLACK_S = 600


def table_name() -> str:
    return env("REALTIME_TABLE_NAME") or DEFAULT_TABLE


def client(aws_region: str | None = None) -> Any:
    """The table of `aws_region` (the fan-out serves other regions' tables), else the
    function's own region's."""
    region = aws_region or env("AWS_REGION") or "us-east-1"
    return aws.client("dynamodb", region, env("DYNAMODB_ENDPOINT_URL"))


def table_definition(name: str) -> dict[str, Any]:
    """create_table arguments (moto locally; stacks/realtime.py declares the same)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"}
            for a in ("connectionId", "item", "shard", "member")
        ],
        "KeySchema": [
            {"AttributeName": "connectionId", "KeyType": "HASH"},
            {"AttributeName": "item", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": INDEX,
                "KeySchema": [
                    {"AttributeName": "shard", "KeyType": "HASH"},
                    {"AttributeName": "member", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def ensure_table(dynamodb: Any, name: str | None = None) -> None:
    name = name or table_name()
    try:
        dynamodb.create_table(**table_definition(name))
    except dynamodb.exceptions.ResourceInUseException:
        return
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiresAt"}
    )


def subscription_item(subscription_id: str) -> str:
    return f"sub#{subscription_id}"


@dataclass(frozen=True)
class Connection:
    connection_id: str
    state: str  # open: waiting for connection_init; ready: acknowledged
    connected_at_ms: int
    shard: str
    actor: dict[str, Any] | None  # the verified token's claims we keep (auth.actor_record)
    token_expires_at: int | None  # the token's `exp`: the session ends then


@dataclass(frozen=True)
class Subscription:
    connection_id: str
    subscription_id: str
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    subscribed: str  # graphql_api.subscriptions.Subscribed, as JSON
    since: int | None
    cursor: int | None  # the last stream sequence examined for it (None: not started yet)
    created_at_ms: int
    # Served up to the shard's checkpoint whenever the cursor is older (it had nothing to be
    # posted since); False while it is behind the stream (catching up from `since`).
    caught_up: bool = False


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _connection(item: dict[str, Any]) -> Connection:
    actor = item.get("actor", {}).get("S")
    expires = item.get("tokenExpiresAt", {}).get("N")
    return Connection(
        connection_id=item["connectionId"]["S"],
        state=item["state"]["S"],
        connected_at_ms=int(item["connectedAt"]["N"]),
        shard=item["shard"]["S"],
        actor=json.loads(actor) if actor else None,
        token_expires_at=int(expires) if expires else None,
    )


def _subscription(item: dict[str, Any]) -> Subscription:
    variables = item.get("variables", {}).get("S")
    since = item.get("since", {}).get("N")
    cursor = item.get("cursor", {}).get("N")
    return Subscription(
        connection_id=item["connectionId"]["S"],
        subscription_id=item["item"]["S"].removeprefix("sub#"),
        query=item["query"]["S"],
        variables=json.loads(variables) if variables else None,
        operation_name=item.get("operationName", {}).get("S"),
        subscribed=item["subscribed"]["S"],
        since=int(since) if since else None,
        cursor=int(cursor) if cursor else None,
        created_at_ms=int(item["createdAt"]["N"]),
        caught_up=bool(item.get("caughtUp", {}).get("BOOL", False)),
    )


class Store:
    def __init__(self, dynamodb: Any, name: str | None = None) -> None:
        self.dynamodb = dynamodb
        self.name = name or table_name()

    # -- the handler's side -------------------------------------------------------------

    def open_connection(self, connection_id: str, connected_at_ms: int, shard: str) -> None:
        self.dynamodb.put_item(
            TableName=self.name,
            Item={
                "connectionId": _s(connection_id),
                "item": _s(CONNECTION),
                "state": _s("open"),
                "inits": _n(0),
                "connectedAt": _n(connected_at_ms),
                "shard": _s(shard),
                "member": _s(f"{connection_id}#{CONNECTION}"),
                "expiresAt": _n(self._expiry(connected_at_ms)),
            },
        )

    @staticmethod
    def _expiry(connected_at_ms: int) -> int:
        return connected_at_ms // 1000 + MAX_CONNECTION_S + EXPIRY_SLACK_S

    def connection(self, connection_id: str) -> Connection | None:
        found = self.dynamodb.get_item(
            TableName=self.name,
            Key={"connectionId": _s(connection_id), "item": _s(CONNECTION)},
            ConsistentRead=True,
        ).get("Item")
        return _connection(found) if found else None

    def count_init(self, connection_id: str) -> bool:
        """Counts a connection_init; False when it is not the connection's first (or the
        connection is gone)."""
        try:
            self.dynamodb.update_item(
                TableName=self.name,
                Key={"connectionId": _s(connection_id), "item": _s(CONNECTION)},
                UpdateExpression="SET inits = inits + :one",
                ConditionExpression="attribute_exists(connectionId) AND inits = :zero",
                ExpressionAttributeValues={":one": _n(1), ":zero": _n(0)},
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def acknowledge(
        self, connection_id: str, actor: dict[str, Any] | None, token_expires_at: int | None
    ) -> bool:
        values: dict[str, Any] = {":ready": _s("ready"), ":actor": _s(json.dumps(actor))}
        update = "SET #state = :ready, actor = :actor"
        if token_expires_at is not None:
            update += ", tokenExpiresAt = :exp"
            values[":exp"] = _n(token_expires_at)
        try:
            self.dynamodb.update_item(
                TableName=self.name,
                Key={"connectionId": _s(connection_id), "item": _s(CONNECTION)},
                UpdateExpression=update,
                ConditionExpression="attribute_exists(connectionId)",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=values,
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def add_subscription(self, connection: Connection, subscription: Subscription) -> bool:
        """False when the connection already has a subscription of that id."""
        item: dict[str, Any] = {
            "connectionId": _s(connection.connection_id),
            "item": _s(subscription_item(subscription.subscription_id)),
            "query": _s(subscription.query),
            "subscribed": _s(subscription.subscribed),
            "createdAt": _n(subscription.created_at_ms),
            "shard": _s(connection.shard),
            "member": _s(
                f"{connection.connection_id}#{subscription_item(subscription.subscription_id)}"
            ),
            "expiresAt": _n(self._expiry(connection.connected_at_ms)),
        }
        if subscription.variables:
            item["variables"] = _s(json.dumps(subscription.variables))
        if subscription.operation_name:
            item["operationName"] = _s(subscription.operation_name)
        if subscription.since is not None:
            item["since"] = _n(subscription.since)
        try:
            self.dynamodb.put_item(
                TableName=self.name,
                Item=item,
                ConditionExpression="attribute_not_exists(connectionId)",
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def remove_subscription(self, connection_id: str, subscription_id: str) -> None:
        self.dynamodb.delete_item(
            TableName=self.name,
            Key={"connectionId": _s(connection_id), "item": _s(subscription_item(subscription_id))},
        )

    def forget_connection(self, connection_id: str) -> int:
        """Deletes the connection and its subscriptions; how many items went."""
        keys: list[dict[str, Any]] = []
        for page in self.dynamodb.get_paginator("query").paginate(
            TableName=self.name,
            KeyConditionExpression="connectionId = :c",
            ExpressionAttributeValues={":c": _s(connection_id)},
            ProjectionExpression="connectionId, #item",
            ExpressionAttributeNames={"#item": "item"},
            ConsistentRead=True,
        ):
            keys.extend(page["Items"])
        for start in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            pending: dict[str, Any] = {self.name: requests}
            while pending:
                pending = self.dynamodb.batch_write_item(RequestItems=pending).get(
                    "UnprocessedItems", {}
                )
        return len(keys)

    # -- the fan-out's side -------------------------------------------------------------

    def members(self, shard: str) -> tuple[dict[str, Connection], list[Subscription]]:
        """Every connection and subscription of the shard (the index: eventually consistent,
        so one written a moment ago may show up at the next read)."""
        connections: dict[str, Connection] = {}
        subscriptions: list[Subscription] = []
        for page in self.dynamodb.get_paginator("query").paginate(
            TableName=self.name,
            IndexName=INDEX,
            KeyConditionExpression="shard = :s",
            ExpressionAttributeValues={":s": _s(shard)},
        ):
            for item in page["Items"]:
                if item["item"]["S"] == CONNECTION:
                    connection = _connection(item)
                    connections[connection.connection_id] = connection
                else:
                    subscriptions.append(_subscription(item))
        subscriptions.sort(key=lambda s: (s.connection_id, s.created_at_ms, s.subscription_id))
        return connections, subscriptions

    def advance(self, subscription: Subscription, cursor: int, caught_up: bool) -> bool:
        """Records that the subscription has been served up to `cursor` (a stream
        sequence); never moves it back. False when it is gone (completed, disconnected)."""
        try:
            self.dynamodb.update_item(
                TableName=self.name,
                Key={
                    "connectionId": _s(subscription.connection_id),
                    "item": _s(subscription_item(subscription.subscription_id)),
                },
                UpdateExpression="SET #cursor = :seq, caughtUp = :caught_up",
                ConditionExpression=(
                    "attribute_exists(connectionId) AND "
                    "(attribute_not_exists(#cursor) OR #cursor <= :seq)"
                ),
                ExpressionAttributeNames={"#cursor": "cursor"},
                ExpressionAttributeValues={":seq": _n(cursor), ":caught_up": {"BOOL": caught_up}},
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def checkpoint(self, shard: str) -> int:
        found = self.dynamodb.get_item(
            TableName=self.name,
            Key={"connectionId": _s(f"#shard/{shard}"), "item": _s(CHECKPOINT)},
            ConsistentRead=True,
        ).get("Item")
        return int(found["seq"]["N"]) if found else 0

    def save_checkpoint(self, shard: str, seq: int) -> None:
        try:
            self.dynamodb.put_item(
                TableName=self.name,
                Item={
                    "connectionId": _s(f"#shard/{shard}"),
                    "item": _s(CHECKPOINT),
                    "seq": _n(seq),
                    "at": _n(int(time.time())),
                },
                ConditionExpression="attribute_not_exists(seq) OR seq < :seq",
                ExpressionAttributeValues={":seq": _n(seq)},
            )
        except self.dynamodb.exceptions.ConditionalCheckFailedException:
            return

    def all_items(self) -> Iterator[dict[str, Any]]:
        """Every item (tests and `make dev` inspection)."""
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.name):
            yield from page["Items"]

"""The regional store of WebSocket connections and their subscriptions: one DynamoDB table per
region (`covenant-realtime`), next to the region's API Gateway WebSocket API
(docs/realtime.md, "The store", says why these keys).

    connectionId (HASH)  item (RANGE)       what
    <connection id>      connection         state (open | ready), the actor, token expiry
    <connection id>      sub#<id>           the subscription: document, variables, what it
                                            listens to
    <connection id>      cur#<id>           its cursor: the last stream sequence served to it
                                            (written by the fan-out, `of` = the subscription's
                                            createdAt, so a reused id never inherits it)
    #shard/<n>           checkpoint         the last stream sequence the fan-out of shard n
                                            finished (every subscription examined)
    #shard/<n>           members            `version`, bumped by every subscribe, complete and
                                            disconnect: the fan-out rereads the index only
                                            when it moved

    GSI byShard: shard (HASH) + member (RANGE, "<connection id>#<item>"), all attributes: the
    fan-out's one read, "every connection and subscription of my shard".

Every connection's items expire (`expiresAt`, DynamoDB TTL) two hours and ten minutes after
the connection opened: API Gateway closes every connection at two hours, so an item whose
`$disconnect` was lost never outlives its connection by much.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from covenant import aws
from covenant.config import env, env_int

DEFAULT_TABLE = "covenant-realtime"
INDEX = "byShard"
CONNECTION = "connection"
CHECKPOINT = "checkpoint"
MEMBERS = "members"
BATCH_WRITE_MAX = 25  # DynamoDB's BatchWriteItem limit
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


def shard_of(connection_id: str) -> str:
    """The fan-out shard serving a connection (REALTIME_SHARDS, default 1: docs/deploy.md)."""
    shards = max(1, env_int("REALTIME_SHARDS", 1))
    return str(zlib.crc32(connection_id.encode()) % shards)


def subscription_item(subscription_id: str) -> str:
    return f"sub#{subscription_id}"


def cursor_item(subscription_id: str) -> str:
    return f"cur#{subscription_id}"


def _shard_key(shard: str) -> dict[str, str]:
    return _s(f"#shard/{shard}")


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


@dataclass(frozen=True)
class Cursor:
    """What the fan-out records after serving a subscription: served up to `seq`."""

    subscription: Subscription
    connection: Connection
    seq: int
    caught_up: bool


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
    return Subscription(
        connection_id=item["connectionId"]["S"],
        subscription_id=item["item"]["S"].removeprefix("sub#"),
        query=item["query"]["S"],
        variables=json.loads(variables) if variables else None,
        operation_name=item.get("operationName", {}).get("S"),
        subscribed=item["subscribed"]["S"],
        since=int(since) if since else None,
        cursor=None,
        created_at_ms=int(item["createdAt"]["N"]),
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
                "expiresAt": _n(self.expiry(connected_at_ms)),
            },
        )

    @staticmethod
    def expiry(connected_at_ms: int) -> int:
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
            "expiresAt": _n(self.expiry(connection.connected_at_ms)),
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
        self._members_changed(connection.shard)
        return True

    def remove_subscription(self, connection_id: str, subscription_id: str) -> None:
        self._delete(
            [
                {"connectionId": _s(connection_id), "item": _s(item)}
                for item in (subscription_item(subscription_id), cursor_item(subscription_id))
            ]
        )
        self._members_changed(shard_of(connection_id))

    def _members_changed(self, shard: str) -> None:
        self.dynamodb.update_item(
            TableName=self.name,
            Key={"connectionId": _shard_key(shard), "item": _s(MEMBERS)},
            UpdateExpression="ADD version :one",
            ExpressionAttributeValues={":one": _n(1)},
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
        self._delete(keys)
        if keys:
            self._members_changed(shard_of(connection_id))
        return len(keys)

    def _delete(self, keys: Sequence[dict[str, Any]]) -> None:
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys])

    def _batch_write(self, requests: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(requests), BATCH_WRITE_MAX):
            pending: dict[str, Any] = {self.name: list(requests[start : start + BATCH_WRITE_MAX])}
            while pending:
                pending = self.dynamodb.batch_write_item(RequestItems=pending).get(
                    "UnprocessedItems", {}
                )

    # -- the fan-out's side -------------------------------------------------------------

    def members(self, shard: str) -> tuple[dict[str, Connection], list[Subscription]]:
        """Every connection and subscription of the shard (the index: eventually consistent,
        so one written a moment ago may show up at the next read)."""
        connections: dict[str, Connection] = {}
        subscriptions: list[Subscription] = []
        cursors: dict[tuple[str, str], tuple[int, int, bool]] = {}  # (conn, id) -> of, seq, ..
        for page in self.dynamodb.get_paginator("query").paginate(
            TableName=self.name,
            IndexName=INDEX,
            KeyConditionExpression="shard = :s",
            ExpressionAttributeValues={":s": _s(shard)},
        ):
            for item in page["Items"]:
                kind = item["item"]["S"]
                if kind == CONNECTION:
                    connection = _connection(item)
                    connections[connection.connection_id] = connection
                elif kind.startswith("cur#"):
                    key = (item["connectionId"]["S"], kind.removeprefix("cur#"))
                    cursors[key] = (
                        int(item["of"]["N"]),
                        int(item["cursor"]["N"]),
                        item["caughtUp"]["BOOL"],
                    )
                elif kind.startswith("sub#"):
                    subscriptions.append(_subscription(item))
        for n, sub in enumerate(subscriptions):
            key = (sub.connection_id, sub.subscription_id)
            of, seq, caught_up = cursors.get(key, (0, 0, False))
            if of == sub.created_at_ms:  # else a cursor left by an earlier subscription's id
                subscriptions[n] = replace(sub, cursor=seq, caught_up=caught_up)
        subscriptions.sort(key=lambda s: (s.connection_id, s.created_at_ms, s.subscription_id))
        return connections, subscriptions

    def members_version(self, shard: str) -> int:
        """Moves whenever a subscription of the shard is added or removed (consistent read:
        one small item instead of the index)."""
        found = self.dynamodb.get_item(
            TableName=self.name,
            Key={"connectionId": _shard_key(shard), "item": _s(MEMBERS)},
            ConsistentRead=True,
        ).get("Item")
        return int(found["version"]["N"]) if found else 0

    def save_cursors(self, cursors: Sequence[Cursor]) -> None:
        """Records where each subscription was served up to, 25 to a request. Unconditional
        puts of items of their own (BatchWriteItem takes no condition): the fan-out never
        moves a cursor back (one run per shard at a time, docs/realtime.md), a cursor of a
        subscription removed meanwhile expires with its connection or goes with it, and one
        left under a reused subscription id is not the new one's (`of`)."""
        self._batch_write(
            [
                {
                    "PutRequest": {
                        "Item": {
                            "connectionId": _s(c.subscription.connection_id),
                            "item": _s(cursor_item(c.subscription.subscription_id)),
                            "of": _n(c.subscription.created_at_ms),
                            "cursor": _n(c.seq),
                            "caughtUp": {"BOOL": c.caught_up},
                            "shard": _s(c.connection.shard),
                            "member": _s(
                                f"{c.subscription.connection_id}#"
                                f"{cursor_item(c.subscription.subscription_id)}"
                            ),
                            "expiresAt": _n(self.expiry(c.connection.connected_at_ms)),
                        }
                    }
                }
                for c in cursors
            ]
        )

    def checkpoint(self, shard: str) -> int:
        found = self.dynamodb.get_item(
            TableName=self.name,
            Key={"connectionId": _shard_key(shard), "item": _s(CHECKPOINT)},
            ConsistentRead=True,
        ).get("Item")
        return int(found["seq"]["N"]) if found else 0

    def save_checkpoint(self, shard: str, seq: int) -> None:
        try:
            self.dynamodb.put_item(
                TableName=self.name,
                Item={
                    "connectionId": _shard_key(shard),
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

"""The graphql-transport-ws protocol (the `graphql-ws` library's, github.com/enisdenjo/graphql-ws
PROTOCOL.md) on API Gateway's WebSocket routes: one message per `$default` invocation, every
answer posted through `@connections`, the connection's state in the regional store.

API Gateway cannot close a connection with the protocol's close codes (4400, 4401, ...): the
`@connections` DELETE closes with 1000. `Close` records the code and reason the protocol asks
for in the log and the `ClosedConnections` metric, then deletes the connection
(docs/realtime.md, "Close codes").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from covenant import db
from covenant.config import settings
from covenant.regions import load_regions
from covenant.revocation import is_revoked
from graphql_api import engine, subscriptions
from graphql_api.api import GraphQLSettings
from graphql_api.auth import ANONYMOUS, Actor, InvalidToken, actor_from_claims, verify
from graphql_api.context import RequestContext
from graphql_api.errors import ApiError
from graphql_api.schema import executable_schema
from realtime.management import Connections
from realtime.store import Store, Subscription, shard_of

logger = logging.getLogger(__name__)

SUBPROTOCOL = "graphql-transport-ws"
MAX_ID_LENGTH = 128


@dataclass(frozen=True)
class Close(Exception):
    """End the connection; the code and reason are what graphql-transport-ws prescribes."""

    code: int
    reason: str


def offered_subprotocols(headers: Mapping[str, Any] | None) -> list[str]:
    for name, value in (headers or {}).items():
        if str(name).lower() == "sec-websocket-protocol":
            return [part.strip() for part in str(value).split(",") if part.strip()]
    return []


def connect(store: Store, context: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """$connect: accept only the subprotocol this API speaks."""
    if SUBPROTOCOL not in offered_subprotocols(headers):
        return False
    connection_id = str(context["connectionId"])
    connected_at = int(context.get("connectedAt") or time.time() * 1000)
    store.open_connection(connection_id, connected_at, shard_of(connection_id))
    return True


def actor_record(actor: Actor) -> dict[str, Any] | None:
    if not actor.authenticated:
        return None
    return {
        "sub": actor.sub,
        "username": actor.username,
        "email": actor.email,
        "groups": sorted(actor.groups),
        "iat": actor.issued_at,
    }


def actor_of(record: Mapping[str, Any] | None) -> Actor:
    if not record:
        return ANONYMOUS
    return Actor(
        sub=record.get("sub"),
        username=record.get("username"),
        email=record.get("email"),
        groups=frozenset(record.get("groups") or ()),
        issued_at=record.get("iat"),
    )


def session_ended(actor: Actor) -> bool:
    """Signed out everywhere or role changed since the token was issued (covenant.revocation),
    asked of the local reader as the HTTP API asks."""
    if not actor.authenticated:
        return False
    with db.reader().session() as session:
        return is_revoked(session, actor)


class Conversation:
    """One `$default` message of one connection."""

    def __init__(self, store: Store, connections: Connections, connection_id: str) -> None:
        self.store = store
        self.connections = connections
        self.connection_id = connection_id

    def send(self, message: dict[str, Any]) -> None:
        if not self.connections.send(self.connection_id, message):
            self.store.forget_connection(self.connection_id)  # gone (410): clean up

    def close(self, close: Close) -> None:
        logger.info(
            "closing connection",
            extra={"connectionId": self.connection_id, "code": close.code, "reason": close.reason},
        )
        self.connections.close(self.connection_id)
        self.store.forget_connection(self.connection_id)

    def receive(self, body: str | None, request_id: str) -> None:
        try:
            message = _parse(body)
            kind = message["type"]
            if kind == "connection_init":
                self._init(message.get("payload"))
            elif kind == "ping":
                self.send({"type": "pong"})
            elif kind == "pong":
                pass
            elif kind == "subscribe":
                self._subscribe(message, request_id)
            elif kind == "complete":
                self.store.remove_subscription(self.connection_id, _id(message))
            else:
                raise Close(4400, f"Unexpected message type {kind!r}")
        except Close as close:
            self.close(close)

    def _init(self, payload: Any) -> None:
        if payload is not None and not isinstance(payload, dict):
            raise Close(4400, "connection_init payload must be an object")
        if not self.store.count_init(self.connection_id):
            raise Close(4429, "Too many initialisation requests")
        authorization = next(
            (v for k, v in (payload or {}).items() if str(k).lower() == "authorization"), None
        )
        actor, expires = ANONYMOUS, None
        if authorization is not None:
            try:
                claims = verify(str(authorization))
            except InvalidToken as refused:
                logger.info("token refused: %s", refused)
                raise Close(4403, "Forbidden") from None
            actor = actor_from_claims(claims)
            expires = int(claims["exp"]) if str(claims.get("exp", "")).isdigit() else None
            if session_ended(actor):
                raise Close(4403, "Forbidden")
        if not self.store.acknowledge(self.connection_id, actor_record(actor), expires):
            raise Close(4500, "The connection is not known")
        self.send({"type": "connection_ack"})

    def _subscribe(self, message: dict[str, Any], request_id: str) -> None:
        subscription_id = _id(message)
        connection = self.store.connection(self.connection_id)
        if connection is None or connection.state != "ready":
            raise Close(4401, "Unauthorized")
        if connection.token_expires_at is not None and connection.token_expires_at < time.time():
            raise Close(4403, "Forbidden")
        payload = message.get("payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise Close(4400, "subscribe payload must hold a query")
        variables = payload.get("variables")
        operation_name = payload.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            raise Close(4400, "variables must be an object")
        if operation_name is not None and not isinstance(operation_name, str):
            raise Close(4400, "operationName must be a string")
        limits = GraphQLSettings.load().limits
        actor = actor_of(connection.actor)
        try:
            subscribed = subscriptions.subscribe(
                payload["query"], variables, operation_name, limits, load_regions()
            )
        except (engine.RequestErrors, ApiError) as refused:
            self.send(
                {
                    "id": subscription_id,
                    "type": "error",
                    "payload": subscriptions.error_payload(refused),
                }
            )
            return
        except subscriptions.NotASubscription as other:
            self._single_result(subscription_id, other.prepared, actor, request_id)
            return
        added = self.store.add_subscription(
            connection,
            Subscription(
                connection_id=self.connection_id,
                subscription_id=subscription_id,
                query=payload["query"],
                variables=variables,
                operation_name=operation_name,
                subscribed=subscribed.as_json(),
                since=subscribed.since,
                cursor=None,
                created_at_ms=int(time.time() * 1000),
            ),
        )
        if not added:
            raise Close(4409, f"Subscriber for {subscription_id} already exists")

    def _single_result(
        self, subscription_id: str, prepared: engine.Prepared, actor: Actor, request_id: str
    ) -> None:
        """A query over the socket: one `next` and `complete`, as graphql-ws clients expect.
        Mutations go over HTTP (their hand-off, idempotency and position live there)."""
        if prepared.is_mutation:
            refusal = engine.RequestErrors(
                [
                    {
                        "message": "Mutations are served over HTTP at this path, not over "
                        "WebSocket: POST them.",
                        "extensions": {"code": "BAD_USER_INPUT"},
                    }
                ]
            )
            self.send(
                {
                    "id": subscription_id,
                    "type": "error",
                    "payload": subscriptions.error_payload(refusal),
                }
            )
            return
        context = RequestContext(
            actor=actor, region=settings().region, request_id=request_id, regions=load_regions()
        )
        result = engine.run(executable_schema(), prepared, context, request_id)
        self.send({"id": subscription_id, "type": "next", "payload": result})
        self.send({"id": subscription_id, "type": "complete"})


def _parse(body: str | None) -> dict[str, Any]:
    try:
        message = json.loads(body or "")
    except ValueError:
        raise Close(4400, "Invalid message received") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise Close(4400, "Invalid message received")
    return message


def _id(message: Mapping[str, Any]) -> str:
    value = message.get("id")
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise Close(4400, f"id must be a string of 1 to {MAX_ID_LENGTH} characters")
    return value

"""The region's `@connections` API (API Gateway's management API of the WebSocket API), as
boto3's `apigatewaymanagementapi` client calls it, at WEBSOCKET_MANAGEMENT_URL."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from covenant import aws
from covenant.config import env

logger = logging.getLogger(__name__)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ManagementError(RuntimeError):
    """The `@connections` API refused a call for another reason than a gone connection
    (throttled, too large, unavailable): the caller decides whether to try again."""


class Connections:
    def __init__(self, url: str | None = None, region: str | None = None) -> None:
        self.url = url or env("WEBSOCKET_MANAGEMENT_URL")
        if not self.url:
            raise ManagementError("WEBSOCKET_MANAGEMENT_URL is not set")
        host = urlsplit(self.url).hostname or ""
        self.client: Any = aws.client(
            "apigatewaymanagementapi",
            region or env("AWS_REGION") or "us-east-1",
            self.url,
            local=host in _LOCAL_HOSTS,
        )

    def send(self, connection_id: str, message: dict[str, Any]) -> bool:
        """Posts one protocol message; False when the connection is gone (410)."""
        data = json.dumps(message, separators=(",", ":"), default=str).encode()
        try:
            self.client.post_to_connection(ConnectionId=connection_id, Data=data)
        except ClientError as error:
            if _code(error) == "GoneException":
                return False
            raise ManagementError(f"post_to_connection: {_code(error)}") from error
        return True

    def close(self, connection_id: str) -> None:
        """Closes the connection (API Gateway sends close code 1000: no custom code can be
        given, docs/realtime.md "Close codes"); a connection already gone is fine."""
        try:
            self.client.delete_connection(ConnectionId=connection_id)
        except ClientError as error:
            if _code(error) != "GoneException":
                raise ManagementError(f"delete_connection: {_code(error)}") from error


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))

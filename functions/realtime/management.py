"""The region's `@connections` API (API Gateway's management API of the WebSocket API), as
boto3's `apigatewaymanagementapi` client calls it, at WEBSOCKET_MANAGEMENT_URL."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from covenant import aws
from covenant.config import env, settings
from covenant.regions import Region

logger = logging.getLogger(__name__)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ManagementError(RuntimeError):
    """The `@connections` API refused a call for another reason than a gone connection
    (throttled, too large, unavailable): the caller decides whether to try again."""


def management_url(region: Region) -> str:
    """The `@connections` base URL of a region's WebSocket API: WEBSOCKET_MANAGEMENT_URLS (a
    JSON object by region code: the fan-out, which serves every region), else
    WEBSOCKET_MANAGEMENT_URL for the function's own region, else (locally)
    WEBSOCKET_MANAGEMENT_BASE_URL/<region>."""
    by_region = json.loads(env("WEBSOCKET_MANAGEMENT_URLS") or "{}")
    if region.code in by_region:
        return str(by_region[region.code])
    own = env("WEBSOCKET_MANAGEMENT_URL")
    if own and region.code == settings().region:
        return own
    base = env("WEBSOCKET_MANAGEMENT_BASE_URL")
    if base:
        return f"{base.rstrip('/')}/{region.code}"
    raise ManagementError(f"no @connections URL for region {region.code}")


class Connections:
    def __init__(self, region: Region, url: str | None = None) -> None:
        self.url = url or management_url(region)
        host = urlsplit(self.url).hostname or ""
        self.client: Any = aws.client(
            "apigatewaymanagementapi", region.aws_region, self.url, local=host in _LOCAL_HOSTS
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

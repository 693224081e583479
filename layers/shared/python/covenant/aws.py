"""boto3 clients of the functions: made on first use (never at init, so no SnapStart snapshot
holds one), one per service, region and endpoint, reused across warm invocations, with short
timeouts (a Lambda must fail fast rather than hang on AWS) and a local endpoint (moto) always
given dummy credentials, never the developer's own."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

from covenant.config import env
from covenant.regions import primary_region

_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}

_clients: dict[tuple[str, str, str | None], Any] = {}
_lock = threading.Lock()


def client(
    service: str, region: str, endpoint_url: str | None = None, *, local: bool | None = None
) -> Any:
    """`local` (default: whether an endpoint is given) signs with the dummy credentials; an
    AWS endpoint given explicitly (API Gateway's `@connections` URL) passes `local=False`."""
    local = endpoint_url is not None if local is None else local
    key = (service, region, endpoint_url)
    with _lock:
        if key not in _clients:
            _clients[key] = boto3.client(
                service,
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    connect_timeout=3,
                    read_timeout=5,
                    max_pool_connections=32,  # the fan-out posts side by side (16 by default)
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
                **(_LOCAL_CREDENTIALS if local else {}),
            )
        return _clients[key]


def user_pool_region(user_pool_id: str) -> str:
    """Where a Cognito pool is called: its id starts with its region ("us-east-1_AbC123");
    else COGNITO_REGION, AWS_DEFAULT_REGION, the primary region."""
    region = user_pool_id.partition("_")[0] if "_" in user_pool_id else ""
    return (
        region or env("COGNITO_REGION") or env("AWS_DEFAULT_REGION") or primary_region().aws_region
    )


def forget_clients() -> None:
    """Drops every cached client (tests: a client made outside a moto mock would not reach
    it)."""
    with _lock:
        _clients.clear()

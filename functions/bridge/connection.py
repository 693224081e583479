"""The NATS connection: opened on first use, kept across warm invocations on the function's
own event loop, replaced when it is closed or cannot reconnect. Credentials and TLS settings
come from Secrets Manager through Powertools Parameters (cached), never from code or logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
from typing import Any

import nats
from aws_lambda_powertools.utilities import parameters
from nats.aio.client import Client
from nats.js import JetStreamContext

from covenant.config import env

logger = logging.getLogger(__name__)

SECRET_MAX_AGE_S = 300
_loop: asyncio.AbstractEventLoop | None = None
_client: Client | None = None
_client_key: tuple[str, str | None] | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One loop for the life of the execution environment: the connection lives on it."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def connection_options() -> dict[str, Any]:
    """nats.connect() options from the environment and, in AWS, the NATS secret: a JSON object
    with any of url, user, password, token, creds (a .creds file's text), tls_ca (PEM)."""
    options: dict[str, Any] = {"servers": [env("NATS_URL") or "nats://127.0.0.1:4222"]}
    secret_name = env("NATS_SECRET_ARN")
    if not secret_name:
        return options
    secret: dict[str, Any] = parameters.get_secret(
        secret_name, transform="json", max_age=SECRET_MAX_AGE_S
    )
    if secret.get("url"):
        options["servers"] = [secret["url"]]
    for field in ("user", "password", "token"):
        if secret.get(field):
            options[field] = secret[field]
    if secret.get("creds"):
        with tempfile.NamedTemporaryFile("w", suffix=".creds", delete=False) as handle:
            handle.write(secret["creds"])
        options["user_credentials"] = handle.name
    if secret.get("tls_ca"):
        options["tls"] = ssl.create_default_context(cadata=secret["tls_ca"])
    return options


async def jetstream() -> JetStreamContext:
    global _client, _client_key
    options = connection_options()
    key = (options["servers"][0], env("NATS_SECRET_ARN"))
    if _client is not None and (_client.is_closed or _client_key != key):
        await _close(_client)
        _client = None
    if _client is None:
        _client = await nats.connect(
            **options,
            name=env("AWS_LAMBDA_FUNCTION_NAME") or "covenant-bridge",
            connect_timeout=float(env("NATS_CONNECT_TIMEOUT_S") or 3),
            allow_reconnect=True,
            max_reconnect_attempts=3,
            reconnect_time_wait=0.5,
            error_cb=_log_error,
        )
        _client_key = key
        logger.info(
            "connected to NATS at %s",
            _client.connected_url.netloc if _client.connected_url else "?",
        )
    return _client.jetstream(publish_async_max_pending=20_000)


async def max_payload() -> int:
    await jetstream()
    assert _client is not None
    return int(_client.max_payload)


async def reset() -> None:
    """Drops the connection (after a failure, or before a SnapStart snapshot)."""
    global _client
    if _client is not None:
        await _close(_client)
        _client = None


async def _close(client: Client) -> None:
    # A broken connection may fail to close; it is dropped either way.
    with contextlib.suppress(Exception):
        await client.close()


async def _log_error(error: Exception) -> None:
    logger.warning("NATS connection: %s", error)

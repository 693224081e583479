"""The NATS connection: opened on first use, kept across warm invocations on the function's
own event loop, checked with a PING at the start of every invocation and replaced when it is
closed, reconnecting, silent, or opened with settings that have changed since (a rotated
secret). Credentials and TLS settings come from Secrets Manager through Powertools Parameters
(cached), never from code or logs. The relay publishes through bridge.publisher."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities import parameters
from nats.aio.client import Client

from bridge.publisher import JetStreamPublisher, NotConnected
from covenant import streams
from covenant.config import env

logger = logging.getLogger(__name__)

SECRET_MAX_AGE_S = 300

_loop: asyncio.AbstractEventLoop | None = None
_client: Client | None = None
_publisher: JetStreamPublisher | None = None
_client_key: str | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One loop for the life of the execution environment: the connection lives on it."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def _connect_timeout_s() -> float:
    return float(env("NATS_CONNECT_TIMEOUT_S") or 3)


def connection_options() -> tuple[dict[str, Any], str]:
    """nats.connect() options from the environment and, in AWS, the NATS secret (a JSON object
    with any of url: one server or a comma-separated list, user, password, token, creds: a
    .creds file's text, tls_ca: PEM, and tls_hostname: the name the server's certificate carries
    when the URL's host is another, e.g. the load balancer's), and a fingerprint of those
    settings: a connection opened with others is replaced. With tls_ca the server must present a
    certificate chaining to it and naming the host (or tls_hostname): verified, never merely
    encrypted."""
    # One server, or the servers of a cluster separated by commas: nats-py connects to any
    # live one and reconnects to another when it goes away.
    options: dict[str, Any] = {
        "servers": streams.server_urls(env("NATS_URL") or streams.DEFAULT_URL),
        **streams.environment_tls(),  # in AWS: the CA cert-manager issued the servers' from
    }
    secret_name = env("NATS_SECRET_ARN")
    secret: dict[str, Any] = {}
    if secret_name:
        secret = parameters.get_secret(secret_name, transform="json", max_age=SECRET_MAX_AGE_S)
    if secret.get("url"):
        options["servers"] = streams.server_urls(secret["url"])
    for field in ("user", "password", "token"):
        if secret.get(field):
            options[field] = secret[field]
    if secret.get("creds"):
        options["user_credentials"] = _creds_file(secret["creds"])
    if secret.get("tls_ca"):
        options.update(streams.verified_tls(secret["tls_ca"], secret.get("tls_hostname")))
    material = json.dumps(
        [options["servers"], secret_name, secret, env("NATS_TLS_CA_BASE64")],
        sort_keys=True,
        default=str,
    )
    return options, hashlib.sha256(material.encode("utf-8")).hexdigest()


def _creds_file(creds: str) -> str:
    """The .creds text as a file (nats-py reads credentials from a path): one file per
    content, written once, readable by this process only."""
    digest = hashlib.sha256(creds.encode("utf-8")).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"covenant-nats-{digest}.creds"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(creds)
    return str(path)


async def publisher() -> JetStreamPublisher:
    """The publisher of a live connection: the warm one if it answers a PING within the
    connect timeout, else a new one. Raises if NATS cannot be reached."""
    global _client, _publisher, _client_key
    options, key = connection_options()
    if _client is not None and _publisher is not None:
        if _client_key == key and await _answers(_client):
            return _publisher
        await reset()
    client = Client()
    publisher = JetStreamPublisher(client)
    # nats-py types these timeouts as int; it takes fractions of a second.
    timings: dict[str, Any] = {
        "connect_timeout": _connect_timeout_s(),
        # A connection that drops mid-pass fails that pass's unacknowledged publishes at once
        # (JetStreamPublisher); a quick reconnect serves the next pass, else the next
        # invocation opens a new connection.
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 0.25,
    }
    # nats-py can wait forever after a failed TLS handshake (a certificate that does not
    # verify): every attempt it would make, and a second to spare, bounds the whole connect.
    attempts = (timings["max_reconnect_attempts"] + 1) * len(options["servers"])
    budget_s = attempts * (timings["connect_timeout"] + timings["reconnect_time_wait"]) + 1
    connecting = client.connect(
        **options,
        **timings,
        name=env("AWS_LAMBDA_FUNCTION_NAME") or "covenant-bridge",
        # Subjects come from the outbox, whose CHECK constraint admits only valid ones, and
        # replies from the publisher's own inbox: checking both per publish (two regular
        # expressions) costs about a tenth of the client's time per event.
        skip_subject_validation=True,
        # Its NATS user may subscribe under this prefix only (stacks/events.py).
        inbox_prefix=streams.BRIDGE_INBOX_PREFIX,
        allow_reconnect=True,
        error_cb=_log_error,
        disconnected_cb=publisher.connection_lost,
    )
    try:
        await asyncio.wait_for(connecting, budget_s)
    except TimeoutError:
        await _close(client)
        raise ConnectionError(
            f"no NATS server completed a connection within {budget_s:g} s (see the "
            "connection's warnings: a refused certificate, an unreachable server)"
        ) from None
    try:
        await publisher.start()
    except BaseException:
        await _close(client)
        raise
    _client, _publisher, _client_key = client, publisher, key
    url = client.connected_url
    if url is not None:  # its host and port only: a URL may carry a user and password
        logger.info("connected to NATS at %s:%s", url.hostname, url.port)
    return publisher


async def _answers(client: Client) -> bool:
    """Whether a warm connection is usable: connected, and the server answers a PING. A
    connection can look connected after the execution environment was frozen while the
    server went away; without this, the first pass would wait out its ack timeout."""
    if not client.is_connected:
        logger.info(
            "warm NATS connection is not connected (status %s); reconnecting", _status(client)
        )
        return False
    # nats-py's flush() returns at once, without a PING, when its read or flush loop has
    # ended: such a connection would look alive and leave every publish unacknowledged.
    loops = (getattr(client, "_reading_task", None), getattr(client, "_flusher_task", None))
    if any(task is None or task.done() for task in loops):
        logger.info("warm NATS connection lost its read or flush loop; reconnecting")
        return False
    try:
        await client.flush(timeout=max(1, math.ceil(_connect_timeout_s())))
    except Exception as exc:
        logger.warning(
            "warm NATS connection does not answer (%s); reconnecting", type(exc).__name__
        )
        return False
    return True


def _status(client: Client) -> str:
    if client.is_closed:
        return "closed"
    if client.is_reconnecting:
        return "reconnecting"
    return "disconnected"


async def reset() -> None:
    """Drops the connection (after a failure, or before a SnapStart snapshot)."""
    global _client, _publisher, _client_key
    client, publisher = _client, _publisher
    _client, _publisher, _client_key = None, None, None
    if publisher is not None:
        publisher.fail_pending(NotConnected("connection to NATS closed"))
    if client is not None:
        await _close(client)


def shutdown() -> None:
    """Closes the connection and its event loop: the end of a local process (`make dev`,
    tests). A Lambda execution environment simply ends instead."""
    global _loop
    loop = _loop
    if loop is None or loop.is_closed():
        return
    loop.run_until_complete(reset())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    _loop = None


async def _close(client: Client) -> None:
    # A broken connection may fail to close, or never finish closing; it is dropped either way.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), _connect_timeout_s())


async def _log_error(error: Exception) -> None:
    logger.warning("NATS connection: %s", error)

"""The one configuration loader. Every setting comes from the (Lambda) environment.

The local gateway serves six regions from one process; it runs each invocation inside
`environment(...)`, an overlay scoped to the invocation's context, so every region sees the
environment its deployed Lambda would have. Deployed functions never use the overlay.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from covenant.regions import primary_region

_overlay: ContextVar[Mapping[str, str] | None] = ContextVar("covenant_env_overlay", default=None)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/covenant"


def env(name: str, default: str | None = None) -> str | None:
    overlay = _overlay.get()
    if overlay is not None and name in overlay:
        return overlay[name]
    return os.environ.get(name, default)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    token = _overlay.set(dict(values))
    try:
        yield
    finally:
        _overlay.reset(token)


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


def _int(name: str, default: int) -> int:
    raw = env(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def env_int(name: str, default: int) -> int:
    """An integer setting: `default` when unset or empty, ConfigError when malformed."""
    return _int(name, default)


# A client gone silent inside a transaction (a Lambda stopped at its timeout) frees its locks
# after this; no transaction of ours idles between statements for anywhere near as long.
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Settings:
    region: str
    stage: str
    database_url: str = field(repr=False)  # may hold a password
    database_reader_url: str = field(repr=False)
    statement_timeout_ms: int
    connect_timeout_s: int
    idle_in_transaction_timeout_ms: int
    health_latency_budget_ms: int
    health_max_replica_lag_s: int
    nats_url: str


def settings() -> Settings:
    database_url = env("DATABASE_URL") or DEFAULT_DATABASE_URL
    return Settings(
        region=env("COVENANT_REGION") or primary_region().code,
        stage=env("COVENANT_STAGE") or "local",
        database_url=database_url,
        database_reader_url=env("DATABASE_READER_URL") or database_url,
        statement_timeout_ms=_int("DB_STATEMENT_TIMEOUT_MS", 5000),
        connect_timeout_s=_int("DB_CONNECT_TIMEOUT_S", 3),
        idle_in_transaction_timeout_ms=_int(
            "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS
        ),
        health_latency_budget_ms=_int("HEALTH_LATENCY_BUDGET_MS", 250),
        health_max_replica_lag_s=_int("HEALTH_MAX_REPLICA_LAG_S", 5),
        nats_url=env("NATS_URL") or "nats://127.0.0.1:4222",
    )

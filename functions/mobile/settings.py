"""The mobile function's settings, read from its (Lambda) environment through covenant.config."""

from __future__ import annotations

from dataclasses import dataclass

from covenant import aws
from covenant.config import ConfigError, env, env_int


@dataclass(frozen=True)
class CognitoSettings:
    user_pool_id: str
    client_id: str
    region: str
    endpoint_url: str | None  # moto, locally; unset in AWS

    @classmethod
    def load(cls) -> CognitoSettings:
        pool = env("COGNITO_USER_POOL_ID") or ""
        client = env("COGNITO_CLIENT_ID") or ""
        if not pool or not client:
            raise ConfigError("COGNITO_USER_POOL_ID and COGNITO_CLIENT_ID must be set")
        return cls(
            user_pool_id=pool,
            client_id=client,
            region=aws.user_pool_region(pool),
            endpoint_url=env("COGNITO_ENDPOINT_URL") or None,
        )


@dataclass(frozen=True)
class ThrottleSettings:
    window_s: int
    max_failures_per_account: int
    max_failures_per_address: int
    max_registrations_per_address: int  # successful ones included

    @classmethod
    def load(cls) -> ThrottleSettings:
        return cls(
            window_s=env_int("AUTH_FAILURE_WINDOW_S", 900),
            max_failures_per_account=env_int("AUTH_MAX_FAILURES_PER_ACCOUNT", 5),
            max_failures_per_address=env_int("AUTH_MAX_FAILURES_PER_ADDRESS", 30),
            max_registrations_per_address=env_int("AUTH_MAX_REGISTRATIONS_PER_ADDRESS", 10),
        )


@dataclass(frozen=True)
class SyncSettings:
    tombstone_retention_s: int
    max_push_records: int
    max_push_bytes: int
    push_receipt_ttl_s: int
    max_response_bytes: int  # uncompressed; Lambda's response limit is 6 MB

    @classmethod
    def load(cls) -> SyncSettings:
        return cls(
            tombstone_retention_s=env_int("SYNC_TOMBSTONE_RETENTION_S", 30 * 24 * 3600),
            max_push_records=env_int("SYNC_MAX_PUSH_RECORDS", 1000),
            max_push_bytes=env_int("SYNC_MAX_PUSH_BYTES", 2 * 1024 * 1024),
            push_receipt_ttl_s=env_int("SYNC_PUSH_RECEIPT_TTL_S", 24 * 3600),
            max_response_bytes=env_int("SYNC_MAX_RESPONSE_BYTES", 5_500_000),
        )

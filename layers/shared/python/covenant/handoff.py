"""The hop: a secondary region hands a request that writes, whole, to the primary region's
same function, through one synchronous Lambda Invoke (RequestResponse), and answers with the
primary's answer.

One round trip per request instead of one per SQL statement (Aurora write forwarding), none of
write forwarding's limits (user-defined functions, advisory locks that would serialise nothing
across regions), and a managed failover is a configuration change: which region is primary
comes from the region table (covenant.regions), the function to call from
COVENANT_PRIMARY_FUNCTION (the primary's alias ARN in AWS, `covenant-iad-<function>` locally).
docs/deploy.md ("Writes from secondary regions") has the reasoning and the figures.

The forwarded event carries `requestContext.covenant = {"handedOffFrom": <region>}`: API
Gateway builds `requestContext`, so no client can set it, and only principals allowed to
invoke the primary's function (the secondaries' function roles) can send one. The primary
never forwards a marked event again.

botocore never retries an invoke (a retried invoke could apply a write twice when the request
has no idempotency key): every failure becomes a `HopFailed` that says whether the request
may have been applied.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from covenant.config import ConfigError, env, env_int, settings
from covenant.regions import primary_region

logger = logging.getLogger(__name__)

MARK = "covenant"
FUNCTION_ENV = "COVENANT_PRIMARY_FUNCTION"
RETRY_AFTER_THROTTLED_S = 1
RETRY_AFTER_UNAVAILABLE_S = 2
# Lambda's own answers that mean the function never ran: nothing was applied.
_NOT_RUN = (
    "ResourceNotFoundException",
    "ResourceConflictException",
    "ResourceNotReadyException",
    "AccessDeniedException",
    "InvalidParameterValueException",
    "InvalidRequestContentException",
    "UnsupportedMediaTypeException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "EC2ThrottledException",
    "EC2UnexpectedException",
    "EC2AccessDeniedException",
    "ENILimitReachedException",
    "SubnetIPAddressLimitReachedException",
    "InvalidSubnetIDException",
    "InvalidSecurityGroupIDException",
    "InvalidZipFileException",
    "InvalidRuntimeException",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "EFSMountConnectivityException",
    "EFSMountFailureException",
    "EFSMountTimeoutException",
    "EFSIOException",
    "SnapStartException",
    "SnapStartNotReadyException",
    "SnapStartTimeoutException",
)


@dataclass
class HopFailed(Exception):
    """The primary's answer did not come back. `may_have_applied`: the request reached the
    primary's function (or may have), so its write may have committed; otherwise it certainly
    did not run. `status` is the HTTP status to answer with."""

    kind: str  # throttled | unreachable | timeout | function_error | too_large | not_configured
    detail: str  # for the log; never shown to the client
    may_have_applied: bool
    status: int = 503
    retry_after_s: int | None = RETRY_AFTER_UNAVAILABLE_S

    def __str__(self) -> str:
        return f"hop to the primary failed ({self.kind}): {self.detail}"


class PrimaryMoved(Exception):
    """A handed-off event reached a function that is not (any more) in the primary region: the
    region table changed under a failover. Never forwarded again (no loops)."""


class PrimaryRequired(Exception):
    """Raised by a read path that needs the primary's data in a secondary (e.g. a sync pull
    ahead of the replica): the caller hands the whole request off."""


def is_primary() -> bool:
    return settings().region == primary_region().code


def handed_off_from(event: dict[str, Any]) -> str | None:
    """The region that handed this event off, or None for a request straight from API
    Gateway."""
    mark = (event.get("requestContext") or {}).get(MARK)
    if isinstance(mark, dict) and isinstance(mark.get("handedOffFrom"), str):
        return str(mark["handedOffFrom"])
    return None


def must_hand_off(event: dict[str, Any]) -> bool:
    """True in a secondary region (for a request that writes, or reads the primary); False in
    the primary. A handed-off event that reaches a secondary raises PrimaryMoved."""
    if is_primary():
        return False
    origin = handed_off_from(event)
    if origin is not None:
        raise PrimaryMoved(
            f"{settings().region} received a request handed off from {origin}, but the region "
            f"table names {primary_region().code} as primary"
        )
    return True


def forwarded(event: dict[str, Any], reason: str) -> dict[str, Any]:
    """The event as the primary receives it: unchanged but for the mark."""
    context = dict(event.get("requestContext") or {})
    context[MARK] = {"handedOffFrom": settings().region, "reason": reason}
    return {**event, "requestContext": context}


def hand_off(event: dict[str, Any], reason: str) -> dict[str, Any]:
    """Invokes the primary region's function with `event` and returns its proxy response
    (payload format 2.0), or raises HopFailed."""
    function = env(FUNCTION_ENV)
    if not function:
        raise HopFailed(
            "not_configured",
            f"{FUNCTION_ENV} is not set in the secondary region {settings().region}",
            may_have_applied=False,
        )
    payload = json.dumps(forwarded(event, reason), separators=(",", ":")).encode("utf-8")
    started = time.perf_counter()
    try:
        answer = _invoke(function, payload)
    finally:
        logger.info(
            "hop %s -> %s (%s): %.1f ms",
            settings().region,
            primary_region().code,
            reason,
            (time.perf_counter() - started) * 1000,
        )
    return answer


def _invoke(function: str, payload: bytes) -> dict[str, Any]:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        response = lambda_client().invoke(
            FunctionName=function, InvocationType="RequestResponse", Payload=payload
        )
        raw = response["Payload"].read()
    except ClientError as exc:
        raise _client_error(exc) from exc
    except (ConnectTimeoutError, EndpointConnectionError) as exc:
        # No connection was made: the request never left this region.
        raise HopFailed("unreachable", str(exc), may_have_applied=False) from exc
    except ReadTimeoutError as exc:
        raise HopFailed("timeout", str(exc), may_have_applied=True) from exc
    except NoCredentialsError as exc:
        raise HopFailed("not_configured", str(exc), may_have_applied=False) from exc
    except BotoCoreError as exc:  # the connection closed after the request was sent, ...
        raise HopFailed("unreachable", str(exc), may_have_applied=True) from exc
    if response.get("FunctionError"):
        raise HopFailed("function_error", _error_type(raw), may_have_applied=True)
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("statusCode"), int):
        raise HopFailed("function_error", "not a proxy response", may_have_applied=True)
    return answer


def _error_type(raw: bytes) -> str:
    """The errorType of a function error (its message may quote data: not logged)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return "unreadable error payload"
    return str(body.get("errorType", "unknown")) if isinstance(body, dict) else "unknown"


def _client_error(exc: Any) -> HopFailed:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code == "TooManyRequestsException" or status == 429:
        return HopFailed(
            "throttled",
            f"{code}: {error.get('Message', '')}",
            may_have_applied=False,
            retry_after_s=RETRY_AFTER_THROTTLED_S,
        )
    if code == "RequestTooLargeException" or status == 413:
        return HopFailed("too_large", code, may_have_applied=False, status=413, retry_after_s=None)
    if code in _NOT_RUN:
        return HopFailed("unreachable", code, may_have_applied=False)
    # ServiceException and anything unknown: Lambda may have run the function.
    return HopFailed("unreachable", f"{code or status}", may_have_applied=True)


_clients: dict[tuple[str, str | None, int, int], Any] = {}
_lock = threading.Lock()


def lambda_client() -> Any:
    """One Lambda client per execution environment (its connection kept alive across warm
    invocations), in the primary's AWS region. The endpoint is boto3's own: AWS's, or
    AWS_ENDPOINT_URL_LAMBDA locally. No retries: a retried invoke could write twice."""
    region = primary_region().aws_region
    connect_s = env_int("COVENANT_HANDOFF_CONNECT_TIMEOUT_S", 2)
    read_s = env_int("COVENANT_HANDOFF_READ_TIMEOUT_S", 12)
    if connect_s <= 0 or read_s <= 0:
        raise ConfigError("COVENANT_HANDOFF_*_TIMEOUT_S must be positive")
    # The endpoint is only part of the cache key (tests move it); boto3 reads it itself.
    key = (region, os.environ.get("AWS_ENDPOINT_URL_LAMBDA"), connect_s, read_s)
    with _lock:
        if key not in _clients:
            import boto3  # the primary never pays for it
            from botocore.config import Config

            _clients[key] = boto3.client(
                "lambda",
                region_name=region,
                config=Config(
                    connect_timeout=connect_s,
                    read_timeout=read_s,
                    retries={"total_max_attempts": 1},
                    tcp_keepalive=True,
                ),
            )
        return _clients[key]

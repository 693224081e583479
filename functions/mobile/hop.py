"""Which mobile requests a secondary region hands to the primary region's mobile function
(covenant.handoff), and the answers when the hop fails.

Every route that writes goes whole, before anything runs here: the sync push (its receipt, the
projects, the outbox), the devices and follows of push notifications (their SNS endpoints live
in the primary region too), register (the throttle and Cognito's new user), logout (the sign-out
record), and login and refresh, because each attempt writes to the failure throttle before
Cognito is asked (`auth_failures`, shared by every region). Cognito lives in the primary
region, so the hop costs those three nothing: the call to Cognito crosses the same distance
either way. Reads stay here: health, /auth/me, and the sync pull, except a pull whose cursor
or Covenant-Min-Position the region's replica has not reached (mobile.handler).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from covenant import handoff
from covenant.config import settings
from covenant.handoff import HopFailed
from mobile.http import ApiError, request_body

logger = logging.getLogger(__name__)

# route key -> what a retry after "may have been applied" does
WRITE_ROUTES: dict[str, str] = {
    "POST /sync": (
        "Sending the same push again is safe: an applied push is answered from its receipt."
    ),
    "POST /auth/register": (
        "Sending it again is safe: a 409 then means the account was created, so sign in."
    ),
    "POST /auth/logout": "Sending it again is safe.",
    "POST /auth/login": "Sending it again is safe.",
    "POST /auth/refresh": "Sending it again is safe.",
    "POST /devices": "Sending it again is safe: the same token is the same device.",
    "DELETE /devices/{id}": "Sending it again is safe: a 404 then means it was removed.",
    "PUT /follows": "Sending it again is safe: the list replaces the one before.",
}


def route_key(event: dict[str, Any]) -> str:
    """`METHOD /path`, the region's stage prefix stripped (as the resolver matches routes)."""
    context = event.get("requestContext") or {}
    method = str((context.get("http") or {}).get("method") or "").upper()
    path = str(event.get("rawPath") or (context.get("http") or {}).get("path") or "")
    stage = str(context.get("stage") or "")
    if stage and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1 :]
    return f"{method} {path.rstrip('/') or '/'}"


_TEMPLATES = {
    re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))): template
    for template in WRITE_ROUTES
    if "{" in template
}


def write_route(key: str) -> str:
    """The WRITE_ROUTES template a route key matches ("DELETE /devices/{id}"), else the key."""
    if key in WRITE_ROUTES:
        return key
    return next((t for pattern, t in _TEMPLATES.items() if pattern.fullmatch(key)), key)


def dispatch_first(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer for a request this region must not run itself (a write, in a secondary: the
    primary's answer), or None to run it here."""
    origin = handoff.handed_off_from(event)
    if origin is not None and not handoff.is_primary():
        return primary_moved(event)
    key = write_route(route_key(event))
    if key in WRITE_ROUTES and handoff.must_hand_off(event) and _readable(event):
        return relay(event, key)
    return None


def _readable(event: dict[str, Any]) -> bool:
    """A body that is not UTF-8 text is refused here (400, by the route's own check) rather
    than sent across the ocean to be refused there."""
    try:
        request_body(event)
    except ApiError:
        return False
    return True


def relay(event: dict[str, Any], reason: str) -> dict[str, Any]:
    """The primary's answer to `event`, or the answer that says how the hop failed."""
    try:
        return handoff.hand_off(event, reason)
    except HopFailed as failure:
        logger.warning("%s", failure)
        return failed(event, failure, WRITE_ROUTES.get(reason))


def failed(event: dict[str, Any], failure: HopFailed, retry_rule: str | None) -> dict[str, Any]:
    request_id = str((event.get("requestContext") or {}).get("requestId") or "unknown")
    if failure.kind == "primary_moved":
        message = "The primary region is changing: nothing was applied. Retry shortly."
    elif failure.kind == "throttled":
        message = (
            f"The primary region is busy: nothing was applied. Retry in {failure.retry_after_s} s."
        )
    elif failure.status == 413:
        message = "The request is too large to hand to the primary region: nothing was applied."
    elif failure.may_have_applied and retry_rule is not None:
        message = f"The primary region did not answer: this may have been applied. {retry_rule}"
    elif failure.may_have_applied:
        message = "The primary region did not answer; retry shortly."
    else:
        message = "The primary region cannot be reached: nothing was applied. Retry shortly."
    body = {
        "code": "PAYLOAD_TOO_LARGE" if failure.status == 413 else "SERVICE_UNAVAILABLE",
        "message": message,
        "mayHaveBeenApplied": failure.may_have_applied and retry_rule is not None,
        "requestId": request_id,
    }
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    if failure.retry_after_s:
        headers["Retry-After"] = str(failure.retry_after_s)
    return {
        "statusCode": failure.status,
        "headers": headers,
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def primary_moved(event: dict[str, Any]) -> dict[str, Any]:
    """A handed-off request reached a region that is no longer primary (a failover changed the
    region table in between): nothing ran; the client's retry finds the new primary."""
    logger.warning("handed-off request reached %s, which is not the primary", settings().region)
    return failed(
        event,
        HopFailed("primary_moved", "not the primary", may_have_applied=False),
        None,
    )

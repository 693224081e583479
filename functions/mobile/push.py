"""The push notification routes' work (covenant.notifications): a user's devices
(`POST /devices`, `DELETE /devices/{id}`) and what they follow (`GET`, `PUT /follows`).
Writes run in the primary region (a secondary hands them off, mobile.hop), where the SNS
platform applications are; each is one transaction, so a refused request writes nothing."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from covenant import notifications
from covenant.db import reader, writer
from covenant.identity import Caller
from covenant.notifications import Follows
from mobile.http import BadRequest, Conflict, NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)

# APNs tokens are 64 hex digits, FCM registration tokens about 160 characters of
# [A-Za-z0-9_:-]; both well inside this.
_TOKEN = re.compile(r"^[A-Za-z0-9_:.\-]{8,4096}$")
_COUNTRY = re.compile(r"^[A-Z]{3}$")


def _only(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"Unknown field {unknown[0]!r}: send only {', '.join(allowed)}.", field=unknown[0]
        )


def register_device(caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    _only(body, ("platform", "token"))
    platform = body.get("platform")
    if platform not in notifications.PLATFORMS:
        raise BadRequest(
            f"'platform' must be one of {', '.join(notifications.PLATFORMS)}.", field="platform"
        )
    token = body.get("token")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise BadRequest(
            "'token' must be the device token APNs or FCM gave the app (8 to 4096 letters, "
            "digits, '_', ':', '.', '-').",
            field="token",
        )
    client = notifications.sns()
    try:
        arn = notifications.create_endpoint(client, platform, token, caller.sub)
    except notifications.PushNotConfigured:
        raise ServiceUnavailable(
            f"Push notifications through {platform} are not configured in this deployment.",
            retry_after_s=3600,
        ) from None
    except client.exceptions.InvalidParameterException:
        raise BadRequest(f"{platform} does not accept this token.", field="token") from None
    with writer().session() as session, notifications.transaction(session):
        try:
            device = notifications.register_device(session, caller.sub, platform, token, arn)
        except notifications.TooManyDevices:
            raise Conflict(
                f"You have {notifications.MAX_DEVICES_PER_USER} devices registered: remove one "
                "(DELETE /devices/{id}) first.",
                limit=notifications.MAX_DEVICES_PER_USER,
            ) from None
    return device.body()


def remove_device(caller: Caller, device_id: str) -> dict[str, Any]:
    try:
        canonical = str(uuid.UUID(device_id))
    except ValueError:
        raise BadRequest(
            "The device id must be the id POST /devices returned.", field="id"
        ) from None
    with writer().session() as session, notifications.transaction(session):
        arn = notifications.remove_device(session, caller.sub, canonical)
    if arn is None:
        raise NotFound("You have no device with this id.", field="id")
    try:
        notifications.delete_endpoint(notifications.sns(), arn)
    except Exception:  # the device is gone; its endpoint is no longer pushed to
        logger.warning("could not delete the SNS endpoint of a removed device", exc_info=True)
    return {"id": canonical, "removed": True}


def follows(caller: Caller) -> dict[str, Any]:
    with reader().session() as session:
        return notifications.follows_of(session, caller.sub).body()


def _list(body: Mapping[str, Any], field: str, limit: int) -> list[Any]:
    value = body.get(field)
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a list (send [] for none).", field=field)
    if len(value) > limit:
        raise BadRequest(f"'{field}' may hold at most {limit} entries.", field=field, limit=limit)
    return list(dict.fromkeys(value))


def replace_follows(caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    _only(body, ("projects", "countries"))
    projects: list[str] = []
    for value in _list(body, "projects", notifications.MAX_FOLLOWED_PROJECTS):
        try:
            projects.append(str(uuid.UUID(value)))
        except (TypeError, ValueError, AttributeError):
            raise BadRequest(
                f"'projects' holds {value!r}, which is no project id.", field="projects"
            ) from None
    countries = _list(body, "countries", notifications.MAX_FOLLOWED_COUNTRIES)
    for value in countries:
        if not isinstance(value, str) or not _COUNTRY.match(value):
            raise BadRequest(
                f"'countries' holds {value!r}: countries are ISO 3166 alpha-3 codes ('KEN').",
                field="countries",
            )
    wanted = Follows(sorted(set(projects)), sorted(set(countries)))
    with writer().session() as session, notifications.transaction(session):
        unknown_projects, unknown_countries = notifications.unknown_targets(
            session, wanted.projects, wanted.countries
        )
        if unknown_projects:
            raise BadRequest(
                "No such project: " + ", ".join(unknown_projects),
                field="projects",
                unknown=unknown_projects,
            )
        if unknown_countries:
            raise BadRequest(
                "No such country: " + ", ".join(unknown_countries),
                field="countries",
                unknown=unknown_countries,
            )
        notifications.replace_follows(session, caller.sub, wanted)
    return wanted.body()

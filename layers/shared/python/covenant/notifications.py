"""Push notifications (migration 0012): what users follow, their devices, and the two
consumers between a change and a phone.

    COVENANT ──MOBILE_PUSH──► one `notifications.push` message per follower and change
                              (NOTIFICATIONS, Nats-Msg-Id = uuid5(change event id, user))
    NOTIFICATIONS ──NOTIFIER──► SNS mobile push to each of the user's devices (APNs / FCM)

- Following: a user follows projects (by id) and countries (alpha-3); a change to a followed
  project, or to any project in a followed country, and a change of a followed country itself,
  notifies them. The mobile API lists and replaces the set (`GET`/`PUT /follows`).
- Devices: `POST /devices` creates the SNS platform endpoint of the token (on the platform
  application of APNs or FCM) and records it; `DELETE /devices/{id}` removes both. A token
  registered by another user moves to the one who registered it last.
- Idempotent both ways: MOBILE_PUSH's notification ids are derived from the change's event
  id, so a redelivered change is dropped by the NOTIFICATIONS stream's duplicate window; the
  NOTIFIER records every (notification, device) it pushed to (`push_deliveries`) and pushes a
  redelivered notification only to the devices it had not reached.
- Pruning: SNS disables an endpoint when APNs or FCM reports its token invalid; a push to it
  answers EndpointDisabled, and the NOTIFIER deletes the device and its endpoint.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from covenant import aws
from covenant.config import env
from covenant.db import Session
from covenant.events import CloudEvent
from covenant.regions import primary_region

PLATFORMS = ("apns", "fcm")
APPLICATION_ENV = {"apns": "PUSH_APNS_APPLICATION_ARN", "fcm": "PUSH_FCM_APPLICATION_ARN"}
MAX_DEVICES_PER_USER = 10
MAX_FOLLOWED_PROJECTS = 200
MAX_FOLLOWED_COUNTRIES = 50
NOTIFICATION_TYPE = "notifications.push"
DELIVERIES_KEPT_DAYS = 8  # the NOTIFICATIONS stream keeps a message 7 days
_NAMESPACE = uuid.UUID("5f0c3f1e-6a51-4d2b-9d7e-2c1b7c4e8a10")


class PushNotConfigured(RuntimeError):
    """No platform application for the platform in this deployment."""


def sns() -> Any:
    """SNS in the primary region (the platform applications live there), or moto."""
    return aws.client("sns", primary_region().aws_region, env("SNS_ENDPOINT_URL"))


def application_arn(platform: str) -> str:
    arn = env(APPLICATION_ENV[platform])
    if not arn:
        raise PushNotConfigured(platform)
    return arn


@contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """BEGIN ... COMMIT around a block; ROLLBACK when it raises."""
    session.run("BEGIN")
    try:
        yield session
        session.run("COMMIT")
    except BaseException:
        session.run("ROLLBACK")
        raise


# -- follows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Follows:
    projects: list[str]
    countries: list[str]

    def body(self) -> dict[str, Any]:
        return {"projects": self.projects, "countries": self.countries}


def follows_of(session: Session, user_sub: str) -> Follows:
    rows = session.run(
        "SELECT kind, target FROM follows WHERE user_sub = :sub ORDER BY kind, target",
        sub=user_sub,
    )
    return Follows(
        projects=[t for k, t in rows if k == "project"],
        countries=[t for k, t in rows if k == "country"],
    )


def unknown_targets(
    session: Session, projects: Sequence[str], countries: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The projects and countries of the lists that do not exist."""
    found_projects = {
        row[0]
        for row in session.run(
            "SELECT id::text FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=list(projects)
        )
    }
    found_countries = {
        row[0]
        for row in session.run(
            "SELECT code FROM countries WHERE code = ANY(CAST(:codes AS text[]))",
            codes=list(countries),
        )
    }
    return (
        [p for p in projects if p not in found_projects],
        [c for c in countries if c not in found_countries],
    )


def replace_follows(session: Session, user_sub: str, follows: Follows) -> None:
    """The user's follows become `follows` (inside the caller's transaction)."""
    session.run("DELETE FROM follows WHERE user_sub = :sub", sub=user_sub)
    kinds = ["project"] * len(follows.projects) + ["country"] * len(follows.countries)
    session.run(
        "INSERT INTO follows (user_sub, kind, target) "
        "SELECT :sub, k, t "
        "FROM unnest(CAST(:kinds AS text[]), CAST(:targets AS text[])) AS f(k, t)",
        sub=user_sub,
        kinds=kinds,
        targets=[*follows.projects, *follows.countries],
    )


def forget_projects(session: Session, project_ids: Sequence[str]) -> None:
    """Nobody follows the (deleted) projects any more."""
    session.run(
        "DELETE FROM follows WHERE kind = 'project' AND target = ANY(CAST(:ids AS text[]))",
        ids=list(project_ids),
    )


# -- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    id: str
    platform: str
    created_at: str

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "platform": self.platform, "createdAt": self.created_at}


class TooManyDevices(RuntimeError):
    pass


def create_endpoint(client: Any, platform: str, token: str, user_sub: str) -> str:
    """The token's SNS platform endpoint (CreatePlatformEndpoint returns the existing one for
    the same token), enabled: a token registered again is valid again."""
    arn = str(
        client.create_platform_endpoint(
            PlatformApplicationArn=application_arn(platform),
            Token=token,
            CustomUserData=user_sub,
        )["EndpointArn"]
    )
    client.set_endpoint_attributes(
        EndpointArn=arn, Attributes={"Enabled": "true", "CustomUserData": user_sub}
    )
    return arn


def register_device(
    session: Session, user_sub: str, platform: str, token: str, endpoint_arn: str
) -> Device:
    """Records the device for the user (inside the caller's transaction): the same token again
    is the same device; a token another user had moves to this one."""
    count = session.scalar(
        "SELECT count(*) FROM push_devices WHERE user_sub = :sub "
        "AND NOT (platform = :platform AND token = :token)",
        sub=user_sub,
        platform=platform,
        token=token,
    )
    if int(count or 0) >= MAX_DEVICES_PER_USER:
        raise TooManyDevices
    row = session.one(
        "INSERT INTO push_devices (id, user_sub, platform, token, endpoint_arn) "
        "VALUES (CAST(:id AS uuid), :sub, :platform, :token, :arn) "
        "ON CONFLICT (platform, token) DO UPDATE SET user_sub = EXCLUDED.user_sub, "
        "endpoint_arn = EXCLUDED.endpoint_arn "
        "RETURNING id::text, platform, created_at",
        id=str(uuid.uuid4()),
        sub=user_sub,
        platform=platform,
        token=token,
        arn=endpoint_arn,
    )
    assert row is not None
    return Device(row["id"], row["platform"], row["created_at"].isoformat())


def remove_device(session: Session, user_sub: str, device_id: str) -> str | None:
    """Deletes the user's device; its endpoint ARN, or None when the user has no such device."""
    return session.scalar(  # type: ignore[no-any-return]
        "DELETE FROM push_devices WHERE id = CAST(:id AS uuid) AND user_sub = :sub "
        "RETURNING endpoint_arn",
        id=device_id,
        sub=user_sub,
    )


def delete_endpoint(client: Any, endpoint_arn: str) -> None:
    client.delete_endpoint(EndpointArn=endpoint_arn)


# -- MOBILE_PUSH: changes -> notifications ----------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A change users may follow: a project's (with its country) or a country's."""

    event_id: str
    type: str
    project_id: str | None
    country_code: str | None
    title: str
    body: str


def change_of(event_id: str, envelope: Mapping[str, Any]) -> Change | None:
    kind = str(envelope.get("type") or "")
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(data, dict)
    _, _, action = kind.rpartition(".")
    if kind.startswith("covenant.projects.") and isinstance(data.get("project"), dict):
        project = data["project"]
        name = str(project.get("name") or "A project")
        return Change(
            event_id,
            kind,
            str(project.get("id") or "") or None,
            str(project.get("countryCode") or "") or None,
            f"{name} {action}",
            f"Status {project.get('status', '?')}, progress {project.get('progress', '?')}%",
        )
    if kind.startswith("covenant.countries.") and isinstance(data.get("country"), dict):
        country = data["country"]
        name = str(country.get("name") or country.get("code") or "A country")
        return Change(
            event_id,
            kind,
            None,
            str(country.get("code") or "") or None,
            f"{name} {action}",
            f"Covenant status {country.get('covenantStatus', '?')}",
        )
    return None


def followers(session: Session, changes: Sequence[Change]) -> dict[str, set[str]]:
    """change event id -> the users who follow its project or its country."""
    projects = sorted({c.project_id for c in changes if c.project_id})
    countries = sorted({c.country_code for c in changes if c.country_code})
    rows = session.run(
        "SELECT kind, target, user_sub FROM follows "
        "WHERE (kind = 'project' AND target = ANY(CAST(:projects AS text[]))) "
        "OR (kind = 'country' AND target = ANY(CAST(:countries AS text[])))",
        projects=projects,
        countries=countries,
    )
    by_target: dict[tuple[str, str], set[str]] = {}
    for kind, target, sub in rows:
        by_target.setdefault((kind, target), set()).add(sub)
    found: dict[str, set[str]] = {}
    for change in changes:
        users = set(by_target.get(("project", change.project_id or ""), set()))
        users |= by_target.get(("country", change.country_code or ""), set())
        if users:
            found[change.event_id] = users
    return found


def notification_id(change_event_id: str, user_sub: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{change_event_id}/{user_sub}"))


def notifications(
    changes: Sequence[Change], audience: Mapping[str, Iterable[str]], source: str
) -> list[CloudEvent]:
    """One notification per change and follower, its id derived from both."""
    made: list[CloudEvent] = []
    for change in changes:
        for user_sub in sorted(audience.get(change.event_id, ())):
            made.append(
                CloudEvent(
                    type=NOTIFICATION_TYPE,
                    source=source,
                    subject=f"users/{user_sub}",
                    id=notification_id(change.event_id, user_sub),
                    data={
                        "userSub": user_sub,
                        "title": change.title,
                        "body": change.body,
                        "projectId": change.project_id,
                        "countryCode": change.country_code,
                        "changeEventId": change.event_id,
                        "changeType": change.type,
                    },
                )
            )
    return made


# -- NOTIFIER: notifications -> devices -------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    id: str
    user_sub: str
    title: str
    body: str
    data: Mapping[str, Any]


def notification_of(event_id: str, envelope: Mapping[str, Any]) -> Notification | None:
    data = envelope.get("data")
    if envelope.get("type") != NOTIFICATION_TYPE or not isinstance(data, dict):
        return None
    if not isinstance(data.get("userSub"), str) or not data["userSub"]:
        return None
    return Notification(
        event_id,
        data["userSub"],
        str(data.get("title") or ""),
        str(data.get("body") or ""),
        {k: data.get(k) for k in ("projectId", "countryCode", "changeType") if data.get(k)},
    )


def push_message(notification: Notification) -> str:
    """SNS's per-platform JSON message (MessageStructure=json): APNs and FCM payloads."""
    custom = {"notificationId": notification.id, **notification.data}
    apns = json.dumps(
        {"aps": {"alert": {"title": notification.title, "body": notification.body}}, **custom}
    )
    fcm = json.dumps(
        {
            "notification": {"title": notification.title, "body": notification.body},
            "data": {k: str(v) for k, v in custom.items()},
        }
    )
    return json.dumps(
        {"default": notification.body, "APNS": apns, "APNS_SANDBOX": apns, "GCM": fcm}
    )


@dataclass
class DeliveryResult:
    pushed: int = 0
    already: int = 0  # pushed by an earlier delivery of the same notification
    pruned: list[str] | None = None  # device ids whose token is no longer valid
    without_device: int = 0  # notifications of users with no device


def devices_of(session: Session, users: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """user -> [(device id, endpoint ARN)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for device_id, sub, arn in session.run(
        "SELECT id::text, user_sub, endpoint_arn FROM push_devices "
        "WHERE user_sub = ANY(CAST(:subs AS text[])) ORDER BY created_at",
        subs=list(users),
    ):
        found.setdefault(sub, []).append((device_id, arn))
    return found


def delivered(session: Session, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    if not pairs:
        return set()
    rows = session.run(
        "SELECT d.notification_id::text, d.device_id::text FROM push_deliveries d "
        "JOIN unnest(CAST(:n AS uuid[]), CAST(:d AS uuid[])) AS p(n, d) "
        "ON d.notification_id = p.n AND d.device_id = p.d",
        n=[p[0] for p in pairs],
        d=[p[1] for p in pairs],
    )
    return {(n, d) for n, d in rows}


def record_delivered(session: Session, pairs: Sequence[tuple[str, str]]) -> None:
    if pairs:
        session.run(
            "INSERT INTO push_deliveries (notification_id, device_id) "
            "SELECT * FROM unnest(CAST(:n AS uuid[]), CAST(:d AS uuid[])) ON CONFLICT DO NOTHING",
            n=[p[0] for p in pairs],
            d=[p[1] for p in pairs],
        )


def forget_devices(session: Session, device_ids: Sequence[str]) -> None:
    if device_ids:
        session.run(
            "DELETE FROM push_devices WHERE id = ANY(CAST(:ids AS uuid[]))", ids=list(device_ids)
        )


def prune_deliveries(session: Session) -> None:
    session.run(
        "DELETE FROM push_deliveries WHERE sent_at < now() - make_interval(days => :days)",
        days=DELIVERIES_KEPT_DAYS,
    )

"""Operational alerts: what raises them, and how ALERT_ROUTER delivers them.

Raised (published to the ALERTS stream as `alerts.<severity>.<kind>` CloudEvents):

- by the bridge, after each run: `events_set_aside` (critical: the stream refused an event
  BRIDGE_MAX_ATTEMPTS times) and `outbox_lag` (warning: the oldest unpublished event is older
  than BRIDGE_ALERT_LAG_S, 120 s);
- by the bridge's scheduled run: `sign_in_failures` (warning: more failed sign-in attempts
  in the last 5 minutes than BRIDGE_ALERT_SIGN_IN_FAILURES, 200, all regions together: the
  failure throttle's own table, `auth_failures`, which every region writes on the primary),
  and `replica_lag` (warning past BRIDGE_ALERT_REPLICA_LAG_WARNING_S, 5 s; critical past
  BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S, 30 s: the worst replica of any region, as the writer
  sees it, bridge.replica_lag).

An alert's id is uuid5(its dedup key, the window it falls in), and it is published with that
id as `Nats-Msg-Id`: every producer raising the same condition in one window (several bridge
runs, several regions) publishes one message, the stream's duplicate window drops the rest.

Delivered by ALERT_ROUTER: to one SNS topic per severity (`covenant-alerts-<severity>`:
operators subscribe e-mail, chat or a pager there), deduplicated within ALERT_DEDUP_WINDOW_S
(15 min) per dedup key by a conditional write to the DynamoDB table `covenant-alerts`
(outside Aurora, so alerts about the database still flow when it is down):

1. claim the key for this alert (`attribute_not_exists`, or the window over, or the claim
   already this alert's own: a redelivery);
2. publish to the topic;
3. mark the claim sent.

A redelivered alert whose claim is marked sent is not published again; one killed between 2
and 3 is published once more (SNS has no idempotent publish; the window is that one call).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from covenant import aws
from covenant.config import env
from covenant.db import Session
from covenant.events import CloudEvent
from covenant.regions import primary_region

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
TOPIC_ENV = {s: f"ALERT_TOPIC_{s.upper()}_ARN" for s in SEVERITIES}
TABLE_ENV = "ALERTS_TABLE_NAME"
DEFAULT_TABLE = "covenant-alerts"
DEFAULT_DEDUP_WINDOW_S = 15 * 60
PRODUCER_WINDOW_S = 5 * 60  # one alert id per dedup key in this long (producers' side)
_NAMESPACE = uuid.UUID("0b8c4a62-2d1f-4f7e-8a8e-5e2b9c6d7f31")


@dataclass(frozen=True)
class Alert:
    kind: str  # [a-z_]+: the subject's last token
    severity: Severity
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    dedup_key: str = ""  # defaults to the kind: one alert per kind and window

    @property
    def key(self) -> str:
        return self.dedup_key or self.kind

    @property
    def subject(self) -> str:
        return f"alerts.{self.severity}.{self.kind}"

    def event(self, source: str, now: float | None = None) -> CloudEvent:
        window = int((time.time() if now is None else now) // PRODUCER_WINDOW_S)
        return CloudEvent(
            type=self.subject,
            source=source,
            subject=f"alerts/{self.key}",
            id=str(uuid.uuid5(_NAMESPACE, f"{self.key}@{window}")),
            data={
                "kind": self.kind,
                "severity": self.severity,
                "summary": self.summary,
                "dedupKey": self.key,
                "details": dict(self.details),
            },
        )


# -- raising ----------------------------------------------------------------------------------


def events_set_aside(event_ids: Sequence[str]) -> Alert:
    return Alert(
        "events_set_aside",
        "critical",
        f"{len(event_ids)} outbox event(s) set aside after repeated rejection by the stream",
        {"eventIds": list(event_ids)[:50], "count": len(event_ids)},
    )


def outbox_lag(lag_s: float, threshold_s: float) -> Alert:
    return Alert(
        "outbox_lag",
        "warning",
        f"the oldest unpublished outbox event is {lag_s:.0f} s old (threshold {threshold_s:g} s)",
        {"lagSeconds": round(lag_s, 1), "thresholdSeconds": threshold_s},
    )


SIGN_IN_WINDOW_S = 300


def sign_in_failures(failures: int, threshold: int) -> Alert:
    return Alert(
        "sign_in_failures",
        "warning",
        f"{failures} failed sign-in attempts in the last {SIGN_IN_WINDOW_S // 60} minutes "
        f"(threshold {threshold}): credential stuffing, or a broken client",
        {"failures": failures, "threshold": threshold, "windowSeconds": SIGN_IN_WINDOW_S},
    )


def replica_lag(lags: Mapping[str, float], warning_s: float, critical_s: float) -> Alert | None:
    """The alert for these replicas' lags (seconds by replica name), or None when none is past
    the warning threshold. One key per severity: a lag that grows from warning to critical is
    sent again at once, not held back by the warning's dedup window."""
    if not lags:
        return None
    worst, lag_s = max(lags.items(), key=lambda item: item[1])
    severity: Severity
    if lag_s > critical_s:
        severity, threshold_s = "critical", critical_s
    elif lag_s > warning_s:
        severity, threshold_s = "warning", warning_s
    else:
        return None
    behind = {name: round(lag, 3) for name, lag in lags.items() if lag > warning_s}
    return Alert(
        "replica_lag",
        severity,
        f"database replica {worst} is {lag_s:.1f} s behind the writer (threshold "
        f"{threshold_s:g} s); {len(behind)} replica(s) past {warning_s:g} s",
        {"lagSeconds": behind, "worst": worst, "thresholdSeconds": threshold_s},
        dedup_key=f"replica_lag.{severity}",
    )


def recent_sign_in_failures(session: Session) -> int:
    """Failed (or still pending) sign-in attempts of the last SIGN_IN_WINDOW_S, all regions."""
    return int(
        session.scalar(
            "SELECT count(*) FROM auth_failures WHERE attempted_at > "
            "now() - make_interval(secs => CAST(:window_s AS double precision))",
            window_s=SIGN_IN_WINDOW_S,
        )
        or 0
    )


# -- routing (ALERT_ROUTER) -------------------------------------------------------------------


def table_name() -> str:
    return env(TABLE_ENV) or DEFAULT_TABLE


def dynamodb() -> Any:
    return aws.client("dynamodb", primary_region().aws_region, env("DYNAMODB_ENDPOINT_URL"))


def sns() -> Any:
    return aws.client("sns", primary_region().aws_region, env("SNS_ENDPOINT_URL"))


def table_definition(name: str) -> dict[str, Any]:
    """create_table arguments (moto locally; the CDK stack declares the same)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "dedupKey", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "dedupKey", "KeyType": "HASH"}],
    }


def ensure_table(client: Any, name: str | None = None) -> None:
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_table(**table_definition(name or table_name()))


def topic_arns() -> dict[str, str]:
    return {s: arn for s in SEVERITIES if (arn := env(TOPIC_ENV[s]))}


@dataclass(frozen=True)
class Routed:
    event_id: str
    severity: str
    key: str


def routed_of(event_id: str, envelope: Mapping[str, Any]) -> Routed | None:
    data = envelope.get("data")
    if not isinstance(data, dict):
        return None
    severity = data.get("severity")
    if severity not in SEVERITIES:
        return None
    key = data.get("dedupKey") or data.get("kind")
    if not isinstance(key, str) or not key:
        return None
    return Routed(event_id, severity, key)


@dataclass
class RouteResult:
    sent: int = 0
    suppressed: int = 0  # the same key was sent within the window
    redelivered: int = 0  # this alert was sent already
    unroutable: int = 0  # no severity or key, or no topic for the severity


def route(
    table_client: Any,
    topic_client: Any,
    deliveries: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    topics: Mapping[str, str],
    window_s: int,
    table: str | None = None,
    now: float | None = None,
) -> RouteResult:
    """Sends each alert of (event id, envelope) to its severity's topic unless its key was sent
    within the window; durable when it returns."""
    table = table or table_name()
    result = RouteResult()
    for event_id, envelope in deliveries:
        alert = routed_of(event_id, envelope)
        if alert is None or alert.severity not in topics:
            result.unroutable += 1
            continue
        at = int(time.time() if now is None else now)
        claim = _claim(table_client, table, alert, at, window_s)
        if claim == "suppressed":
            result.suppressed += 1
            continue
        if claim == "sent":
            result.redelivered += 1
            continue
        data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
        assert isinstance(data, dict)
        topic_client.publish(
            TopicArn=topics[alert.severity],
            Subject=f"[{alert.severity}] {data.get('kind')}"[:100],
            Message=_message(envelope),
            MessageAttributes={
                "severity": {"DataType": "String", "StringValue": alert.severity},
                "kind": {"DataType": "String", "StringValue": str(data.get("kind"))},
            },
        )
        table_client.update_item(
            TableName=table,
            Key={"dedupKey": {"S": alert.key}},
            UpdateExpression="SET sent = :t, sentAt = :at, raisedAt = :raised",
            ConditionExpression="eventId = :e",
            ExpressionAttributeValues={
                ":t": {"BOOL": True},
                ":e": {"S": alert.event_id},
                ":at": {"S": datetime.now(UTC).isoformat(timespec="milliseconds")},
                ":raised": {"S": str(envelope.get("time") or "")},
            },
        )
        result.sent += 1
    return result


def _claim(client: Any, table: str, alert: Routed, at: int, window_s: int) -> str:
    """'claimed' (send it), 'sent' (this alert was sent: a redelivery) or 'suppressed'."""
    try:
        client.put_item(
            TableName=table,
            Item={
                "dedupKey": {"S": alert.key},
                "eventId": {"S": alert.event_id},
                "claimedAt": {"N": str(at)},
                "windowEnds": {"N": str(at + window_s)},
                "sent": {"BOOL": False},
                "expiresAt": {"N": str(at + window_s + 86_400)},  # DynamoDB TTL
            },
            ConditionExpression=(
                "attribute_not_exists(dedupKey) OR windowEnds <= :now "
                "OR (eventId = :e AND sent = :f)"
            ),
            ExpressionAttributeValues={
                ":now": {"N": str(at)},
                ":e": {"S": alert.event_id},
                ":f": {"BOOL": False},
            },
        )
    except client.exceptions.ConditionalCheckFailedException:
        found = client.get_item(
            TableName=table, Key={"dedupKey": {"S": alert.key}}, ConsistentRead=True
        ).get("Item", {})
        if found.get("eventId", {}).get("S") == alert.event_id:
            return "sent"
        return "suppressed"
    return "claimed"


def _message(envelope: Mapping[str, Any]) -> str:
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(data, dict)
    lines = [
        str(data.get("summary") or ""),
        "",
        f"kind: {data.get('kind')}",
        f"severity: {data.get('severity')}",
        f"time: {envelope.get('time')}",
        f"source: {envelope.get('source')}",
        f"alert id: {envelope.get('id')}",
    ]
    details = data.get("details")
    if isinstance(details, dict):
        lines += [f"{k}: {v}" for k, v in details.items()]
    return "\n".join(lines)

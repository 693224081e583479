"""The audit trail: every audit event, append-only and tamper-evident, in a DynamoDB table
outside the primary database's write path (docs/deploy.md, "The audit trail", says why not
S3 Object Lock or the database).

- One item per event, keyed by the event id, written only with `attribute_not_exists`:
  nothing is ever overwritten, and a redelivered event (a worker killed between writing and
  acknowledging) is found already there and skipped.
- A hash chain in stream order: each record holds `chainIndex`, `prevHash` and
  `hash = sha256(prevHash | eventId | sha256(event as published))`; the head item
  (`eventId = "#head"`) holds the last hash. Records and the head move in one transaction,
  conditioned on the head being where the writer read it, so the chain never forks or gaps.
  `verify()` recomputes it: a changed, removed or inserted record breaks it; anchors of the
  head in S3 Object Lock (covenant.audit_anchor) catch a rewrite of the whole chain.
- Three indexes for the admins' GraphQL `auditLog`: by actor (the user's `sub`), by entity
  (`projects/<id>`, `countries/<code>`) and by month, each sorted by `at` = time#eventId,
  read newest first with keyset pages (the cursor is the last `at`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3

from covenant.config import env

HEAD_ID = "#head"
GENESIS_HASH = "0" * 64
TABLE_ENV = "AUDIT_TABLE_NAME"
DEFAULT_TABLE = "covenant-audit"
INDEXES = {"actor": "byActor", "entity": "byEntity", "month": "byMonth"}
MAX_TRANSACTION_ITEMS = 100
MAX_BATCH_GET = 100


class ChainConflict(RuntimeError):
    """The head moved under the writer (another writer): retry from a fresh read."""


def table_name() -> str:
    return env(TABLE_ENV) or DEFAULT_TABLE


def client() -> Any:
    """DynamoDB in the primary region (AUDIT_TABLE_REGION), or moto (DYNAMODB_ENDPOINT_URL)."""
    endpoint = env("DYNAMODB_ENDPOINT_URL")
    options: dict[str, Any] = {"region_name": env("AUDIT_TABLE_REGION") or env("AWS_REGION")}
    if endpoint:
        options.update(
            endpoint_url=endpoint,
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - moto: placeholders, never real keys
        )
    return boto3.client("dynamodb", **options)


def table_definition(name: str) -> dict[str, Any]:
    """create_table arguments (moto locally; the CDK stack declares the same)."""
    attributes = ["eventId", "actor", "entity", "month", "at"]

    def index(name: str, key: str) -> dict[str, Any]:
        return {
            "IndexName": name,
            "KeySchema": [
                {"AttributeName": key, "KeyType": "HASH"},
                {"AttributeName": "at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }

    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in attributes],
        "KeySchema": [{"AttributeName": "eventId", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [index(n, k) for k, n in INDEXES.items()],
    }


def ensure_table(dynamodb: Any, name: str | None = None) -> None:
    name = name or table_name()
    with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):
        dynamodb.create_table(**table_definition(name))


def _at(time: str, event_id: str) -> str:
    return f"{normalise_time(time)}#{event_id}"


def normalise_time(value: str) -> str:
    """An ISO 8601 time as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`: sortable as text."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    utc = parsed.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def chain_hash(prev_hash: str, event_id: str, digest: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{event_id}|{digest}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    """What the writer needs of one delivered audit event."""

    event_id: str
    raw: bytes  # the event exactly as published
    envelope: Mapping[str, Any]
    stream_seq: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True)
class AppendResult:
    appended: int
    duplicates: int  # already recorded, identical: a redelivery
    conflicts: int  # an id already recorded with other content: logged, never overwritten


def _item(event: AuditEvent, index: int, prev_hash: str, hash_: str) -> dict[str, Any]:
    envelope = event.envelope
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(data, dict)
    actor = data.get("actor") if isinstance(data.get("actor"), dict) else {}
    assert isinstance(actor, dict)
    time = str(envelope.get("time") or datetime.now(UTC).isoformat())
    at = _at(time, event.event_id)
    item: dict[str, Any] = {
        "eventId": {"S": event.event_id},
        "at": {"S": at},
        "month": {"S": at[:7]},
        "entity": {"S": str(envelope.get("subject") or "-")},
        "actor": {"S": str(actor.get("sub") or "-")},
        "type": {"S": str(envelope.get("type") or "")},
        "event": {"S": event.raw.decode("utf-8", errors="replace")},
        "digest": {"S": event.digest},
        "streamSeq": {"N": str(event.stream_seq)},
        "chainIndex": {"N": str(index)},
        "prevHash": {"S": prev_hash},
        "hash": {"S": hash_},
        # When the trail stored it (the transaction's start, to the millisecond).
        "recordedAt": {"S": normalise_time(datetime.now(UTC).isoformat())},
    }
    return item


def _head(dynamodb: Any, table: str) -> tuple[str, int]:
    found = dynamodb.get_item(
        TableName=table, Key={"eventId": {"S": HEAD_ID}}, ConsistentRead=True
    ).get("Item")
    if not found:
        return GENESIS_HASH, 0
    return found["hash"]["S"], int(found["count"]["N"])


def head(dynamodb: Any, table: str | None = None) -> tuple[str, int]:
    """The chain head: the last record's hash and the number of records (strongly read)."""
    return _head(dynamodb, table or table_name())


def _existing(dynamodb: Any, table: str, ids: Sequence[str]) -> dict[str, str]:
    """event id -> digest of those already recorded."""
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), MAX_BATCH_GET):
        keys: list[dict[str, Any]] = [{"eventId": {"S": i}} for i in unique[start : start + 100]]
        request: dict[str, Any] = {
            table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "eventId, digest"}
        }
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for item in answer.get("Responses", {}).get(table, []):
                found[item["eventId"]["S"]] = item["digest"]["S"]
            request = answer.get("UnprocessedKeys") or {}
    return found


def append(dynamodb: Any, events: Sequence[AuditEvent], table: str | None = None) -> AppendResult:
    """Records the events not yet recorded, in stream order, extending the chain; durable when
    it returns. Idempotent on the event id."""
    table = table or table_name()
    ordered = sorted(events, key=lambda e: e.stream_seq)
    existing = _existing(dynamodb, table, [e.event_id for e in ordered])
    duplicates = conflicts = 0
    fresh: list[AuditEvent] = []
    seen: set[str] = set()
    for event in ordered:
        if event.event_id in seen:
            duplicates += 1
            continue
        seen.add(event.event_id)
        if event.event_id in existing:
            if existing[event.event_id] == event.digest:
                duplicates += 1
            else:
                conflicts += 1
            continue
        fresh.append(event)
    prev_hash, count = _head(dynamodb, table)
    chunk_size = MAX_TRANSACTION_ITEMS - 1
    for start in range(0, len(fresh), chunk_size):
        chunk = fresh[start : start + chunk_size]
        writes: list[dict[str, Any]] = []
        head_before, count_before = prev_hash, count
        for event in chunk:
            count += 1
            hash_ = chain_hash(prev_hash, event.event_id, event.digest)
            writes.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": _item(event, count, prev_hash, hash_),
                        "ConditionExpression": "attribute_not_exists(eventId)",
                    }
                }
            )
            prev_hash = hash_
        head_update: dict[str, Any] = {
            "TableName": table,
            "Key": {"eventId": {"S": HEAD_ID}},
            "UpdateExpression": "SET #h = :h, #c = :c",
            "ExpressionAttributeNames": {"#h": "hash", "#c": "count"},
            "ExpressionAttributeValues": {":h": {"S": prev_hash}, ":c": {"N": str(count)}},
        }
        if count_before == 0:
            head_update["ConditionExpression"] = "attribute_not_exists(eventId)"
        else:
            head_update["ConditionExpression"] = "#h = :before"
            head_update["ExpressionAttributeValues"][":before"] = {"S": head_before}
        writes.append({"Update": head_update})
        try:
            dynamodb.transact_write_items(TransactItems=writes)
        except dynamodb.exceptions.TransactionCanceledException as exc:
            raise ChainConflict(f"the audit chain moved or a record exists: {exc}") from exc
    return AppendResult(len(fresh), duplicates, conflicts)


def records(dynamodb: Any, table: str | None = None) -> list[dict[str, Any]]:
    """Every record, in chain order (a full scan: verification and tests)."""
    table = table or table_name()
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items += [i for i in page["Items"] if i["eventId"]["S"] != HEAD_ID]
    return sorted(items, key=lambda i: int(i["chainIndex"]["N"]))


def verify(dynamodb: Any, table: str | None = None) -> list[str]:
    """Recomputes the chain; each problem found, empty when the trail is intact."""
    problems: list[str] = []
    prev = GENESIS_HASH
    items = records(dynamodb, table)
    for expected, item in enumerate(items, start=1):
        event_id = item["eventId"]["S"]
        if int(item["chainIndex"]["N"]) != expected:
            problems.append(f"record {expected} missing (found {item['chainIndex']['N']})")
        digest = hashlib.sha256(item["event"]["S"].encode("utf-8")).hexdigest()
        if digest != item["digest"]["S"]:
            problems.append(f"{event_id}: the event text was changed")
        if item["prevHash"]["S"] != prev:
            problems.append(f"{event_id}: does not follow the record before it")
        if chain_hash(prev, event_id, item["digest"]["S"]) != item["hash"]["S"]:
            problems.append(f"{event_id}: hash does not match")
        prev = item["hash"]["S"]
    head_hash, count = _head(dynamodb, table or table_name())
    if count != len(items) or (items and head_hash != prev):
        problems.append(f"head says {count} records ending {head_hash[:12]}, found {len(items)}")
    return problems


# -- reading (GraphQL auditLog) -------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    entity: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # inclusive


def encode_cursor(at: str) -> str:
    return base64.urlsafe_b64encode(f"audit:{at}".encode()).decode("ascii")


def decode_cursor(cursor: str) -> str | None:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        return None
    return text.removeprefix("audit:") if text.startswith("audit:") else None


def _iso(value: datetime) -> str:
    return normalise_time(value.isoformat())


def _months(high: str, low: str) -> Iterator[str]:
    """YYYY-MM from `high` down to `low`, inclusive."""
    year, month = int(high[:4]), int(high[5:7])
    while f"{year:04d}-{month:02d}" >= low:
        yield f"{year:04d}-{month:02d}"
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)


def _earliest_month() -> str:
    """The trail keeps seven years (the AUDIT stream's retention): never look further back."""
    now = datetime.now(UTC)
    return f"{now.year - 8:04d}-{now.month:02d}"


def page(
    dynamodb: Any, where: AuditFilter, first: int, after: str | None, table: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `first` records newest first after the cursor's `at`, and whether more follow."""
    table = table or table_name()
    low = _iso(where.start) if where.start else "0"
    high = (_iso(where.end) + "#~") if where.end else "~"
    if after is not None and after < high:
        high = after
    wanted = first + 1
    found: list[dict[str, Any]] = []

    def query(index: str, key: str, value: str, extra: dict[str, Any]) -> None:
        names = {"#k": key, "#at": "at"}
        values: dict[str, Any] = {":k": {"S": value}, ":lo": {"S": low}, ":hi": {"S": high}}
        request: dict[str, Any] = {
            "TableName": table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k AND #at BETWEEN :lo AND :hi",
            "ScanIndexForward": False,
            "Limit": wanted,
        }
        if extra:
            names.update(extra["names"])
            values.update(extra["values"])
            request["FilterExpression"] = extra["expression"]
        request["ExpressionAttributeNames"] = names
        request["ExpressionAttributeValues"] = values
        while len(found) < wanted:
            answer = dynamodb.query(**request)
            found.extend(i for i in answer["Items"] if i["at"]["S"] != after)
            if "LastEvaluatedKey" not in answer:
                return
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    actor_filter = {
        "names": {"#a": "actor"},
        "values": {":a": {"S": where.actor or ""}},
        "expression": "#a = :a",
    }
    if where.entity is not None:
        query(INDEXES["entity"], "entity", where.entity, actor_filter if where.actor else {})
    elif where.actor is not None:
        query(INDEXES["actor"], "actor", where.actor, {})
    else:
        this_month = datetime.now(UTC).strftime("%Y-%m")
        top = min(high[:7], this_month) if high != "~" else this_month
        bottom = max(low[:7], _earliest_month()) if low != "0" else _earliest_month()
        for month in _months(top, bottom):
            query(INDEXES["month"], "month", month, {})
            if len(found) >= wanted:
                break
    found = found[:wanted]
    return found[:first], len(found) > first


def record_view(item: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the GraphQL AuditRecord (snake_case keys: the schema's default resolvers)."""
    event = json.loads(item["event"]["S"])
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    actor: dict[str, Any] = data["actor"] if isinstance(data.get("actor"), dict) else {}
    return {
        "event_id": item["eventId"]["S"],
        "type": item["type"]["S"],
        "action": data.get("action"),
        "time": datetime.fromisoformat(item["at"]["S"].split("#", 1)[0].replace("Z", "+00:00")),
        "entity": item["entity"]["S"],
        "actor": {
            "sub": actor.get("sub"),
            "username": actor.get("username"),
            "email": actor.get("email"),
            "roles": actor.get("roles") or [],
        },
        "region": data.get("region"),
        "request_id": data.get("requestId"),
        "changes": json.dumps(data.get("changes") or {}, sort_keys=True),
        "stream_sequence": int(item["streamSeq"]["N"]),
        "chain_index": int(item["chainIndex"]["N"]),
        "hash": item["hash"]["S"],
        "previous_hash": item["prevHash"]["S"],
        "cursor": encode_cursor(item["at"]["S"]),
    }

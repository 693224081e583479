"""Anchors of the audit trail's hash chain in S3 Object Lock (compliance mode, seven years).

The chain (covenant.audit_trail) makes any change to one record visible, unless someone
rewrites the table *and* its chain consistently: an account administrator could. Each anchor
is a small object holding the chain head at one moment (`count`, `hash`) in a bucket whose
default retention is compliance mode: until the retention date nobody, the root user
included, can delete or overwrite it. A rewritten chain no longer reaches the anchored hash
at the anchored index, and `verify_anchors()` says where.

The audit logger writes one anchor per hour it runs in (`anchors/YYYY/MM/DD/HH.json`, after
its run, when the head moved since the last anchor): an undetectable rewrite is confined to
the records appended since the last anchor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from covenant import audit_trail
from covenant.config import env

BUCKET_ENV = "AUDIT_ANCHOR_BUCKET"
PREFIX = "anchors/"
# As long as the AUDIT stream keeps the events (seven calendar years, two leap days).
RETENTION_DAYS = 7 * 365 + 2


def bucket() -> str | None:
    return env(BUCKET_ENV) or None


def s3() -> Any:
    from covenant import aws

    return aws.client(
        "s3",
        env("AUDIT_TABLE_REGION") or env("AWS_REGION") or "us-east-1",
        env("S3_ENDPOINT_URL"),
    )


def object_lock_configuration() -> dict[str, Any]:
    return {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": RETENTION_DAYS}},
    }


def ensure_bucket(s3_client: Any, name: str) -> None:
    """The anchors' bucket, Object Lock on with the default retention (moto locally; the CDK
    stack declares the same)."""
    region = s3_client.meta.region_name
    options: dict[str, Any] = {"Bucket": name, "ObjectLockEnabledForBucket": True}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3_client.create_bucket(**options)
    except s3_client.exceptions.BucketAlreadyOwnedByYou:
        return
    s3_client.put_object_lock_configuration(
        Bucket=name, ObjectLockConfiguration=object_lock_configuration()
    )


def object_key(at: datetime) -> str:
    return at.astimezone(UTC).strftime(f"{PREFIX}%Y/%m/%d/%H.json")


@dataclass(frozen=True)
class Anchor:
    key: str
    count: int
    hash: str
    anchored_at: str


def _latest(s3_client: Any, name: str) -> Anchor | None:
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=PREFIX):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return _read(s3_client, name, max(keys)) if keys else None


def _read(s3_client: Any, name: str, key: str) -> Anchor:
    body = json.loads(s3_client.get_object(Bucket=name, Key=key)["Body"].read())
    return Anchor(key, int(body["count"]), str(body["hash"]), str(body["anchoredAt"]))


def anchor(dynamodb: Any, s3_client: Any, name: str, now: datetime | None = None) -> Anchor | None:
    """Writes this hour's anchor of the chain head, unless this hour has one already or the
    head has not moved since the last anchor; the anchor written, else None."""
    now = now or datetime.now(UTC)
    key = object_key(now)
    latest = _latest(s3_client, name)
    if latest is not None and latest.key >= key:
        return None
    head_hash, count = audit_trail.head(dynamodb)
    if count == 0 or (latest is not None and latest.count == count):
        return None
    anchored_at = audit_trail.normalise_time(now.isoformat())
    body = {
        "table": audit_trail.table_name(),
        "count": count,
        "hash": head_hash,
        "anchoredAt": anchored_at,
    }
    # The bucket's default retention (compliance mode) locks the object as it is stored.
    s3_client.put_object(
        Bucket=name,
        Key=key,
        Body=json.dumps(body, sort_keys=True).encode(),
        ContentType="application/json",
    )
    return Anchor(key, count, head_hash, anchored_at)


def verify_anchors(dynamodb: Any, s3_client: Any, name: str) -> list[str]:
    """Each anchor the trail no longer matches (its record at the anchored index hashes
    otherwise, or is gone); empty when every anchor holds."""
    by_index: Mapping[int, str] = {
        int(item["chainIndex"]["N"]): item["hash"]["S"] for item in audit_trail.records(dynamodb)
    }
    problems: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=PREFIX):
        for listed in page.get("Contents", []):
            found = _read(s3_client, name, listed["Key"])
            at = by_index.get(found.count)
            if at is None:
                problems.append(f"{found.key}: record {found.count} is missing")
            elif at != found.hash:
                problems.append(
                    f"{found.key}: record {found.count} hashes {at[:12]}, anchored "
                    f"{found.hash[:12]} at {found.anchored_at}: the chain was rewritten"
                )
    return problems

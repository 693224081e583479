"""Domain events in the CloudEvents 1.0 JSON envelope."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SPEC_VERSION = "1.0"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CloudEvent:
    """One event. `type` doubles as the NATS subject it is published on
    (e.g. covenant.projects.created, audit.projects.created)."""

    type: str
    source: str
    subject: str
    data: Mapping[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=_now)
    datacontenttype: str = "application/json"

    def envelope(self) -> dict[str, Any]:
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "data": dict(self.data),
        }

    def to_json(self) -> str:
        return json.dumps(self.envelope(), separators=(",", ":"), default=str)


def event_source(region: str, function: str) -> str:
    """The CloudEvents `source`: which regional function produced the event."""
    return f"/covenant/{region}/{function}"

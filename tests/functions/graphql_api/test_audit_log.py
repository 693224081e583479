"""Query.auditLog: admins read the audit trail (moto's DynamoDB) with filters and keyset
pages, each record naming its event id; everyone else is refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from covenant import audit_trail
from covenant.config import environment
from devstack.processes import free_port

from .conftest import ADMIN, EDITOR

QUERY = """
query ($filter: AuditFilter, $first: Int, $after: String) {
  auditLog(filter: $filter, first: $first, after: $after) {
    edges { cursor node { eventId type action time entity actor { sub roles } changes
                          streamSequence chainIndex hash previousHash requestId } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@pytest.fixture(scope="module")
def trail_env() -> Iterator[dict[str, str]]:
    from devstack.cognito import MotoServer

    server = MotoServer(free_port())
    server.start()
    env = {
        "DYNAMODB_ENDPOINT_URL": server.endpoint_url,
        "AUDIT_TABLE_NAME": f"audit-{uuid.uuid4().hex[:8]}",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    try:
        with environment({**env, "AWS_REGION": "eu-west-1"}):
            dynamodb = audit_trail.client()
            audit_trail.ensure_table(dynamodb)
            events = []
            for n in range(6):
                envelope = {
                    "id": str(uuid.uuid4()),
                    "type": "audit.projects.updated",
                    "subject": f"projects/p{n % 2}",
                    "time": (datetime(2026, 12, 2, tzinfo=UTC) + timedelta(hours=n)).isoformat(),
                    "data": {
                        "actor": {"sub": "sub-x" if n < 3 else "sub-y", "roles": ["editor"]},
                        "action": "updated",
                        "requestId": f"req-{n}",
                        "changes": {"budget": {"from": n, "to": n + 1}},
                    },
                }
                raw = json.dumps(envelope).encode()
                events.append(audit_trail.AuditEvent(envelope["id"], raw, envelope, n + 1))
            audit_trail.append(dynamodb, events)
        yield env
    finally:
        server.stop()


def test_admin_pages_through_the_trail(gql: Any, trail_env: dict[str, str]) -> None:
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        reply = gql(QUERY, {"first": 4, "after": after}, claims=ADMIN, environment=trail_env)
        assert reply.errors == [], reply.errors
        page = reply.data["auditLog"]
        seen += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert [node["requestId"] for node in seen] == [f"req-{n}" for n in reversed(range(6))]
    assert [node["chainIndex"] for node in seen] == [6, 5, 4, 3, 2, 1]
    assert seen[0]["previousHash"] == seen[1]["hash"]
    assert json.loads(seen[0]["changes"]) == {"budget": {"from": 5, "to": 6}}
    assert seen[-1]["time"].startswith("2026-12-02T00:00:00")


def test_filters_combine(gql: Any, trail_env: dict[str, str]) -> None:
    reply = gql(
        QUERY,
        {
            "filter": {
                "actor": "sub-x",
                "entity": "projects/p0",
                "from": "2026-12-02T00:00:00Z",
                "to": "2026-12-02T03:00:00Z",
            }
        },
        claims=ADMIN,
        environment=trail_env,
    )
    assert reply.errors == []
    assert [e["node"]["requestId"] for e in reply.data["auditLog"]["edges"]] == ["req-2", "req-0"]


def test_only_admins_read_it(gql: Any, trail_env: dict[str, str]) -> None:
    assert gql(QUERY, {}, claims=EDITOR, environment=trail_env).codes == ["FORBIDDEN"]
    assert gql(QUERY, {}, environment=trail_env).codes == ["UNAUTHENTICATED"]
    bad = gql(QUERY, {"after": "nope"}, claims=ADMIN, environment=trail_env)
    assert bad.codes == ["BAD_USER_INPUT"]

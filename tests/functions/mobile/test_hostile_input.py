"""Hostile input through the deployed mobile handler: deeply nested JSON, NUL and other
control characters, strings that are not Unicode, integers of hundreds of digits. Each gets a
precise 400 naming what was wrong (never a 500), and a push that carries one writes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db

DEPTH_MESSAGE = "The request body is not valid JSON: nested more than 64 levels deep."


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _cursor() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT sync_cursor()"))


def _counts() -> dict[str, int]:
    with db.writer().session() as session:
        return {
            "outbox": int(session.scalar("SELECT count(*) FROM outbox")),
            "projects": int(session.scalar("SELECT count(*) FROM projects")),
            "receipts": int(session.scalar("SELECT count(*) FROM sync_push_receipts")),
        }


@pytest.fixture
def unchanged(servers) -> Iterator[None]:
    """The test writes nothing: no project, no outbox event, no push receipt."""
    before = _counts()
    yield
    assert _counts() == before


@pytest.fixture
def push(mobile, claims_of):
    editor = claims_of("editor")

    def run(body: Any) -> Any:
        return mobile(
            "POST",
            "/sync",
            body=body,
            claims=editor,
            query={"last_pulled_at": str(_cursor())},
        )

    return run


def _record(record_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "name": "Hostile Push Probe",
        "description": "",
        "sector_id": "health",
        "country_code": "NZL",
        "status": "planning",
        "budget_usd": 2_500_000,
        "impact_score": 4.25,
        "progress": 0,
        "_status": "created",
        "_changed": "",
        **overrides,
    }


def _changes(*records: dict[str, Any], action: str = "created") -> dict[str, Any]:
    lists: dict[str, list[Any]] = {"created": [], "updated": [], "deleted": []}
    lists[action] = list(records)
    return {"projects": lists}


# --- deeply nested JSON ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 900, 2_000, 10_000])
def test_a_login_nested_too_deeply_is_400(mobile, clean_auth_failures, depth) -> None:
    body = '{"email": "a@example.org", "password": "x", "extra": ' + _nested(depth) + "}"
    reply = mobile("POST", "/auth/login", body=body)
    assert reply.status == 400, reply.body
    assert reply.body == {"code": "BAD_USER_INPUT", "message": DEPTH_MESSAGE, "field": "body"}


@pytest.mark.parametrize("depth", [65, 900, 2_000, 10_000])
def test_a_push_nested_too_deeply_is_400(push, unchanged, depth) -> None:
    record = _record(str(uuid.uuid4()))
    body = json.dumps(_changes(record))[:-1] + ', "extra": ' + _nested(depth) + "}"
    reply = push(body)
    assert reply.status == 400, reply.body
    assert reply.body == {"code": "BAD_USER_INPUT", "message": DEPTH_MESSAGE, "field": "body"}


def test_every_body_route_refuses_deep_json(mobile, clean_auth_failures) -> None:
    for path in ("/auth/login", "/auth/refresh", "/auth/register"):
        reply = mobile("POST", path, body="[" * 5_000)
        assert reply.status == 400, (path, reply.body)
        assert reply.body["field"] == "body"


def test_a_pull_migration_nested_too_deeply_is_400(mobile, claims_of) -> None:
    reply = mobile(
        "GET",
        "/sync",
        claims=claims_of("viewer"),
        query={"last_pulled_at": "null", "migration": "[" * 3_000},
    )
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "migration"


# --- control characters and text that is not Unicode -------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"name": "Grid\u0000Two"}, "name", "must not contain control characters (U+0000"),
        ({"name": "Grid\u0007"}, "name", "must not contain control characters (U+0007"),
        ({"name": "Two\nLines"}, "name", "must not contain control characters (U+000A"),
        ({"description": "a\u0000b"}, "description", "must not contain control characters"),
        ({"description": "\u001b[2J"}, "description", "must not contain control characters"),
        ({"country_code": "NZ\u0000"}, "country_code", "must not contain control characters"),
        ({"sector_id": "health\u0000"}, "sector_id", "must be one of"),
        ({"status": "active\u0000"}, "status", "must be one of"),
    ],
)
@pytest.mark.parametrize("action", ["created", "updated"])
def test_a_pushed_record_with_control_characters_is_400_naming_record_and_field(
    push, unchanged, overrides, field, rule, action
) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    reply = push(_changes(_record(good), _record(bad, **overrides), action=action))
    assert reply.status == 400, reply.body
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert (reply.body["table"], reply.body["record"], reply.body["field"]) == (
        "projects",
        bad,
        field,
    )
    assert reply.body["rule"].startswith(rule)
    assert reply.body["message"] == f"projects {bad}: {field} {reply.body['rule']}."


def test_a_description_may_hold_lines_and_tabs(push) -> None:
    record_id = str(uuid.uuid4())
    text = "First line\n\tSecond line\r\nThird"
    try:
        reply = push(_changes(_record(record_id, description=text)))
        assert reply.status == 200, reply.body
        with db.writer().session() as session:
            stored = session.scalar(
                "SELECT description FROM projects WHERE id = CAST(:id AS uuid)", id=record_id
            )
        assert stored == text
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=record_id)


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("name", "projects.created[0].name"),
        ("notes", "projects.created[0].notes"),  # a column this API ignores: still hashed
        ("_changed", "projects.created[0]._changed"),
    ],
)
def test_a_string_that_is_not_unicode_is_400_naming_where_it_is(
    push, unchanged, where, path
) -> None:
    record = _record(str(uuid.uuid4()), **{where: "Broken \ud800 text"})
    reply = push(_changes(record))
    assert reply.status == 400, reply.body
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert reply.body["field"] == path
    assert reply.body["rule"] == "must be valid Unicode text"
    assert "U+D800 at character 8" in reply.body["message"]


def test_a_key_that_is_not_unicode_is_400(push, unchanged) -> None:
    record = _record(str(uuid.uuid4()))
    record["\udc00"] = 1
    reply = push(_changes(record))
    assert reply.status == 400, reply.body
    assert reply.body["field"] == "projects.created[0]"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a\ud800@example.org", "password": "Whatever-2026!"},
        {"email": "a@example.org", "password": "Whatever\udfff-2026!"},
    ],
)
def test_a_login_that_is_not_unicode_is_400(mobile, clean_auth_failures, body) -> None:
    reply = mobile("POST", "/auth/login", body=body)
    assert reply.status == 400, reply.body
    assert reply.body["field"] in ("email", "password")
    assert reply.body["rule"] == "must be valid Unicode text"


def test_a_login_with_nul_is_refused_without_a_500(mobile, clean_auth_failures) -> None:
    for body in (
        {"email": "a\u0000b@example.org", "password": "Whatever-2026!"},
        {"email": "a@example.org", "password": "What\u0000ever-2026!"},
    ):
        reply = mobile("POST", "/auth/login", body=body)
        assert reply.status in (400, 401), reply.body


# --- huge numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "literal", "rule"),
    [
        ("budget_usd", "1" + "0" * 400, "must be greater than 0 and at most 2^53 - 1"),
        ("budget_usd", "-" + "9" * 400, "must be greater than 0 and at most 2^53 - 1"),
        ("budget_usd", "1e400", "must be a finite number"),
        ("impact_score", "1" + "0" * 400, "must be between 0.00 and 10.00"),
        ("impact_score", "-1" + "0" * 400, "must be between 0.00 and 10.00"),
        ("impact_score", "1e400", "must be a finite number"),
        ("progress", "1" + "0" * 400, "must be between 0 and 100"),
        ("progress", "-1e400", "must be a finite number"),
    ],
)
@pytest.mark.parametrize("action", ["created", "updated"])
def test_a_huge_number_is_400_naming_record_and_field(
    push, unchanged, field, literal, rule, action
) -> None:
    record_id = str(uuid.uuid4())
    marker = "__HUGE__"
    body = json.dumps(_changes(_record(record_id, **{field: marker}), action=action))
    reply = push(body.replace(f'"{marker}"', literal))
    assert reply.status == 400, reply.body
    assert (reply.body["record"], reply.body["field"], reply.body["rule"]) == (
        record_id,
        field,
        rule,
    )

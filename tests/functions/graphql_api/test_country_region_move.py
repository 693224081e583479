"""A country's region change moves its projects (the foreign key cascades): the same transaction
writes a covenant.projects.updated (and its audit event) for every moved project, in a number
of statements that does not depend on how many projects moved."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from covenant import db

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}

CREATE_COUNTRY = """
mutation ($input: CreateCountryInput!) { createCountry(input: $input) { code region { code } } }
"""
CREATE_PROJECT = "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id } }"
UPDATE_COUNTRY = """
mutation ($code: ID!, $input: UpdateCountryInput!) {
  updateCountry(code: $code, input: $input) { code region { code } version }
}
"""

# Test countries: user-assigned ISO codes (Q*), so they never collide with the seed's 195.
COUNTRIES = {"QRA": "QR", "QRB": "QS", "QRC": "QT", "QRD": "QU", "QRE": "QV"}

Factory = Callable[[str, str, int], list[str]]


@pytest.fixture
def country_with_projects(gql) -> Iterator[Factory]:
    """make(code, region, n): a test country in `region` with n projects (created by an editor);
    returns the project ids. Removes the projects and countries afterwards."""
    codes: list[str] = []
    project_ids: list[str] = []

    def make(code: str, region: str, n: int) -> list[str]:
        country = {
            "code": code,
            "iso2": COUNTRIES[code],
            "name": f"Region Move {code}",
            "continent": "EUROPE",
            "region": region,
            "gdpUsd": 7_000_000_000,
        }
        reply = gql(CREATE_COUNTRY, {"input": country}, claims=ADMIN)
        assert not reply.errors, reply.body
        codes.append(code)
        ids = []
        for i in range(n):
            project = {
                "name": f"Region Move {code} {i}",
                "sectorId": "energy",
                "countryCode": code,
                "budgetUsd": 1_000_000 + i,
            }
            created = gql(CREATE_PROJECT, {"input": project}, claims=EDITOR)
            assert not created.errors, created.body
            ids.append(created.data["createProject"]["id"])
            project_ids.append(ids[-1])
        return ids

    yield make
    with db.writer().session() as session:
        # Project tombstones stay (see test_mutations: a device may have pulled past them).
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=project_ids)
        session.run("DELETE FROM countries WHERE code = ANY(CAST(:codes AS bpchar[]))", codes=codes)
        session.run(
            "DELETE FROM tombstones WHERE record_id = ANY(CAST(:codes AS text[]))", codes=codes
        )


def _payload(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def _last_seq() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT COALESCE(max(seq), 0) FROM outbox"))


def _outbox_after(seq: int) -> list[dict[str, Any]]:
    """The outbox rows written after `seq`, in order."""
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT id::text AS id, subject, aggregate_type, aggregate_id, payload FROM outbox "
            "WHERE seq > :seq ORDER BY seq",
            seq=seq,
        )
    for row in rows:
        row["payload"] = _payload(row["payload"])
    return rows


def _outbox_of(aggregate_id: str) -> list[dict[str, Any]]:
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT subject, payload FROM outbox WHERE aggregate_id = :id ORDER BY seq",
            id=aggregate_id,
        )
    return [{**row, "payload": _payload(row["payload"])} for row in rows]


def _projects(ids: list[str]) -> dict[str, dict[str, Any]]:
    with db.writer().session() as session:
        rows = session.rows(
            "SELECT id::text AS id, region, version, change_seq FROM projects "
            "WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=ids,
        )
    return {row["id"]: row for row in rows}


def _move(gql, code: str, region: str, **extra: Any):
    reply = gql(UPDATE_COUNTRY, {"code": code, "input": {"region": region, **extra}}, claims=ADMIN)
    assert not reply.errors, reply.body
    return reply


def test_a_region_change_moves_the_projects_and_writes_their_events(
    gql, country_with_projects
) -> None:
    ids = country_with_projects("QRA", "ams", 3)
    before = _projects(ids)
    assert {p["region"] for p in before.values()} == {"ams"}
    seq = _last_seq()

    reply = _move(gql, "QRA", "sin")

    assert reply.data["updateCountry"]["region"] == {"code": "sin"}
    after = _projects(ids)
    for project_id in ids:
        assert after[project_id]["region"] == "sin"
        # The cascade runs the change-tracking trigger: a new version and a new change number
        # (stamped at commit), so sync pulls the move and a stale expectedVersion conflicts.
        assert after[project_id]["version"] == before[project_id]["version"] + 1
        assert after[project_id]["change_seq"] > before[project_id]["change_seq"]

    written = _outbox_after(seq)
    country_change, country_audit = written[:2]
    assert [e["subject"] for e in written[:2]] == [
        "covenant.countries.updated",
        "audit.countries.updated",
    ]
    assert country_audit["payload"]["data"]["changes"] == {"region": {"from": "ams", "to": "sin"}}
    assert "cause" not in country_audit["payload"]["data"]
    project_events = written[2:]
    assert len(project_events) == 2 * len(ids)
    changes = [e for e in project_events if e["subject"] == "covenant.projects.updated"]
    audits = [e for e in project_events if e["subject"] == "audit.projects.updated"]
    assert sorted(e["aggregate_id"] for e in changes) == sorted(ids)  # one per moved project
    assert sorted(e["aggregate_id"] for e in audits) == sorted(ids)
    assert {e["aggregate_type"] for e in project_events} == {"project"}

    for project_id in ids:
        created, created_audit, change, audit = (e["payload"] for e in _outbox_of(project_id))
        assert (created["type"], change["type"]) == (
            "covenant.projects.created",
            "covenant.projects.updated",
        )
        # The same envelope as every other project event, on the project's own subject.
        assert set(change) == set(created)
        assert change["specversion"] == "1.0"
        assert change["datacontenttype"] == "application/json"
        assert change["source"] == "/covenant/ams/graphql"
        assert change["subject"] == f"projects/{project_id}"
        assert change["id"] and change["id"] != created["id"]
        assert change["time"] >= created["time"]
        snapshot = change["data"]["project"]
        # The change names who made it (subscriptions' admin-only changedBy), nothing more.
        assert set(change["data"]) == {"project", "actor"}
        assert set(change["data"]["actor"]) == {"sub", "roles"}
        assert change["data"]["actor"]["sub"] == "sub-admin"
        assert set(snapshot) == set(created["data"]["project"])
        assert snapshot["region"] == "sin"
        assert snapshot["version"] == after[project_id]["version"]
        assert {
            k: v for k, v in snapshot.items() if k not in ("region", "version", "updatedAt")
        } == {
            k: v
            for k, v in created["data"]["project"].items()
            if k not in ("region", "version", "updatedAt")
        }
        # Its audit record: the actor, the change, and the country update that caused it.
        assert audit["type"] == "audit.projects.updated"
        assert audit["subject"] == f"projects/{project_id}"
        assert set(audit) == set(created_audit)
        data = audit["data"]
        assert data["actor"] == country_audit["payload"]["data"]["actor"]
        assert data["actor"]["sub"] == "sub-admin"
        assert data["action"] == "updated"
        assert data["requestId"] == country_audit["payload"]["data"]["requestId"]
        assert data["region"] == "ams"
        assert data["changes"] == {"region": {"from": "ams", "to": "sin"}}
        assert data["cause"] == {
            "type": "audit.countries.updated",
            "id": country_audit["id"],
            "subject": "countries/QRA",
        }
    assert country_change["payload"]["data"]["country"]["region"] == "sin"


def test_the_statements_do_not_depend_on_the_number_of_projects(gql, country_with_projects) -> None:
    country_with_projects("QRB", "ams", 2)
    country_with_projects("QRC", "ams", 6)
    seq = _last_seq()
    two = _move(gql, "QRB", "jnb")
    six = _move(gql, "QRC", "jnb")
    assert len(two.statements) == len(six.statements), (two.statements, six.statements)
    assert two.statements == six.statements  # the same SQL, only the parameters differ
    inserts = [s for s in six.statements if "INSERT INTO outbox" in s]
    assert len(inserts) == 1, six.statements  # the country's and all projects' events
    written = [e["subject"] for e in _outbox_after(seq)]
    assert written.count("covenant.projects.updated") == 2 + 6
    assert written.count("audit.projects.updated") == 2 + 6


def test_a_country_without_projects_writes_only_its_own_events(gql, country_with_projects) -> None:
    country_with_projects("QRD", "ams", 0)
    seq = _last_seq()
    _move(gql, "QRD", "syd")
    assert [e["subject"] for e in _outbox_after(seq)] == [
        "covenant.countries.updated",
        "audit.countries.updated",
    ]


def test_an_update_that_keeps_the_region_writes_no_project_events(
    gql, country_with_projects
) -> None:
    ids = country_with_projects("QRE", "ams", 2)
    before = _projects(ids)
    seq = _last_seq()
    reply = _move(gql, "QRE", "ams", gdpUsd=8_000_000_000)  # the region it already has
    assert reply.data["updateCountry"]["region"] == {"code": "ams"}
    written = _outbox_after(seq)
    assert [e["subject"] for e in written] == [
        "covenant.countries.updated",
        "audit.countries.updated",
    ]
    assert written[1]["payload"]["data"]["changes"] == {
        "gdpUsd": {"from": 7_000_000_000, "to": 8_000_000_000}
    }
    assert _projects(ids) == before  # not touched: same version, same change number
    _move(gql, "QRE", "ams")  # no change at all: no event of any kind
    assert len(_outbox_after(seq)) == 2
    assert _projects(ids) == before

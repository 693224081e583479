"""The unit of work: domain rows and outbox rows commit together or not at all."""

from __future__ import annotations

import json
import uuid

import pytest

from covenant.events import CloudEvent, event_source
from covenant.uow import UnitOfWork

_INSERT = """
INSERT INTO projects (id, name, sector_id, country_code, budget_usd)
VALUES (CAST(:id AS uuid), :name, 'energy', 'KEN', 1000000)
"""


def _event(project_id: str) -> CloudEvent:
    return CloudEvent(
        type="covenant.projects.created",
        source=event_source("ams", "tests"),
        subject=f"projects/{project_id}",
        data={"id": project_id},
    )


def _counts(writer, project_id: str, event_id: str) -> tuple[int, int]:
    with writer.session() as session:
        projects = session.scalar(
            "SELECT count(*) FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
        )
        outbox = session.scalar(
            "SELECT count(*) FROM outbox WHERE id = CAST(:id AS uuid)", id=event_id
        )
    return projects, outbox


def test_commit_writes_the_row_and_its_event(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    with UnitOfWork(writer) as uow:
        uow.run(_INSERT, id=project_id, name="UoW commit")
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
    assert _counts(writer, project_id, event.id) == (1, 1)
    with writer.session() as session:
        row = session.one(
            "SELECT subject, payload, published_at FROM outbox WHERE id = CAST(:id AS uuid)",
            id=event.id,
        )
    assert row is not None
    assert row["subject"] == "covenant.projects.created"
    assert row["published_at"] is None
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
    assert payload["specversion"] == "1.0"
    assert payload["id"] == event.id
    assert payload["source"] == "/covenant/ams/tests"
    assert payload["data"] == {"id": project_id}


def test_an_exception_rolls_back_the_row_and_its_event(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    committed: list[bool] = []
    with pytest.raises(RuntimeError, match="boom"), UnitOfWork(writer) as uow:
        uow.run(_INSERT, id=project_id, name="UoW rollback")
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
        uow.after_commit(lambda: committed.append(True))
        raise RuntimeError("boom")
    assert _counts(writer, project_id, event.id) == (0, 0)
    assert committed == []


def test_a_failing_statement_rolls_back_everything_before_it(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    with pytest.raises(Exception, match="check"), UnitOfWork(writer) as uow:
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
        uow.run(
            "INSERT INTO projects (id, name, sector_id, country_code, budget_usd) "
            "VALUES (CAST(:id AS uuid), 'bad', 'energy', 'KEN', -5)",
            id=project_id,
        )
    assert _counts(writer, project_id, event.id) == (0, 0)
    with writer.session() as session:  # the connection is clean for the next request
        assert session.scalar("SELECT 1") == 1


def test_after_commit_runs_after_commit_and_cannot_undo_it(writer) -> None:
    project_id = str(uuid.uuid4())
    seen: list[int] = []

    def check_visible() -> None:
        with writer.session() as session:
            seen.append(
                session.scalar(
                    "SELECT count(*) FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
                )
            )
        raise RuntimeError("wake-up message could not be sent")

    with UnitOfWork(writer) as uow:
        uow.run(_INSERT, id=project_id, name="UoW after commit")
        uow.after_commit(check_visible)
    assert seen == [1]
    assert _counts(writer, project_id, "00000000-0000-0000-0000-000000000000")[0] == 1


def test_using_a_unit_of_work_outside_its_block_is_an_error(writer) -> None:
    uow = UnitOfWork(writer)
    with pytest.raises(RuntimeError, match="outside"):
        uow.run("SELECT 1")

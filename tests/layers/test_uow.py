"""The unit of work: domain rows and outbox rows commit together or not at all."""

from __future__ import annotations

import json
import uuid

import pytest

from covenant.db import CommitOutcomeUnknown, Database, DatabaseUnavailable, Role
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
        return _counts_in(session, project_id, event_id)


def _counts_in(statements, project_id: str, event_id: str) -> tuple[int, int]:
    projects = statements.scalar(
        "SELECT count(*) FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
    )
    outbox = statements.scalar(
        "SELECT count(*) FROM outbox WHERE id = CAST(:id AS uuid)", id=event_id
    )
    return projects, outbox


def _terminate(writer, pid: int) -> None:
    """Kills a writer backend from another connection, as a failover or restart would."""
    admin = Database(Role.WRITER, writer.url, statement_timeout_ms=5000, connect_timeout_s=3)
    try:
        with admin.session() as session:
            assert session.scalar("SELECT pg_terminate_backend(:pid)", pid=pid) is True
    finally:
        admin.close()


def test_commit_writes_the_row_and_its_event(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    with UnitOfWork(writer) as uow:
        uow.run(_INSERT, id=project_id, name="UoW commit")
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
    assert _counts(writer, project_id, event.id) == (1, 1)
    with writer.session() as session:
        row = session.one(
            "SELECT subject, payload, EXISTS (SELECT 1 FROM outbox_pending AS p "
            "WHERE p.seq = o.seq) AS pending FROM outbox AS o WHERE id = CAST(:id AS uuid)",
            id=event.id,
        )
    assert row is not None
    assert row["subject"] == "covenant.projects.created"
    assert row["pending"]  # waits for the bridge (migration 0013's trigger queued it)
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
        # Both rows exist inside the transaction, so their absence afterwards is the rollback.
        assert _counts_in(uow, project_id, event.id) == (1, 1)
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


def test_a_unit_of_work_on_a_dropped_idle_connection_still_commits(writer) -> None:
    with writer.session() as session:
        old_pid = session.backend_pid
    _terminate(writer, old_pid)
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    with UnitOfWork(writer) as uow:  # BEGIN meets the dead connection and reconnects
        uow.run(_INSERT, id=project_id, name="UoW after reconnect")
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
        assert uow.scalar("SELECT pg_backend_pid()") != old_pid
    assert _counts(writer, project_id, event.id) == (1, 1)


def test_a_connection_lost_mid_transaction_fails_and_never_replays_the_write(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    committed: list[bool] = []
    with pytest.raises(DatabaseUnavailable), UnitOfWork(writer) as uow:
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
        uow.after_commit(lambda: committed.append(True))
        _terminate(writer, uow.scalar("SELECT pg_backend_pid()"))
        # Replayed on a fresh connection, this insert would commit alone, without its event.
        uow.run(_INSERT, id=project_id, name="UoW lost mid-transaction")
    assert _counts(writer, project_id, event.id) == (0, 0)
    assert committed == []
    with writer.session() as session:  # the next request gets a working connection
        assert session.scalar("SELECT 1") == 1


def test_a_connection_lost_at_commit_says_the_outcome_is_unknown(writer) -> None:
    project_id = str(uuid.uuid4())
    event = _event(project_id)
    committed: list[bool] = []
    with (
        pytest.raises(CommitOutcomeUnknown, match="may have been applied"),
        UnitOfWork(writer) as uow,
    ):
        uow.run(_INSERT, id=project_id, name="UoW lost before commit")
        uow.add_event(event, aggregate_type="project", aggregate_id=project_id)
        uow.after_commit(lambda: committed.append(True))
        _terminate(writer, uow.scalar("SELECT pg_backend_pid()"))
    assert _counts(writer, project_id, event.id) == (0, 0)
    assert committed == []

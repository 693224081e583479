"""The outbox's publish state (migration 0013): the seqs of unpublished events in
`outbox_pending`, the published ones as batches in `outbox_published`. A late commit of a lower
seq is still read, the prune takes whole batches, and the migration carries a live outbox over."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge import relay
from covenant import db
from covenant.db import Database, Role
from covenant.events import CloudEvent, event_source
from covenant.migrate import MIGRATIONS_DIR, migrate
from covenant.uow import UnitOfWork

QUEUE_MIGRATION = "0013_outbox_pending_queue.sql"


def _event(aggregate: str) -> CloudEvent:
    return CloudEvent(
        type="covenant.projects.updated",
        source=event_source("iad", "bridge-tests"),
        subject=f"projects/{aggregate}",
        data={"project": {"id": aggregate}},
    )


@pytest.fixture
def second_writer(servers) -> Iterator[Database]:
    """A writer of its own (its own connection), for a transaction held open."""
    database = Database(
        Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    yield database
    database.close()


def test_a_lower_seq_committed_late_is_published_after_the_higher_ones(
    bridge_env, second_writer
) -> None:
    """Its seq is taken before the others' but committed after a pass published them: the
    next pass still reads it (reads start from outbox_pending's lowest seq, not from what was
    published last)."""
    aggregate = str(uuid.uuid4())
    late = _event(aggregate)
    with UnitOfWork(second_writer) as slow:
        slow.add_event(late, aggregate_type="project", aggregate_id=aggregate)
        others = bridge_env.write_events(4)
        assert bridge_env.sweep()["published"] == 4  # the late one is not visible yet
    rows = bridge_env.outbox_rows([late.id, *others])
    assert rows[late.id]["seq"] < min(rows[i]["seq"] for i in others)
    assert rows[late.id]["published_at"] is None

    assert bridge_env.sweep()["published"] == 1
    assert bridge_env.stream_ids() == Counter([*others, late.id])
    assert bridge_env.outbox_rows([late.id])[late.id]["published_at"] is not None


def test_prune_takes_whole_batches_oldest_first_up_to_its_limit(bridge_env) -> None:
    relay.prune_published(db.writer(), 3600, limit=1_000_000)  # what earlier tests left due
    batches = [bridge_env.write_events(2) for _ in range(3)]
    for age_h, event_ids in zip((4, 3, 2), batches, strict=True):
        bridge_env.published_ago(event_ids, age_h * 3600)
    everything = [i for batch in batches for i in batch]

    # 3 events: the first batch (2) and the one that crosses the limit.
    assert relay.prune_published(db.writer(), 3600, limit=3) == 4
    assert set(bridge_env.outbox_rows(everything)) == set(batches[2])
    assert relay.prune_published(db.writer(), 3 * 3600, limit=3) == 0  # 2 h old: kept
    assert relay.prune_published(db.writer(), 3600, limit=3) == 2
    assert bridge_env.outbox_rows(everything) == {}
    with db.writer().session() as session:
        left = session.scalar(
            "SELECT count(*) FROM outbox_published WHERE published_at < now() - interval '1 hour'"
        )
    assert left == 0


def test_the_migration_carries_the_outbox_over(scratch_db: Database, tmp_path: Path) -> None:
    """Unpublished and set-aside rows become pending; published rows become batches of the
    rows published at the same time; the writers' next insert is queued by the trigger."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < QUEUE_MIGRATION:
            (before / path.name).write_text(path.read_text(encoding="utf-8"))
    migrate(scratch_db, before)

    first, second = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)
    states: list[tuple[datetime | None, datetime | None]] = [
        (first, None),
        (first, None),
        (None, None),  # unpublished
        (second, None),
        (None, second),  # set aside
        (first, None),  # published with the first two, after an unpublished one
        (None, None),
    ]
    seqs: list[int] = []
    with scratch_db.session() as session:
        for published_at, dead_at in states:
            seqs.append(
                int(
                    session.scalar(
                        "INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload, "
                        "published_at, dead_at) VALUES (CAST(:id AS uuid), "
                        "'covenant.projects.updated', 'project', 'p', '{}', :published, :dead) "
                        "RETURNING seq",
                        id=str(uuid.uuid4()),
                        published=published_at,
                        dead=dead_at,
                    )
                )
            )

    (before / QUEUE_MIGRATION).write_text((MIGRATIONS_DIR / QUEUE_MIGRATION).read_text("utf-8"))
    assert [m.name for m in migrate(scratch_db, before)] == ["outbox_pending_queue"]

    with scratch_db.session() as session:
        pending = [int(r[0]) for r in session.run("SELECT seq FROM outbox_pending ORDER BY seq")]
        published = session.rows(
            "SELECT published_at, seqs::text AS seqs, events FROM outbox_published ORDER BY id"
        )
        columns = {
            r[0]
            for r in session.run(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'"
            )
        }
        added = int(
            session.scalar(
                "INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload) "
                "VALUES (gen_random_uuid(), 'covenant.projects.updated', 'project', 'p', '{}') "
                "RETURNING seq"
            )
        )
        queued = session.scalar("SELECT count(*) FROM outbox_pending WHERE seq = :s", s=added)
    assert pending == [seqs[2], seqs[4], seqs[6]]
    assert [(r["published_at"], r["seqs"], r["events"]) for r in published] == [
        (first, f"{{[{seqs[0]},{seqs[2]}),[{seqs[5]},{seqs[6]})}}", 3),
        (second, f"{{[{seqs[3]},{seqs[4]})}}", 1),
    ]
    assert "published_at" not in columns
    assert queued == 1

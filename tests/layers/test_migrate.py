"""The migration runner: applies in order, records, is idempotent, refuses edited history."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from covenant.db import Database
from covenant.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate


def _tables(database: Database) -> set[str]:
    with database.session() as session:
        return {
            row[0]
            for row in session.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }


def _copy_migrations(target: Path) -> Path:
    target.mkdir()
    for migration in MIGRATIONS_DIR.glob("*.sql"):
        (target / migration.name).write_text(migration.read_text(encoding="utf-8"))
    return target


def test_applies_every_migration_once_and_records_it(scratch_db: Database) -> None:
    applied = migrate(scratch_db)
    assert [m.version for m in applied] == [m.version for m in discover()]
    assert {"countries", "projects", "sectors", "regions", "outbox", "tombstones"} <= _tables(
        scratch_db
    )
    with scratch_db.session() as session:
        recorded = session.rows("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in recorded] == [
        (m.version, m.checksum) for m in discover()
    ]
    assert migrate(scratch_db) == []  # second run: nothing to do, nothing fails


def test_refuses_to_run_when_an_applied_file_was_edited(
    scratch_db: Database, tmp_path: Path
) -> None:
    folder = _copy_migrations(tmp_path / "migrations")
    migrate(scratch_db, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- sneaky edit\n")
    (folder / "9001_new_table.sql").write_text("CREATE TABLE must_not_exist (id int);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(scratch_db, folder)
    assert "must_not_exist" not in _tables(scratch_db)


def test_applies_only_new_files(scratch_db: Database, tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path / "migrations")
    migrate(scratch_db, folder)
    (folder / "9001_add_notes.sql").write_text("CREATE TABLE notes (id int PRIMARY KEY);")
    applied = migrate(scratch_db, folder)
    assert [(m.version, m.name) for m in applied] == [(9001, "add_notes")]
    assert "notes" in _tables(scratch_db)


def test_a_failing_migration_leaves_no_trace(scratch_db: Database, tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path / "migrations")
    migrate(scratch_db, folder)
    (folder / "9001_fine.sql").write_text("CREATE TABLE fine (id int);")
    (folder / "9002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;"
    )
    # The error names the file, the server's reason and the line it points at.
    with pytest.raises(
        MigrationError,
        match=r"^migration 9002_broken\.sql failed and was rolled back: "
        r'relation "no_such_table" does not exist \(line 2\)$',
    ):
        migrate(scratch_db, folder)
    # Each file is its own transaction: the one before stays applied, the broken one is gone.
    assert "fine" in _tables(scratch_db)
    assert "half_done" not in _tables(scratch_db)
    with scratch_db.session() as session:
        recorded = session.run("SELECT version FROM schema_migrations WHERE version > 9000")
        assert recorded == [[9001]]
        # The connection is usable afterwards: no transaction or lock was left behind.
        assert (
            session.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            == 0
        )
        assert session.scalar("SELECT 1") == 1
    (folder / "9002_broken.sql").write_text("CREATE TABLE half_done (id int);")
    assert [m.version for m in migrate(scratch_db, folder)] == [9002]


def test_refuses_a_new_file_numbered_below_an_applied_one(
    scratch_db: Database, tmp_path: Path
) -> None:
    """A database that got 9002 before 9001 would have a history no fresh database has."""
    folder = _copy_migrations(tmp_path / "migrations")
    (folder / "9002_later.sql").write_text("CREATE TABLE later (id int);")
    migrate(scratch_db, folder)
    (folder / "9001_from_a_branch.sql").write_text("CREATE TABLE must_not_exist (id int);")
    with pytest.raises(
        MigrationError, match=r"9001_from_a_branch\.sql is new but numbered below 9002_later"
    ):
        migrate(scratch_db, folder)
    assert "must_not_exist" not in _tables(scratch_db)


def test_two_runners_at_once_apply_each_file_exactly_once(
    scratch_db: Database, tmp_path: Path
) -> None:
    folder = _copy_migrations(tmp_path / "migrations")
    # Slow enough that the second runner arrives while the first is still applying.
    (folder / "9001_slow.sql").write_text(
        "CREATE TABLE slow (id int);\nSELECT pg_sleep(0.5);\nINSERT INTO slow VALUES (1);"
    )
    barrier = threading.Barrier(2)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        # A Database keeps one connection per thread: each runner has its own session.
        try:
            barrier.wait(timeout=10)
            applied.append([m.version for m in migrate(scratch_db, folder)])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            scratch_db.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # One runner applied everything; the other waited for it and found nothing left to do.
    assert sorted(applied, key=len) == [[], [m.version for m in discover(folder)]]
    with scratch_db.session() as session:
        assert session.scalar("SELECT count(*) FROM slow") == 1
        assert session.scalar("SELECT count(*) FROM schema_migrations") == len(discover(folder))


def test_refuses_a_missing_applied_file(scratch_db: Database, tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path / "migrations")
    (folder / "9001_extra.sql").write_text("CREATE TABLE extra (id int);")
    migrate(scratch_db, folder)
    (folder / "9001_extra.sql").unlink()
    with pytest.raises(MigrationError, match="file is missing"):
        migrate(scratch_db, folder)


@pytest.mark.parametrize("name", ["1_short.sql", "0002-dash.sql", "0002_Upper.sql"])
def test_rejects_badly_named_files(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        discover(tmp_path)


def test_rejects_two_files_with_one_number(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        discover(tmp_path)

"""The migration runner: applies in order, records, is idempotent, refuses edited history."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg8000.exceptions import DatabaseError

from covenant.db import Database, Role
from covenant.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate


@pytest.fixture
def scratch_db(servers) -> Iterator[Database]:
    """A fresh, empty database on the primary, dropped afterwards."""
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = Database(
        Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with admin.session() as session:
        session.run(f"CREATE DATABASE {name}")
    scratch = Database(
        Role.WRITER,
        servers.writer_url.rsplit("/", 1)[0] + f"/{name}",
        statement_timeout_ms=10000,
        connect_timeout_s=3,
    )
    yield scratch
    scratch.close()
    with admin.session() as session:
        session.run(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


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
    (folder / "9001_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;"
    )
    with pytest.raises(DatabaseError):
        migrate(scratch_db, folder)
    assert "half_done" not in _tables(scratch_db)
    with scratch_db.session() as session:
        assert session.scalar("SELECT count(*) FROM schema_migrations WHERE version = 9001") == 0


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

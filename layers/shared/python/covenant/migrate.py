"""The one migration runner: used by `make dev`, the tests and the deploy's custom resource.

Files are `NNNN_description.sql`, applied in number order, each in its own transaction and
recorded with its SHA-256 in `schema_migrations`. Running again applies only what is new.
If a file that was applied has since changed or gone, or a new file is numbered below one
already applied (so this database would get a different history from a fresh one), nothing
runs: edit history by adding a file with the next number. A file that fails is rolled back
and reported by name and line. Concurrent runners serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pg8000.exceptions import DatabaseError

from covenant.db import Database, Session, is_connection_lost, writer

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x00C0FE7A  # advisory lock id shared by every migration runner


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree (nothing was applied), or a file
    failed (it was rolled back; the files before it in the run stay applied)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migrations numbered {version:04d}")
        migrations[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(database: Database | None = None, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Applies the pending migrations; returns the ones it applied."""
    wanted = discover(directory)
    with (database or writer()).session() as session:
        session.run("SELECT pg_advisory_lock(:key)", key=_LOCK_KEY)
        try:
            session.run(_CREATE_TABLE)
            pending = _pending(session, wanted)
            for migration in pending:
                _apply(session, migration)
            return pending
        finally:
            session.run("SELECT pg_advisory_unlock(:key)", key=_LOCK_KEY)


def _pending(session: Session, wanted: list[Migration]) -> list[Migration]:
    applied = {
        int(row["version"]): row
        for row in session.rows("SELECT version, name, checksum FROM schema_migrations")
    }
    on_disk = {m.version: m for m in wanted}
    for version, row in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:04d}_{row['name']} is applied but its file is missing"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {version:04d}_{migration.name}.sql was edited after it was applied; "
                "restore it and put the change in a new numbered file"
            )
    pending = [m for m in wanted if m.version not in applied]
    if pending and applied:
        newest = max(applied)
        late = [m for m in pending if m.version < newest]
        if late:
            raise MigrationError(
                f"migration {late[0].version:04d}_{late[0].name}.sql is new but numbered below "
                f"{newest:04d}_{applied[newest]['name']}, which is already applied; "
                "renumber it after the newest applied migration"
            )
    return pending


def _apply(session: Session, migration: Migration) -> None:
    logger.info("applying migration %04d_%s", migration.version, migration.name)
    session.run("BEGIN")
    try:
        session.run(migration.sql)
        session.run(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
            v=migration.version,
            n=migration.name,
            c=migration.checksum,
        )
        session.run("COMMIT")
    except BaseException as exc:
        session.run("ROLLBACK")
        if isinstance(exc, DatabaseError) and not is_connection_lost(exc):
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name}.sql failed and was rolled "
                f"back: {_describe(exc, migration.sql)}"
            ) from exc
        raise


def _describe(exc: DatabaseError, sql: str) -> str:
    """The server's message, with the line of the file it points at when it names one."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    message = str(fields.get("M") or exc)
    position = str(fields.get("P") or "")
    if position.isdigit() and 0 < int(position) <= len(sql) + 1:
        line = sql.count("\n", 0, int(position) - 1) + 1
        message += f" (line {line})"
    return message

"""SnapStart hooks: nothing connected is captured in a snapshot."""

from __future__ import annotations

import importlib
import sys
import types

from covenant import db, snapstart
from devstack.processes import wait_until


def test_before_snapshot_closes_database_connections(reader, writer) -> None:
    old = {}
    for database in (reader, writer):
        with database.session() as session:
            old[database] = session.backend_pid
    snapstart.before_snapshot()
    for database, pid in old.items():
        with database.session() as session:  # a fresh connection opens lazily afterwards
            assert session.backend_pid != pid

            def gone(session: db.Session = session, pid: int = pid) -> bool:
                return not session.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=pid
                )

            wait_until(gone, 5, f"backend {pid} to exit")


def test_registered_closers_run_and_one_failing_does_not_stop_the_rest() -> None:
    closed: list[str] = []

    def broken() -> None:
        raise RuntimeError("already gone")

    snapstart.on_snapshot(broken)
    snapstart.on_snapshot(lambda: closed.append("nats"))
    try:
        snapstart.before_snapshot()
    finally:
        del snapstart._closers[-2:]
    assert closed == ["nats"]


def test_hooks_register_with_the_lambda_runtime(monkeypatch) -> None:
    registered: dict[str, object] = {}
    runtime = types.ModuleType("snapshot_restore_py")
    runtime.register_before_snapshot = lambda hook: registered.setdefault("before", hook)  # type: ignore[attr-defined]
    runtime.register_after_restore = lambda hook: registered.setdefault("after", hook)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", runtime)
    module = importlib.reload(snapstart)
    assert module.registered
    assert registered == {"before": module.before_snapshot, "after": module.after_restore}
    monkeypatch.delitem(sys.modules, "snapshot_restore_py")
    assert not importlib.reload(snapstart).registered  # outside Lambda: nothing to register

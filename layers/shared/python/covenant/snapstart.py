"""SnapStart runtime hooks: nothing connected is captured in a snapshot.

Importing this module (once, at the top of a SnapStart function's handler module) registers:

- before the snapshot: close this process's database connections (`covenant.db.close_all`) and
  any NATS connections registered with `on_snapshot`, so no socket, TLS session or IAM token
  is frozen into the snapshot and then shared by every environment restored from it;
- after each restore: reseed `random` (the snapshot froze its state, so every restored
  environment would draw the same numbers).

Connections are opened lazily, so the first request after a restore opens fresh ones. Outside
Lambda (tests, `make dev`) `snapshot_restore_py` is absent and registering does nothing; the
hooks stay callable directly.
"""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable

from covenant import db

logger = logging.getLogger(__name__)

Hook = Callable[[], None]
_closers: list[Hook] = []


def on_snapshot(close: Hook) -> Hook:
    """Registers another connection closer (e.g. a NATS client's) to run before a snapshot."""
    _closers.append(close)
    return close


def before_snapshot() -> None:
    db.close_all()
    for close in _closers:
        try:
            close()
        except Exception:
            logger.exception("closing a connection before the snapshot failed")


def after_restore() -> None:
    random.seed()


def _register() -> bool:
    try:
        hooks = importlib.import_module("snapshot_restore_py")
    except ImportError:
        return False  # not a SnapStart runtime
    hooks.register_before_snapshot(before_snapshot)
    hooks.register_after_restore(after_restore)
    return True


registered = _register()

"""A Lambda handler for the fork server's tests: what its environment's process holds."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# Before this module imports it: in sys.modules already when the environment was forked from
# the zygote, which imported it (devstack.zygote.PRELOAD).
PRELOADED = "graphql" in sys.modules

import graphql  # noqa: E402 - after the check above, on purpose

IMPORTED_IN = os.getpid()
time.sleep(float(os.environ.get("PROBE_INIT_SLEEP_S", "0")))  # part of the function's init


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # State left on a preloaded library's module: it must stay in this environment.
    marks: list[int] = [*getattr(graphql, "_probe_marks", []), os.getpid()]
    graphql._probe_marks = marks  # type: ignore[attr-defined]
    time.sleep(float(event.get("sleep", 0)))
    if event.get("exit") is not None:
        os._exit(int(event["exit"]))
    return {
        "pid": os.getpid(),
        "importedIn": IMPORTED_IN,
        "preloaded": PRELOADED,
        "marks": marks,
        "utcOffset": time.strftime("%z"),
        "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "session": os.getsid(0),
    }

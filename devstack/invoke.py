"""Invoke one function with an event file, like `sam local invoke`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from covenant.regions import get_region, primary_region
from devstack.errors import DevStackError
from devstack.functions import get_function, invoke
from devstack.stack import data_dir_from_env, read_state


def endpoints() -> dict[str, str]:
    """The process environment's endpoints, else those of a running `make dev`."""
    state = read_state() or {}
    if not state and not os.environ.get("DATABASE_URL"):
        # Falling back to the default ports could reach another checkout's stack.
        raise DevStackError(
            f"no running `make dev` found in {data_dir_from_env()} and DATABASE_URL is not set: "
            "start `make dev` in another terminal (with the same COVENANT_DATA_DIR), or set "
            "DATABASE_URL, DATABASE_READER_URL and NATS_URL"
        )
    found: dict[str, str] = {}
    for name in (
        "DATABASE_URL",
        "DATABASE_READER_URL",
        "NATS_URL",
        "COGNITO_USER_POOL_ID",
        "COGNITO_CLIENT_ID",
        "COGNITO_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
    ):
        value = os.environ.get(name) or state.get(name)
        if value:
            found[name] = value
    return found


def invoke_file(function_name: str, event_path: Path, region_code: str | None) -> Any:
    try:
        event = json.loads(event_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DevStackError(f"cannot read event file {event_path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise DevStackError(f"event file {event_path} is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise DevStackError(f"event file {event_path} must hold a JSON object")
    stage = event.get("requestContext", {}).get("stage") if "requestContext" in event else None
    code = region_code or stage or primary_region().code
    region = get_region(code)
    function = get_function(function_name)
    # Like `sam local invoke`: what the function prints (its JSON log lines, EMF metrics) goes
    # to stderr, so stdout holds the response alone and can be piped into jq.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return invoke(function, region, event, endpoints())
        finally:
            # The bridge keeps its NATS connection on an event loop between invocations, as in
            # a warm Lambda; this process ends here, so close it rather than leave asyncio to
            # complain about pending tasks at exit.
            bridge_connection = sys.modules.get("bridge.connection")
            if bridge_connection is not None:
                bridge_connection.shutdown()

"""Invoke one function with an event file, like `sam local invoke`: in a fresh execution
environment of the local Lambda runtime (a process of its own, with the function's
configuration of that region), whose REPORT line goes to stderr with the function's logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from covenant.regions import get_region, primary_region
from devstack.errors import DevStackError
from devstack.functions import get_function, region_environment
from devstack.runtime import FunctionFailed, function_configs, invoke_once
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
    config = function_configs()[function.name]
    # Like `sam local invoke`: what the function prints (its JSON log lines, EMF metrics) goes
    # to stderr, so stdout holds the response alone and can be piped into jq.
    found = endpoints()
    # A secondary reaches the primary through its hop: the running stack's, or the Lambda
    # endpoint the environment names.
    hop_url = os.environ.get("AWS_ENDPOINT_URL_LAMBDA") or (read_state() or {}).get(
        f"HOP_URL_{region.code}"
    )
    environment = region_environment(function, region, found, hop_url)
    result = invoke_once(config, region, event, environment)
    answer = json.loads(result.payload)
    if result.function_error is not None:
        raise FunctionFailed(function.name, answer)
    return answer

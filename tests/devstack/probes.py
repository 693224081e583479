"""Functions for the local runtime's tests, backed by handlers/runtime_probe.py."""

from __future__ import annotations

from pathlib import Path

from covenant.topology import FunctionSpec, Route
from devstack.runtime import FunctionConfig

HANDLERS = str(Path(__file__).resolve().parent / "handlers")


def probe_function(
    name: str, handler: str, *, timeout_s: float = 10, reserved: int | None = None
) -> FunctionConfig:
    """`runtime_probe.<handler>` as function `name`, on GET and POST /<name>."""
    routes = (Route("GET", f"/{name}", "none"), Route("POST", f"/{name}", "none"))
    return FunctionConfig(
        FunctionSpec(name, f"runtime_probe.{handler}", name, routes),
        memory_mb=256,
        timeout_s=timeout_s,
        reserved_concurrency=reserved,
        code_path=(HANDLERS,),
    )

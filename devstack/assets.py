"""The explorer's browser assets (GraphiQL, React) installed from the npm registry, so the
local explorer works with no internet access. The gateway serves them at /_assets/, laid out
like a CDN: /_assets/<package>@<version>/<file>."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from devstack.errors import DevStackError

PACKAGE_DIR = Path(__file__).parent / "explorer"
ASSETS_PATH = "/_assets"


def install(build_dir: Path) -> Path:
    """`npm ci` of the pinned explorer packages into build_dir; returns its node_modules.
    Reused while package-lock.json is unchanged."""
    lock = (PACKAGE_DIR / "package-lock.json").read_bytes()
    target = build_dir / f"explorer-{hashlib.sha256(lock).hexdigest()[:12]}"
    modules = target / "node_modules"
    if (target / ".complete").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise DevStackError("npm is needed for the GraphQL explorer's assets; install Node.js")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PACKAGE_DIR / name, target / name)
    result = subprocess.run(
        [npm, "ci", "--silent", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise DevStackError(f"npm ci for the explorer assets failed: {result.stderr.strip()}")
    (target / ".complete").touch()
    return modules


def resolve(modules: Path, request_path: str) -> Path | None:
    """The file for /_assets/<package>@<version>/<file>, or None (unknown, other version, or
    a path that would leave the package)."""
    rest = request_path.removeprefix(ASSETS_PATH + "/")
    spec, _, file = rest.partition("/")
    name, _, version = spec.rpartition("@")
    if not name or not version or not file:
        return None
    package = (modules / name).resolve()
    if modules.resolve() not in package.parents:
        return None
    try:
        installed = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    if installed != version:
        return None
    candidate = (package / file).resolve()
    if package not in candidate.parents or not candidate.is_file():
        return None
    return candidate

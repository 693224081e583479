"""The Node.js clients some tests drive (WatermelonDB, graphql-ws, Playwright): each folder
pins its packages in package.json and package-lock.json, installed by the tests themselves."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def npm_ci(folder: Path) -> None:
    """`npm ci` of `folder`'s pinned packages, redone when its package-lock.json changes."""
    npm = shutil.which("npm")
    assert npm is not None, f"Node.js and npm are needed for the client in {folder.name}"
    lock = folder / "package-lock.json"
    stamp = folder / "node_modules" / ".lock-copy"
    if not stamp.exists() or stamp.read_bytes() != lock.read_bytes():
        subprocess.run(
            [npm, "ci", "--silent", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        )
        stamp.write_bytes(lock.read_bytes())

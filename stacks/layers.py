"""The two Lambda layers: the shared code (layers/shared) and the third-party dependencies,
built at synth time by pip for the Lambda platform (no Docker), cached by their pins."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from aws_cdk import aws_lambda as lambda_
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / ".local" / "build"
LAMBDA_PYTHON = "3.13"
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_13
LAMBDA_ARCHITECTURE = lambda_.Architecture.ARM_64
_PLATFORM = "manylinux2014_aarch64"


def runtime_requirements() -> list[str]:
    """The pinned runtime dependencies of pyproject.toml: what the functions import."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requirements: list[str] = project["project"]["dependencies"]
    return requirements


def build_dependencies(requirements: list[str]) -> Path:
    """pip-installs the requirements for Lambda's Python on arm64 into a folder laid out as a
    layer (python/...); reused while the pins are unchanged."""
    digest = hashlib.sha256(
        "\n".join([LAMBDA_PYTHON, _PLATFORM, *sorted(requirements)]).encode()
    ).hexdigest()[:16]
    target = BUILD_DIR / f"deps-{digest}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(  # noqa: S603 - fixed arguments, pinned requirements from pyproject
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target / "python"),
            "--platform",
            _PLATFORM,
            "--implementation",
            "cp",
            "--python-version",
            LAMBDA_PYTHON,
            "--only-binary=:all:",
            "--no-compile",
            *requirements,
        ],
        check=True,
    )
    (target / ".complete").touch()
    return target


class SharedLayers(Construct):
    """Both layers in one region; functions take `layers`."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.shared = lambda_.LayerVersion(
            self,
            "SharedCode",
            code=lambda_.Code.from_asset(
                str(REPO_ROOT / "layers" / "shared"), exclude=["**/__pycache__"]
            ),
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[LAMBDA_ARCHITECTURE],
            description="Covenant shared code: config, database, unit of work, outbox",
        )
        self.dependencies = lambda_.LayerVersion(
            self,
            "Dependencies",
            code=lambda_.Code.from_asset(str(build_dependencies(runtime_requirements()))),
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[LAMBDA_ARCHITECTURE],
            description="Covenant third-party dependencies (pinned in pyproject.toml)",
        )

    @property
    def layers(self) -> list[lambda_.ILayerVersion]:
        return [self.dependencies, self.shared]

"""The sync contract with the client it exists for: WatermelonDB 0.28 (`synchronize()` with
`sendCreatedAsUpdated: true`, the LokiJS adapter in memory), in Node, installed from npm, against
the gateway and the mobile function's execution environments (tests/mobile_client)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from covenant import db
from devstack.cognito import LocalCognito
from devstack.gateway import Gateway
from devstack.jwt_auth import JwtVerifier

from ...node_client import npm_ci
from .conftest import seeded
from .watermelon import http

CLIENT = Path(__file__).resolve().parents[2] / "mobile_client"

pytestmark = pytest.mark.usefixtures("clean_auth_failures")


def _install() -> Path:
    npm_ci(CLIENT)
    return CLIENT / "sync_scenarios.mjs"


@pytest.fixture(scope="module")
def gateway(endpoints: dict[str, str], cognito: LocalCognito) -> Iterator[Gateway]:
    verifier = JwtVerifier(
        issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    server = Gateway(0, endpoints, verifier=verifier)
    server.serve_in_thread()
    yield server
    server.shutdown()
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE name LIKE 'WDB %'")


@pytest.fixture(scope="module")
def scenarios(gateway: Gateway) -> dict[str, Any]:
    script = _install()
    editor = seeded("editor")
    status, _, body = http(
        "POST",
        f"{gateway.url}/syd/auth/login",
        body={"email": editor.email, "password": editor.password},
    )
    assert status == 200, body
    node = shutil.which("node")
    assert node is not None
    run = subprocess.run(
        [node, str(script), f"{gateway.url}/syd", body["access_token"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_a_local_delete_of_a_synced_record_wins_its_next_sync(scenarios) -> None:
    seen = scenarios["deleteWins"]
    assert seen["onServerAfterCreate"] is True
    assert (seen["onServerAfterDelete"], seen["onDeviceAfterDelete"]) == (False, False)


def test_a_record_created_without_a_status_syncs_with_the_default(scenarios) -> None:
    seen = scenarios["unsetStatus"]
    assert seen["error"] is None
    assert (seen["status"], seen["localStatus"]) == ("planning", "synced")


def test_watermelondb_logs_no_sync_error(scenarios) -> None:
    assert [line for line in scenarios["logged"] if "[Sync]" in line] == []

"""A real headless Chromium (Debian's package) opens /<region>/graphql through the local
gateway, runs the explorer's query and sees the data, with no internet access: GraphiQL comes
from the gateway's /_assets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import assets
from devstack.gateway import Gateway
from devstack.processes import free_port

from ...node_client import npm_ci

REPO_ROOT = Path(__file__).resolve().parents[3]
BROWSER_TESTS = REPO_ROOT / "tests" / "browser"
BUILD_DIR = REPO_ROOT / ".local" / "build"


def _ensure_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("this test needs Debian's chromium: sudo apt-get install -y chromium")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            timeout=900,
        )
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


def _ensure_playwright() -> Path:
    npm_ci(BROWSER_TESTS)
    return BROWSER_TESTS / "explorer.mjs"


@pytest.fixture(scope="module")
def gateway(servers) -> Iterator[Gateway]:
    server = Gateway(
        free_port(),
        {
            "DATABASE_URL": servers.writer_url,
            "DATABASE_READER_URL": servers.reader_url,
            "GRAPHQL_EXPLORER_ASSETS_URL": assets.ASSETS_PATH,
        },
        assets=assets.install(BUILD_DIR),
    )
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()


def test_the_explorer_runs_a_query_in_a_real_browser(gateway: Gateway) -> None:
    chromium = _ensure_chromium()
    script = _ensure_playwright()
    result = subprocess.run(
        ["node", str(script), f"{gateway.url}/syd/graphql", '"code": "USA"'],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHROMIUM": chromium},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["title"] == "Covenant GraphQL (syd)"
    assert shown["failed"] == []  # every asset came from the gateway
    # The result pane shows the response as text (code folding and all): by GDP, descending.
    response = " ".join(shown["response"].split())
    assert '"totalCount": 195' in response, response
    assert response.index('"code": "USA"') < response.index('"code": "CHN"'), response


def test_assets_are_served_only_for_the_pinned_versions(gateway: Gateway) -> None:
    import urllib.error
    import urllib.request

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(gateway.url + path, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert status("/_assets/graphiql@3.8.3/graphiql.min.js") == 200
    assert status("/_assets/graphiql@9.9.9/graphiql.min.js") == 404
    assert status("/_assets/graphiql@3.8.3/../../../../etc/passwd") == 404
    assert status("/_assets/graphiql@3.8.3/%2e%2e/react/package.json") == 404

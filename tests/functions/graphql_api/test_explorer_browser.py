"""A real headless Chromium (Debian's package) opens /<region>/graphql through the local
gateway, runs the explorer's query and sees the data, with no internet access: GraphiQL comes
from the gateway's /_assets. Against the whole local stack, it runs a subscription and shows a
mutation made over HTTP in another region arriving through graphql-ws."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import assets
from devstack.gateway import Gateway
from devstack.processes import free_port
from devstack.stack import DevStack
from graphql_api import explorer

from ...node_client import npm_ci
from ..realtime import test_clients as realtime

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


def test_the_pinned_integrity_is_that_of_the_installed_files(gateway: Gateway) -> None:
    """The page's Subresource Integrity values are those of what npm installs (and the CDN
    serves): a version bump without new values fails here, not in a user's browser."""
    assert gateway.assets is not None
    for asset in explorer.ASSETS:
        found = assets.resolve(gateway.assets, f"{assets.ASSETS_PATH}/{asset.path}")
        assert found is not None, asset.path
        digest = base64.b64encode(hashlib.sha384(found.read_bytes()).digest()).decode()
        assert asset.integrity == f"sha384-{digest}", asset.path


# --- subscriptions, against the whole local stack -----------------------------------------

stack = realtime.stack  # the local stack as `make dev` runs it (gateway, fan-out, Cognito)
SUBSCRIPTION = (
    "subscription { projectChanged { action position project { name region { code } } } }"
)


class ExplorerSubscription:
    """explorer_subscription.mjs: GraphiQL running a subscription; its JSON lines as they come."""

    def __init__(self, url: str, headers: dict[str, str], probe_url: str) -> None:
        arguments = [url, SUBSCRIPTION, json.dumps(headers), probe_url]
        self.process = subprocess.Popen(
            ["node", str(BROWSER_TESTS / "explorer_subscription.mjs"), *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHROMIUM": _ensure_chromium()},
        )
        self.lines: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line["event"] == kind]

    def shows(self, text: str) -> bool:
        responses = self.events("response")
        return bool(responses) and text in responses[-1]["text"]

    def wait_for(self, kind: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.events(kind):
            if time.monotonic() > deadline or self.process.poll() is not None:
                stderr = self.process.stderr.read() if self.process.poll() is not None else ""
                raise AssertionError(f"no {kind!r} from the browser: {self.lines}\n{stderr}")
            time.sleep(0.05)

    def finish(self) -> None:
        """Ends the run: the page tries the WebSocket its policy must refuse, then closes."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.e2e
def test_the_explorer_shows_a_mutation_arriving_on_a_subscription(stack: DevStack) -> None:
    _ensure_playwright()
    assert stack.gateway is not None
    editor = realtime.token(stack, "editor")
    ws_base = stack.gateway.url.replace("http://", "ws://")
    session = ExplorerSubscription(
        f"{stack.gateway.url}/jnb/graphql",
        {"Authorization": f"Bearer {editor}"},
        probe_url=f"{ws_base}/ams/graphql",  # same host, another path: outside the policy
    )
    try:
        session.wait_for("running")
        # A subscription without `since` starts with the changes after the fan-out first sees
        # it: change projects until one arrives, then the change this test is about.
        for attempt in range(20):
            name = realtime.create_project(stack, "iad", editor, name=f"Warm-up {attempt}")["name"]
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not session.shows(name):
                time.sleep(0.05)
            if session.shows(name):
                break
        else:
            raise AssertionError(f"the subscription never went live: {session.lines[-5:]}")
        created = realtime.create_project(stack, "syd", editor)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not session.shows(created["name"]):
            time.sleep(0.05)
        shown = session.events("response")[-1]["text"]
    finally:
        session.finish()
    pane = " ".join(shown.split())
    assert f'"name": "{created["name"]}"' in pane, pane
    assert '"action": "CREATED"' in pane and '"code": "jnb"' in pane, pane
    sent = [line["frame"] for line in session.events("sent")]
    # The token from GraphiQL's headers editor, as graphql-transport-ws carries it.
    assert sent[0] == {"type": "connection_init", "payload": {"authorization": f"Bearer {editor}"}}
    assert sent[1]["type"] == "subscribe"
    assert sent[1]["payload"]["query"] == SUBSCRIPTION
    # All of that within the page's Content-Security-Policy, which refuses anything broader.
    probe = session.events("probe")
    assert probe == [{"event": "probe", "blocked": True}], session.lines[-5:]
    before_probe = session.lines[: session.lines.index(probe[0])]
    violations = [line for line in before_probe if line["event"] == "violation"]
    probed = (ws_base, f"{ws_base}/ams/graphql")  # Chrome may report only the origin
    assert [v for v in violations if v["blocked"] not in probed] == [], violations

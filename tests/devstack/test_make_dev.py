"""End to end: `make dev` on its own data folder and ports, as a developer runs it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from covenant.db import Database, Role
from covenant.regions import region_codes
from devstack.processes import port_in_use, wait_until
from devstack.stack import isolated_environment

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@dataclass
class DevRun:
    process: subprocess.Popen[str]
    output: list[str]
    env: dict[str, str]

    def wait_for(self, text: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.output):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {text!r}; output:\n{''.join(self.output)}")

    def ctrl_c(self) -> None:
        """Ctrl-C in the terminal: SIGINT to the whole foreground group (make and Python).
        make then reports the interrupt itself; the stack must have stopped everything."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=60)
        assert code in (0, -signal.SIGINT), "".join(self.output)
        assert "Stopped every process the stack started." in "".join(self.output)
        assert "Traceback" not in "".join(self.output)
        assert "Task was destroyed" not in "".join(self.output)  # NATS connection closed

    def kill_hard(self) -> None:
        """The terminal is killed (SIGKILL to make and Python): nothing gets to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="covenant-dev-"))
    data_dir.chmod(0o755)
    env = isolated_environment(data_dir)
    env["COVENANT_SWEEP_EVERY_S"] = "1"  # the bridge connects to NATS before the test ends
    yield env
    # Stops whatever a failed test left running from the folder, then deletes it.
    subprocess.run(
        [sys.executable, "-m", "devstack", "reset"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(data_dir, ignore_errors=True)


def _start(env: dict[str, str]) -> DevRun:
    process = subprocess.Popen(
        ["make", "--no-print-directory", "dev", f"PYTHON={sys.executable}"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so Ctrl-C can be sent to it
    )
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return DevRun(process, output, env)


def _migrated_through_an_environment(run: DevRun) -> None:
    """The migrator ran as the deploy's custom resource runs it: in an execution environment
    of its own (a cold start: Lambda's REPORT line with its init duration), and succeeded."""
    reports = [line for line in run.output if "[covenant-iad-migrator] REPORT RequestId:" in line]
    assert len(reports) == 1, "".join(run.output)
    assert "Init Duration:" in reports[0] and "Status:" not in reports[0], reports[0]
    assert any('"database ready"' in line for line in run.output), "".join(run.output)


def _get_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def _post_json(url: str, body: dict, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _mutation_reaches_the_stream(base: str, env: dict[str, str]) -> tuple[str, float]:
    """Signs in as the seeded editor, creates a project through the gateway, and returns its
    id and the seconds from the mutation's answer until its event is in COVENANT."""
    session = _post_json(
        f"{base}/ams/auth/login",
        {"email": "editor@covenant.local", "password": "Covenant-Editor-2026!"},
    )
    answer = _post_json(
        f"{base}/ams/graphql",
        {
            "query": 'mutation { createProject(input: {name: "Make Dev Stream Check", '
            'sectorId: "energy", countryCode: "NLD", budgetUsd: 1000000}) { id } }'
        },
        {"Authorization": f"Bearer {session['access_token']}"},
    )
    answered = time.monotonic()
    assert "errors" not in answer, answer
    project_id = answer["data"]["createProject"]["id"]

    async def wait_for_event() -> float:
        import nats
        from nats.js.errors import NotFoundError

        connection = await nats.connect(f"nats://127.0.0.1:{env['COVENANT_NATS_PORT']}")
        try:
            stream = connection.jetstream()
            while time.monotonic() - answered < 10:
                try:
                    message = await stream.get_last_msg("COVENANT", "covenant.projects.created")
                except NotFoundError:
                    message = None
                if message is not None and project_id in (message.data or b"").decode():
                    return time.monotonic() - answered
                await asyncio.sleep(0.01)
            raise AssertionError(f"project {project_id} never reached COVENANT")
        finally:
            await connection.close()

    return project_id, asyncio.run(wait_for_event())


def _request(method: str, url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _follow_from_a_phone(base: str, country: str) -> str:
    """The seeded viewer follows `country` and registers a phone; the device's id."""
    session = _post_json(
        f"{base}/ams/auth/login",
        {"email": "viewer@covenant.local", "password": "Covenant-Viewer-2026!"},
    )
    token = session["access_token"]
    follows = _request(
        "PUT", f"{base}/ams/follows", {"projects": [], "countries": [country]}, token
    )
    assert follows == {"projects": [], "countries": [country]}
    device = _request("POST", f"{base}/ams/devices", {"platform": "fcm", "token": "f" * 152}, token)
    return str(device["id"])


def _wait_for_push(env: dict[str, str], device_id: str) -> None:
    writer = Database(
        Role.WRITER,
        f"postgresql://postgres@127.0.0.1:{env['COVENANT_PG_PORT']}/covenant",
        statement_timeout_ms=5000,
        connect_timeout_s=3,
    )

    def pushed() -> bool:
        with writer.session() as session:
            return bool(
                session.scalar(
                    "SELECT count(*) FROM push_deliveries WHERE device_id = CAST(:id AS uuid)",
                    id=device_id,
                )
            )

    try:
        wait_until(pushed, 30, "the change to be pushed to the follower's phone")
    finally:
        writer.close()


def _wait_for_free_ports(env: dict[str, str]) -> None:
    """Every port of the stack is released (the kernel may take a moment after the exit)."""
    wait_until(
        lambda: not any(port_in_use(port) for port in _ports(env)), 10, "the ports to be free"
    )


def _ports(env: dict[str, str]) -> list[int]:
    return [
        int(env[name])
        for name in (
            "COVENANT_PORT",
            "COVENANT_PG_PORT",
            "COVENANT_PG_REPLICA_PORT",
            "COVENANT_NATS_PORT",
            "COVENANT_NATS_MONITOR_PORT",
            "COVENANT_MOTO_PORT",
        )
    ]


def test_make_dev_serves_six_healthy_regions_and_stops_cleanly(stack_env) -> None:
    run = _start(stack_env)
    try:
        run.wait_for("Press Ctrl-C to stop.")
        _migrated_through_an_environment(run)
        base = f"http://127.0.0.1:{stack_env['COVENANT_PORT']}"
        for code in region_codes():
            assert f"{base}/{code}/health" in "".join(run.output)
            status, body = _get_json(f"{base}/{code}/health")
            assert (status, body["status"], body["region"]) == (200, "healthy", code)

        # A second start on the same data folder is refused with a message, not a traceback.
        second = subprocess.run(
            [sys.executable, "-m", "devstack", "run"],
            cwd=REPO_ROOT,
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already running" in second.stderr
        assert "Traceback" not in second.stderr

        # So is a reset: the running stack's data stays.
        reset = subprocess.run(
            ["make", "--no-print-directory", "reset", f"PYTHON={sys.executable}"],
            cwd=REPO_ROOT,
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reset.returncode != 0
        assert "Stop it with Ctrl-C in its terminal, then reset." in reset.stderr
        assert (Path(stack_env["COVENANT_DATA_DIR"]) / "postgres" / "primary").is_dir()

        # The same for a port that is taken, from another data folder.
        other = dict(stack_env, COVENANT_DATA_DIR=tempfile.mkdtemp(prefix="covenant-dev-"))
        busy = subprocess.run(
            [sys.executable, "-m", "devstack", "run"],
            cwd=REPO_ROOT,
            env=other,
            capture_output=True,
            text=True,
            timeout=60,
        )
        shutil.rmtree(other["COVENANT_DATA_DIR"], ignore_errors=True)
        assert busy.returncode == 1
        assert f"port {stack_env['COVENANT_PORT']} (the gateway) is already in use" in busy.stderr
        assert "Traceback" not in busy.stderr

        # A viewer follows the Netherlands from a phone (handed from ams to iad).
        device_id = _follow_from_a_phone(base, "NLD")

        # A mutation sent to /ams/graphql by a signed-in editor is in the COVENANT stream
        # within a second of its answer (issue: the bridge under make dev).
        project_id, elapsed = _mutation_reaches_the_stream(base, stack_env)
        assert elapsed <= 1.0, f"project {project_id} reached COVENANT after {elapsed:.2f} s"

        # ... and, through MOBILE_PUSH, NOTIFICATIONS and NOTIFIER (make dev's consumer loops),
        # is pushed to the follower's phone (moto's SNS mobile push).
        _wait_for_push(stack_env, device_id)

        # The scheduled bridge run has opened its NATS connection; Ctrl-C must close it.
        run.wait_for("connected to NATS")
    finally:
        run.ctrl_c()
    _wait_for_free_ports(stack_env)


def test_data_survives_a_restart(stack_env) -> None:
    run = _start(stack_env)
    try:
        run.wait_for("Press Ctrl-C to stop.")
        writer = Database(
            Role.WRITER,
            f"postgresql://postgres@127.0.0.1:{stack_env['COVENANT_PG_PORT']}/covenant",
            statement_timeout_ms=5000,
            connect_timeout_s=3,
        )
        with writer.session() as session:
            session.run(
                "UPDATE countries SET covenant_status = 'active', joined_at = now() "
                "WHERE code = 'NOR'"
            )
        writer.close()
    finally:
        run.ctrl_c()
    run = _start(stack_env)
    try:
        run.wait_for("Press Ctrl-C to stop.")
        _migrated_through_an_environment(run)  # again, applying nothing
        reader = Database(
            Role.READER,
            f"postgresql://postgres@127.0.0.1:{stack_env['COVENANT_PG_REPLICA_PORT']}/covenant",
            statement_timeout_ms=5000,
            connect_timeout_s=3,
        )
        with reader.session() as session:
            # Seeding again on restart keeps operational state: NOR stays active.
            assert session.scalar("SELECT covenant_status FROM countries WHERE code = 'NOR'") == (
                "active"
            )
            assert session.scalar("SELECT count(*) FROM countries") == 195
        reader.close()
    except BaseException:
        run.ctrl_c()
        raise

    # A stack killed outright leaves its servers running; the next start stops them, says so,
    # and comes up on the same data.
    run.kill_hard()
    run = _start(stack_env)
    try:
        run.wait_for("Press Ctrl-C to stop.")
        output = "".join(run.output)
        assert "left running from" in output and "PostgreSQL primary" in output, output
        assert "nats-server" in output.split("left running from")[0], output
        base = f"http://127.0.0.1:{stack_env['COVENANT_PORT']}"
        status, body = _get_json(f"{base}/ams/health")
        assert (status, body["status"]) == (200, "healthy")
    finally:
        run.ctrl_c()
    _wait_for_free_ports(stack_env)

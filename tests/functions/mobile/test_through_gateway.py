"""The app's whole path over HTTP: the local gateway (API Gateway's JWT authorizer included)
in front of the mobile handler, Cognito tokens from the local user pool, and devices that
synchronize() the way WatermelonDB does."""

from __future__ import annotations

import json
import socket
import urllib.error
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db
from devstack.cognito import LocalCognito
from devstack.gateway import Gateway
from devstack.jwt_auth import JwtVerifier
from devstack.processes import free_port

from .conftest import seeded, wait_for_lock_waiters
from .watermelon import Device, SyncFailed, http

pytestmark = pytest.mark.usefixtures("clean_auth_failures")


@pytest.fixture(scope="module")
def gateway(endpoints: dict[str, str], cognito: LocalCognito) -> Iterator[Gateway]:
    verifier = JwtVerifier(
        issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    # The secondaries' writes reach the primary's function through their hops.
    server = Gateway(free_port(), endpoints, verifier=verifier)
    server.serve_in_thread()
    yield server
    server.shutdown()


@pytest.fixture
def created(servers) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    # Their tombstones stay: deleting the newest ones would move the change cursor back,
    # which no production path does, and a push's cursor check relies on it.
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)


def _url(gateway: Gateway, region: str, path: str) -> str:
    return f"{gateway.url}/{region}{path}"


def _sign_in(gateway: Gateway, group: str, region: str = "ams") -> dict[str, Any]:
    user = seeded(group)
    status, _, body = http(
        "POST",
        _url(gateway, region, "/auth/login"),
        body={"email": user.email, "password": user.password},
    )
    assert status == 200, body
    return body


def _device(gateway: Gateway, region: str, group: str = "editor") -> Device:
    return Device(f"{gateway.url}/{region}", _sign_in(gateway, group, region)["access_token"])


def _new_project(device: Device, created: list[str], name: str) -> str:
    project_id = device.create(
        "projects",
        name=name,
        description="",
        sector_id="education",
        country_code="AUS",
        region="",
        status="active",
        budget_usd=3_000_000,
        impact_score=5.5,
        progress=10,
        version=0,
        created_at=0,
        updated_at=0,
    )
    created.append(project_id)
    return project_id


def _events(project_id: str) -> list[str]:
    with db.writer().session() as session:
        return [
            r[0]
            for r in session.run(
                "SELECT subject FROM outbox WHERE aggregate_id = :id ORDER BY seq", id=project_id
            )
        ]


def test_health_answers_without_a_token(gateway) -> None:
    status, _, body = http("GET", _url(gateway, "jnb", "/health"))
    assert status == 200
    assert {"status", "latency", "timestamp", "region"} <= set(body)
    assert body["status"] == "healthy" and body["region"] == "jnb"


def test_sign_in_profile_refresh_and_sign_out_over_http(gateway, wait_for_replica) -> None:
    email = f"http-{uuid.uuid4().hex[:10]}@example.org"
    status, _, session = http(
        "POST",
        _url(gateway, "sin", "/auth/register"),
        body={"email": email, "password": "Over-The-Wire-2026!", "name": "Wire User"},
    )
    assert status == 201 and session["user"]["roles"] == ["viewer"]
    status, _, me = http("GET", _url(gateway, "sin", "/auth/me"), token=session["access_token"])
    assert status == 200 and me["email"] == email
    status, _, refreshed = http(
        "POST",
        _url(gateway, "sfo", "/auth/refresh"),
        body={"refresh_token": session["refresh_token"]},
    )
    assert status == 200 and "refresh_token" not in refreshed
    # Routes that need a token never reach the function without a valid one.
    status, _, body = http("GET", _url(gateway, "sin", "/sync"))
    assert (status, body) == (401, {"message": "Unauthorized"})
    forged = session["access_token"][:-6] + "AAAAAA"
    assert http("GET", _url(gateway, "sin", "/auth/me"), token=forged)[0] == 401
    import time

    time.sleep(1.1)
    status, _, _ = http(
        "POST", _url(gateway, "sin", "/auth/logout"), token=refreshed["access_token"]
    )
    assert status == 200
    wait_for_replica()
    # The gateway still accepts the (unexpired, well-signed) token; the function refuses it.
    status, _, body = http("GET", _url(gateway, "sin", "/sync"), token=session["access_token"])
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")
    status, _, _ = http(
        "POST",
        _url(gateway, "sin", "/auth/refresh"),
        body={"refresh_token": session["refresh_token"]},
    )
    assert status == 401
    status, _, body = http(
        "POST",
        _url(gateway, "sin", "/auth/login"),
        body={"email": email, "password": "Nope-2026!xyzw"},
    )
    assert (status, body) == (
        401,
        {"code": "UNAUTHENTICATED", "message": "Wrong email or password."},
    )


def test_two_devices_edit_the_same_project(gateway, created, wait_for_replica) -> None:
    phone, tablet = _device(gateway, "syd"), _device(gateway, "sin")
    phone.synchronize()
    project_id = _new_project(phone, created, "Two Devices Library Network")
    phone.synchronize()
    wait_for_replica()
    tablet.synchronize()
    assert tablet.get("projects", project_id)["progress"] == 10

    tablet.update("projects", project_id, progress=70, name="Two Devices Library Network II")
    tablet.pull()  # the tablet's synchronize() pulls ...
    phone.update("projects", project_id, progress=40)
    phone.synchronize()  # ... while the phone pushes its edit
    wait_for_replica()
    with pytest.raises(SyncFailed) as refused:
        tablet.push()  # ... then the tablet pushes: the project changed since its pull
    assert refused.value.status == 409
    assert refused.value.body["conflicts"] == {"projects": [project_id]}

    tablet.synchronize()  # pulls the phone's edit, keeps its own columns, pushes, wins
    wait_for_replica()
    phone.synchronize()
    for device in (phone, tablet):
        record = device.get("projects", project_id)
        assert (record["progress"], record["name"]) == (70, "Two Devices Library Network II")
        assert record["_status"] == "synced"
    assert _events(project_id) == [
        "covenant.projects.created",
        "audit.projects.created",
        "covenant.projects.updated",
        "audit.projects.updated",
        "covenant.projects.updated",
        "audit.projects.updated",
    ]


def test_a_delete_on_one_device_disappears_from_the_other(
    gateway, created, wait_for_replica
) -> None:
    phone, tablet = _device(gateway, "ams"), _device(gateway, "jnb", "admin")
    project_id = _new_project(phone, created, "Deleted Across Devices")
    phone.synchronize()
    wait_for_replica()
    tablet.synchronize()
    assert tablet.get("projects", project_id) is not None
    tablet.delete("projects", project_id)
    tablet.synchronize()
    wait_for_replica()
    phone.synchronize()
    assert phone.get("projects", project_id) is None
    assert project_id not in phone.tables["projects"]


def test_a_push_retried_after_a_timeout_is_applied_once(
    gateway, created, servers, wait_for_replica
) -> None:
    phone = _device(gateway, "sfo")
    project_id = _new_project(phone, created, "Retried After Timeout")
    phone.synchronize()
    wait_for_replica()
    phone.update("projects", project_id, progress=85)
    phone.pull()
    changes = phone.local_changes()
    blocker = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    phone.push_timeout = 1.0
    with blocker.session() as session:
        session.run("BEGIN")
        session.run("SELECT 1 FROM projects WHERE id = CAST(:id AS uuid) FOR UPDATE", id=project_id)
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            phone.push(changes)  # the server is slow: the app gives up waiting
        wait_for_lock_waiters(1)  # ... while the push, its receipt claimed, waits on the row
        session.run("ROLLBACK")  # the first push now goes through on the server
    blocker.close()
    phone.push_timeout = 10.0
    headers = phone.push(changes)  # the app retries the same push
    assert headers.get("Idempotent-Replayed") == "true"
    wait_for_replica()
    phone.synchronize()
    assert phone.get("projects", project_id)["progress"] == 85
    assert _events(project_id).count("covenant.projects.updated") == 1


def test_a_pull_racing_a_long_write_transaction_gets_it_next_time(
    gateway, created, servers, wait_for_replica
) -> None:
    writer_device, reader_device = _device(gateway, "iad"), _device(gateway, "ams", "viewer")
    slow_id = _new_project(writer_device, created, "Race Slow Commit")
    fast_id = _new_project(writer_device, created, "Race Fast Commit")
    writer_device.synchronize()
    wait_for_replica()
    reader_device.synchronize()
    slow = db.Database(
        db.Role.WRITER, servers.writer_url, statement_timeout_ms=10000, connect_timeout_s=3
    )
    with slow.session() as session:
        session.run("BEGIN")
        session.run("UPDATE projects SET progress = 99 WHERE id = CAST(:id AS uuid)", id=slow_id)
        writer_device.update("projects", fast_id, progress=33)
        writer_device.synchronize()
        wait_for_replica()
        reader_device.synchronize()  # pulls while the slow transaction is still open
        assert reader_device.get("projects", fast_id)["progress"] == 33
        assert reader_device.get("projects", slow_id)["progress"] == 10
        session.run("COMMIT")
    slow.close()
    wait_for_replica()
    reader_device.synchronize()
    assert reader_device.get("projects", slow_id)["progress"] == 99


def test_a_viewer_device_cannot_push(gateway, created) -> None:
    viewer = _device(gateway, "ams", "viewer")
    viewer.synchronize()
    project_id = _new_project(viewer, created, "Viewer Attempt")
    with pytest.raises(SyncFailed) as refused:
        viewer.push()
    assert refused.value.status == 403
    assert refused.value.body["code"] == "FORBIDDEN"
    assert _events(project_id) == []


def test_hundreds_of_concurrent_callers_each_get_their_own_answer(gateway, created) -> None:
    """Viewers pushing creates (refused: 403) beside editors pushing nothing (200, nothing
    applied) and both asking /auth/me, all at once in three regions: every answer and every
    stored row belongs to the caller who sent it (issue: handlers sharing one process)."""
    import asyncio

    import aiohttp

    viewer = _sign_in(gateway, "viewer")
    editor = _sign_in(gateway, "editor")
    status, _, pulled = http(
        "GET",
        _url(gateway, "ams", "/sync?last_pulled_at=null&schema_version=1"),
        token=editor["access_token"],
        timeout=30,
    )
    assert status == 200
    cursor = pulled["timestamp"]
    marker = f"concurrent-{uuid.uuid4().hex[:8]}"

    def viewer_push(n: int) -> dict[str, Any]:
        project = {
            "id": str(uuid.uuid4()),
            "name": f"{marker}-{n}",
            "description": "",
            "sector_id": "energy",
            "country_code": "KEN",
            "region": "",
            "status": "active",
            "budget_usd": 1000 + n,
            "impact_score": 1,
            "progress": 0,
            "version": 0,
            "created_at": 0,
            "updated_at": 0,
        }
        return {"projects": {"created": [project], "updated": [], "deleted": []}}

    empty = {"projects": {"created": [], "updated": [], "deleted": []}}

    async def burst() -> list[tuple[str, str, int, Any]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call(who: str, kind: str, n: int) -> tuple[str, str, int, Any]:
                token = (viewer if who == "viewer" else editor)["access_token"]
                region = ("ams", "syd", "jnb")[n % 3]
                headers = {"Authorization": f"Bearer {token}"}
                if kind == "me":
                    request = session.get(_url(gateway, region, "/auth/me"), headers=headers)
                else:
                    body = viewer_push(n) if who == "viewer" else empty
                    request = session.post(
                        _url(gateway, region, f"/sync?last_pulled_at={cursor}"),
                        headers={**headers, "Content-Type": "text/plain;charset=UTF-8"},
                        data=json.dumps(body),
                    )
                async with request as response:
                    return who, kind, response.status, await response.json(content_type=None)

            calls = [call("viewer", "push", n) for n in range(150)]
            calls += [call("editor", "push", n) for n in range(150)]
            calls += [call(("viewer", "editor")[n % 2], "me", n) for n in range(100)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    emails = {"viewer": viewer["user"]["email"], "editor": editor["user"]["email"]}
    for who, kind, status, body in answers:
        if kind == "me":
            assert (status, body["email"]) == (200, emails[who]), (who, body)
        elif who == "viewer":
            assert status == 403, body
        else:
            assert status == 200, body
            assert body["applied"]["projects"]["created"] == 0, body
    with db.writer().session() as session:
        stored = session.scalar(
            "SELECT count(*) FROM projects WHERE name LIKE :pattern", pattern=f"{marker}-%"
        )
    assert stored == 0

"""The mobile routes that write, sent to secondary regions: each is handed whole to the
primary region's function (one Lambda Invoke), lands once, and answers as in the primary;
the hop's failures answer with their retry rule; a pull that sends a Covenant-Min-Position
sees the push it follows while the replica's replay is paused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db
from devstack.processes import free_port

from ...handoff_fixture import PrimaryLambda
from ...replica import replay_paused
from .conftest import gateway_claims, seeded

pytestmark = pytest.mark.usefixtures("clean_auth_failures")


def _cursor() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT sync_cursor()"))


def _count(sql: str, **params: Any) -> int:
    with db.writer().session() as session:
        return int(session.scalar(sql, **params))


def _named(name: str) -> int:
    return _count("SELECT count(*) FROM projects WHERE name = :name", name=name)


def _record(project_id: str, name: str) -> dict[str, Any]:
    return {
        "id": project_id,
        "name": name,
        "description": "",
        "sector_id": "health",
        "country_code": "NZL",
        "status": "planning",
        "budget_usd": 2_500_000,
        "impact_score": 4.25,
        "progress": 0,
        "_status": "created",
        "_changed": "",
    }


def _changes(*created: dict[str, Any]) -> dict[str, Any]:
    empty = {"created": [], "updated": [], "deleted": []}
    return {
        "countries": empty,
        "projects": {"created": list(created), "updated": [], "deleted": []},
        "sectors": empty,
    }


@pytest.fixture
def projects(servers) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)


@pytest.fixture
def push(mobile, claims_of, projects):
    editor = claims_of("editor")

    def run(name: str, *, region: str, project_id: str | None = None, **kwargs: Any):
        project_id = project_id or str(uuid.uuid4())
        if project_id not in projects:
            projects.append(project_id)
        return mobile(
            "POST",
            "/sync",
            body=_changes(_record(project_id, name)),
            claims=editor,
            query={"last_pulled_at": str(kwargs.pop("since", _cursor()))},
            region=region,
            **kwargs,
        )

    return run


def _reasons(hops: list[Any]) -> list[str]:
    return [hop.event["requestContext"]["covenant"]["reason"] for hop in hops]


@pytest.mark.parametrize("region", ["ams", "syd", "sin", "sfo", "jnb"])
def test_a_push_from_a_secondary_runs_once_in_the_primary(
    push, primary_lambda: PrimaryLambda, region: str
) -> None:
    name = f"Hop push {region} {uuid.uuid4().hex[:8]}"
    since = _cursor()
    project_id = str(uuid.uuid4())
    with primary_lambda.recording() as hops:
        first = push(name, region=region, project_id=project_id, since=since)
        again = push(name, region=region, project_id=project_id, since=since)
    assert first.status == 200, first.body
    assert first.body["applied"]["projects"]["created"] == 1
    assert first.headers["Covenant-Position"] and "position" not in first.body
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body["applied"] == first.body["applied"]
    assert [hop.function for hop in hops] == ["covenant-iad-mobile"] * 2
    assert _reasons(hops) == ["POST /sync"] * 2
    assert _named(name) == 1
    with db.writer().session() as session:
        sources = session.run(
            "SELECT payload->>'source' FROM outbox WHERE aggregate_id = :id", id=project_id
        )
    # the change and its audit event, once, naming the region the device used
    assert [row[0] for row in sources] == [f"/covenant/{region}/mobile"] * 2


def test_register_and_logout_from_secondaries_run_in_the_primary(
    mobile, primary_lambda: PrimaryLambda, cognito
) -> None:
    email = f"hop-{uuid.uuid4().hex[:12]}@example.org"
    body = {"email": email, "password": "Hop-Account-2026!", "name": "Hop"}
    with primary_lambda.recording() as hops:
        registered = mobile("POST", "/auth/register", body=body, region="syd")
        assert registered.status == 201, registered.body
        claims = gateway_claims(registered.body["access_token"])
        me = mobile("GET", "/auth/me", claims=claims, region="sin")  # a read: stays in sin
        out = mobile("POST", "/auth/logout", claims=claims, region="sfo")
    assert me.status == 200 and me.body["email"] == email
    assert out.status == 200 and out.body == {"signed_out": True}
    assert _reasons(hops) == ["POST /auth/register", "POST /auth/logout"]
    revoked = _count("SELECT count(*) FROM token_revocations WHERE sub = :sub", sub=claims["sub"])
    assert revoked == 1
    again = mobile("POST", "/auth/register", body=body, region="jnb")
    assert again.status == 409  # the account exists: one account, created once


def test_the_login_throttle_counts_every_region_on_the_primary(
    mobile, primary_lambda: PrimaryLambda
) -> None:
    user = seeded("viewer")
    env = {"AUTH_MAX_FAILURES_PER_ACCOUNT": "2"}
    wrong = {"email": user.email, "password": "Not-The-Password-1!"}
    with primary_lambda.recording() as hops:
        assert mobile("POST", "/auth/login", body=wrong, region="ams", env=env).status == 401
        assert mobile("POST", "/auth/login", body=wrong, region="jnb", env=env).status == 401
        right = {"email": user.email, "password": user.password}
        locked = mobile("POST", "/auth/login", body=right, region="syd", env=env)
    assert locked.status == 429 and locked.code == "TOO_MANY_REQUESTS"
    assert int(locked.headers["Retry-After"]) > 0
    assert _reasons(hops) == ["POST /auth/login"] * 3
    assert _count("SELECT count(*) FROM auth_failures") >= 2


def test_reads_stay_in_the_region(
    mobile, primary_lambda: PrimaryLambda, claims_of, wait_for_replica
) -> None:
    claims = claims_of("viewer")
    wait_for_replica()  # else the cursor is ahead of the replica: that pull is handed off
    with primary_lambda.recording() as hops:
        pulled = mobile(
            "GET", "/sync", claims=claims, query={"last_pulled_at": str(_cursor())}, region="ams"
        )
        me = mobile("GET", "/auth/me", claims=claims, region="ams")
    assert pulled.status == 200 and me.status == 200
    assert hops == []


def test_a_secondary_without_the_hop_fails_loudly_and_writes_nothing(
    push, monkeypatch, caplog
) -> None:
    """A write route that forgot to hand off reaches for a writer the region does not have."""
    from mobile import hop

    monkeypatch.setattr(hop, "dispatch_first", lambda event: None)
    name = f"Forgot the hop {uuid.uuid4().hex[:8]}"
    reply = push(name, region="ams")
    assert reply.status == 500 and reply.code == "INTERNAL_SERVER_ERROR"
    assert "region ams has no database writer" in caplog.text
    assert _named(name) == 0


# -- the hop failing ---------------------------------------------------------------------------


def test_primary_unreachable_is_503_nothing_applied(push, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{free_port()}")
    name = f"Hop unreachable {uuid.uuid4().hex[:8]}"
    reply = push(name, region="syd")
    assert reply.status == 503
    assert reply.body["code"] == "SERVICE_UNAVAILABLE"
    assert reply.body["mayHaveBeenApplied"] is False
    assert "nothing was applied" in reply.body["message"]
    assert _named(name) == 0


def test_a_throttled_primary_is_503_with_retry_after(push, primary_lambda: PrimaryLambda) -> None:
    name = f"Hop throttled {uuid.uuid4().hex[:8]}"
    with primary_lambda.failing("throttle"):
        reply = push(name, region="sin")
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert reply.body["mayHaveBeenApplied"] is False
    assert _named(name) == 0


@pytest.mark.parametrize("mode", ["slow", "crash", "drop"])
def test_a_push_lost_after_its_commit_may_have_applied_and_the_retry_replays_it(
    push, primary_lambda: PrimaryLambda, mode: str
) -> None:
    name = f"Hop lost push {mode} {uuid.uuid4().hex[:8]}"
    since, project_id = _cursor(), str(uuid.uuid4())
    with primary_lambda.failing(mode, 2.0):
        lost = push(
            name,
            region="ams",
            project_id=project_id,
            since=since,
            env={"COVENANT_HANDOFF_READ_TIMEOUT_S": "1"},
        )
    assert lost.status == 503
    assert lost.body["mayHaveBeenApplied"] is True
    assert "may have been applied" in lost.body["message"]
    assert "answered from its receipt" in lost.body["message"]
    assert _named(name) == 1
    retry = push(name, region="jnb", project_id=project_id, since=since)
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert _named(name) == 1


# -- read-your-writes --------------------------------------------------------------------------


def test_a_pull_with_the_position_of_its_push_sees_it_while_the_replica_lags(
    push, mobile, claims_of, primary_lambda: PrimaryLambda, servers, wait_for_replica
) -> None:
    wait_for_replica()
    viewer = claims_of("viewer")
    since = _cursor()
    name = f"Pull your push {uuid.uuid4().hex[:8]}"
    quick = {"COVENANT_MIN_POSITION_WAIT_MS": "200"}

    def pull(**headers: str) -> Any:
        return mobile(
            "GET",
            "/sync",
            claims=viewer,
            query={"last_pulled_at": str(since)},
            headers=headers,
            region="ams",
            env=quick,
        )

    def names(reply: Any) -> list[str]:
        changed = reply.body["changes"]["projects"]
        return [r["name"] for r in changed["created"] + changed["updated"]]

    with replay_paused(servers):
        pushed = push(name, region="ams", since=since)
        assert pushed.status == 200, pushed.body
        assert name not in names(pull())  # the replica has not replayed the push
        with primary_lambda.recording() as hops:
            fresh = pull(**{"Covenant-Min-Position": pushed.headers["Covenant-Position"]})
        assert fresh.status == 200, fresh.body
        assert name in names(fresh)
        assert _reasons(hops) == ["read"]
    wait_for_replica()
    with primary_lambda.recording() as hops:
        local = pull(**{"Covenant-Min-Position": pushed.headers["Covenant-Position"]})
    assert name in names(local) and hops == []


def test_a_malformed_position_is_bad_user_input(mobile, claims_of) -> None:
    reply = mobile(
        "GET",
        "/sync",
        claims=claims_of("viewer"),
        query={"last_pulled_at": "0"},
        headers={"Covenant-Min-Position": "latest please"},
    )
    assert reply.status == 400
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert reply.body["field"] == "Covenant-Min-Position"
    json.dumps(reply.body)  # a plain JSON error, like every other

"""GraphQL from a secondary region: every mutation is handed whole to the primary region's
function (one Lambda Invoke), queries stay in the region, and every way the hop can fail gets
an answer that says whether the write may have been applied. Read-your-writes through the
position token, with the replica's replay paused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from covenant import db
from covenant.config import environment
from devstack.processes import free_port

from ...handoff_fixture import PrimaryLambda
from ...replica import replay_paused
from .conftest import ADMIN, EDITOR

CREATE = (
    "mutation ($input: CreateProjectInput!) { createProject(input: $input) "
    "{ id name version region { code } } }"
)
UPDATE = (
    "mutation ($id: ID!) { updateProject(id: $id, input: {progress: 40}, expectedVersion: 1) "
    "{ id progress version } }"
)
DELETE = "mutation ($id: ID!) { deleteProject(id: $id, expectedVersion: 2) { id } }"
PROJECT = "query ($id: ID!) { project(id: $id) { id name } }"


def _input(name: str) -> dict[str, Any]:
    return {"name": name, "sectorId": "energy", "countryCode": "NLD", "budgetUsd": 1_250_000}


@pytest.fixture
def created(servers) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    with db.writer().session() as session:
        session.run("DELETE FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)


def _count(sql: str, **params: Any) -> int:
    with db.writer().session() as session:
        return int(session.scalar(sql, **params))


def _projects_named(name: str) -> int:
    return _count("SELECT count(*) FROM projects WHERE name = :name", name=name)


def _local(reply: Any, hops: list[Any]) -> list[str]:
    """The statements the request ran in the region that received it."""
    handed = sum(len(hop.statements) for hop in hops)
    return reply.statements[: len(reply.statements) - handed]


@pytest.mark.parametrize("region", ["ams", "syd", "sin", "sfo", "jnb"])
def test_every_project_mutation_from_a_secondary_runs_once_in_the_primary(
    gql, primary_lambda: PrimaryLambda, created, region: str
) -> None:
    name = f"Hop {region} {uuid.uuid4().hex[:8]}"
    with primary_lambda.recording() as hops:
        reply = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region=region)
    assert reply.status == 200 and not reply.errors, reply.body
    project = reply.data["createProject"]
    created.append(project["id"])
    assert [hop.function for hop in hops] == ["covenant-iad-graphql"]
    assert hops[0].event["requestContext"]["covenant"] == {
        "handedOffFrom": region,
        "reason": "mutation",
    }
    assert _local(reply, hops) == []  # nothing ran in the secondary
    assert _projects_named(name) == 1
    audit = _count(
        "SELECT count(*) FROM outbox WHERE aggregate_id = :id AND payload->'data'->>'region' = :r",
        id=project["id"],
        r=region,
    )
    assert audit == 1  # the audit event names the region the client asked
    assert reply.headers["Covenant-Position"] == reply.body["extensions"]["position"]

    with primary_lambda.recording() as hops:
        update = gql(UPDATE, {"id": project["id"]}, claims=EDITOR, region=region)
        delete = gql(DELETE, {"id": project["id"]}, claims=EDITOR, region=region)
    assert update.data["updateProject"] == {"id": project["id"], "progress": 40, "version": 2}
    assert delete.data["deleteProject"] == {"id": project["id"]}
    assert len(hops) == 2
    assert _projects_named(name) == 0


def test_country_mutations_from_a_secondary_run_in_the_primary(
    gql, primary_lambda: PrimaryLambda
) -> None:
    create = (
        'mutation { createCountry(input: {code: "XHX", iso2: "XH", name: "Hopland", '
        'continent: EUROPE, region: "ams", gdpUsd: 1000000, covenantStatus: ACTIVE}) '
        "{ code version } }"
    )
    update = 'mutation { updateCountry(code: "XHX", input: {gdpUsd: 2000000}) { gdpUsd version } }'
    try:
        with primary_lambda.recording() as hops:
            assert gql(create, claims=ADMIN, region="jnb").data["createCountry"]["version"] == 1
            changed = gql(update, claims=ADMIN, region="sin").data["updateCountry"]
        assert changed == {"gdpUsd": 2_000_000, "version": 2}
        assert len(hops) == 2
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM countries WHERE code = 'XHX'")
            session.run("DELETE FROM tombstones WHERE record_id = 'XHX'")


def test_queries_stay_in_the_region_and_get_never_mutates(
    gql, primary_lambda: PrimaryLambda
) -> None:
    with primary_lambda.recording() as hops:
        read = gql("{ sectors { id } }", region="syd")
        get = gql(
            method="GET",
            region="syd",
            query_params={"query": 'mutation { deleteProject(id: "x") { id } }'},
            claims=EDITOR,
        )
    assert read.status == 200 and len(read.data["sectors"]) == 6
    assert get.status == 405
    assert hops == []


def test_an_idempotency_key_from_a_secondary_is_applied_once_whichever_region_retries(
    gql, primary_lambda: PrimaryLambda, created
) -> None:
    """The records live on the primary: a retry in another secondary finds the first attempt."""
    name = f"Hop key {uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": f"hop-{uuid.uuid4()}"}
    with primary_lambda.recording() as hops:
        first = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="ams", headers=key)
        again = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="sfo", headers=key)
    created.append(first.data["createProject"]["id"])
    assert again.body == first.body
    assert len(hops) == 2
    assert _projects_named(name) == 1
    other = gql(CREATE, {"input": _input(name + "!")}, claims=EDITOR, region="syd", headers=key)
    assert other.status == 422
    assert _projects_named(name + "!") == 0


def test_a_secondary_without_the_hop_fails_loudly_and_writes_nothing(
    gql, monkeypatch, log_lines
) -> None:
    """A write path that forgot to hand off reaches for a writer the region does not have."""
    from covenant import handoff

    name = f"Forgot the hop {uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(handoff, "must_hand_off", lambda event: False)
    reply = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="ams")
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    assert _projects_named(name) == 0
    logged = json.dumps(log_lines())
    assert "region ams has no database writer" in logged


def test_the_writer_does_not_exist_in_a_secondary_whatever_its_environment_says(servers) -> None:
    secondary = environment({"COVENANT_REGION": "syd", "DATABASE_URL": servers.writer_url})
    with secondary, pytest.raises(db.NoWriter, match="region syd has no database writer"):
        db.writer()
    with environment({"COVENANT_REGION": "iad"}):
        assert db.writer().spec.port == db.ConnectionSpec.from_url(servers.writer_url).port


# -- the hop failing ---------------------------------------------------------------------------


def test_primary_unreachable_is_503_nothing_applied(gql, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{free_port()}")
    name = f"Hop unreachable {uuid.uuid4().hex[:8]}"
    reply = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="ams")
    assert reply.status == 503
    assert reply.codes == ["SERVICE_UNAVAILABLE"]
    error = reply.errors[0]
    assert error["extensions"]["mayHaveBeenApplied"] is False
    assert "nothing was applied" in error["message"]
    assert reply.headers["Retry-After"] == "2"
    assert _projects_named(name) == 0


def test_a_throttled_primary_is_503_with_retry_after_nothing_applied(
    gql, primary_lambda: PrimaryLambda
) -> None:
    name = f"Hop throttled {uuid.uuid4().hex[:8]}"
    with primary_lambda.failing("throttle"), primary_lambda.recording() as hops:
        reply = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="sin")
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "1"
    assert reply.errors[0]["extensions"] == {
        "code": "SERVICE_UNAVAILABLE",
        "mayHaveBeenApplied": False,
        "requestId": reply.errors[0]["extensions"]["requestId"],
    }
    assert hops == []  # Lambda refused it: the function never ran
    assert _projects_named(name) == 0


def test_an_application_json_client_gets_200_with_the_error(
    gql, primary_lambda: PrimaryLambda
) -> None:
    with primary_lambda.failing("throttle"):
        reply = gql(
            CREATE,
            {"input": _input("never")},
            claims=EDITOR,
            headers={"Accept": "application/json"},
        )
    assert reply.status == 200 and reply.codes == ["SERVICE_UNAVAILABLE"]


@pytest.mark.parametrize(
    ("mode", "slow_s"),
    [("slow", 2.0), ("crash", 0.0), ("drop", 0.0)],
    ids=["timeout-mid-commit", "function-error", "connection-dropped"],
)
def test_a_hop_lost_after_the_commit_may_have_applied_and_the_key_replays_the_first_answer(
    gql, primary_lambda: PrimaryLambda, created, mode: str, slow_s: float
) -> None:
    """The primary committed, the answer never came back (the read timed out, the function
    failed after its work, the connection dropped): the client is told it may have been
    applied, and its retry with the same key gets the first answer, never a second write."""
    name = f"Hop lost {mode} {uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": f"lost-{uuid.uuid4()}"}
    timeout = {"COVENANT_HANDOFF_READ_TIMEOUT_S": "1"}
    with primary_lambda.failing(mode, slow_s), primary_lambda.recording() as hops:
        lost = gql(CREATE, {"input": _input(name)}, claims=EDITOR, headers=key, environment=timeout)
    assert len(hops) == 1
    assert lost.status == 503, lost.body
    error = lost.errors[0]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["mayHaveBeenApplied"] is True
    assert "may have been applied" in error["message"]
    assert "same Idempotency-Key" in error["message"]
    assert _projects_named(name) == 1

    retry = gql(CREATE, {"input": _input(name)}, claims=EDITOR, headers=key, region="syd")
    assert retry.status == 200 and not retry.errors, retry.body
    created.append(retry.data["createProject"]["id"])
    assert retry.data["createProject"]["name"] == name
    assert _projects_named(name) == 1  # the retry replayed the first answer


def test_a_handed_off_request_that_reaches_a_secondary_is_never_forwarded_again(
    servers, primary_lambda: PrimaryLambda
) -> None:
    """The region table changed between the two regions (a failover): the request stops."""
    from .conftest import call, make_event

    event = make_event(query=CREATE, variables={"input": _input("loop")}, claims=EDITOR)
    event["requestContext"]["covenant"] = {"handedOffFrom": "syd", "reason": "mutation"}
    with primary_lambda.recording() as hops:
        reply = call(servers, event, primary_lambda)
    assert reply.status == 503 and reply.codes == ["SERVICE_UNAVAILABLE"]
    assert "primary region is changing" in reply.errors[0]["message"]
    assert hops == []


# -- read-your-writes --------------------------------------------------------------------------


def test_a_read_with_the_position_sees_the_write_while_the_replica_lags(
    gql, primary_lambda: PrimaryLambda, servers, created, wait_for_replica
) -> None:
    wait_for_replica()
    name = f"Read your write {uuid.uuid4().hex[:8]}"
    quick = {"COVENANT_MIN_POSITION_WAIT_MS": "200"}
    with replay_paused(servers):
        wrote = gql(CREATE, {"input": _input(name)}, claims=EDITOR, region="ams")
        project_id = wrote.data["createProject"]["id"]
        created.append(project_id)
        position = wrote.headers["Covenant-Position"]
        stale = gql(PROJECT, {"id": project_id}, region="ams")
        assert stale.data == {"project": None}  # the replica has not replayed it
        with primary_lambda.recording() as hops:
            fresh = gql(
                PROJECT,
                {"id": project_id},
                region="ams",
                headers={"Covenant-Min-Position": position},
                environment=quick,
            )
            in_body = gql(
                region="ams",
                body=json.dumps(
                    {
                        "query": PROJECT,
                        "variables": {"id": project_id},
                        "extensions": {"minPosition": position},
                    }
                ),
                environment=quick,
            )
        assert fresh.data == {"project": {"id": project_id, "name": name}}
        assert in_body.data == fresh.data
        assert [hop.event["requestContext"]["covenant"]["reason"] for hop in hops] == [
            "position",
            "position",
        ]
        # In the primary region the same read is served by its writer, without a hop.
        with primary_lambda.recording() as hops:
            primary = gql(
                PROJECT,
                {"id": project_id},
                region="iad",
                headers={"Covenant-Min-Position": position},
                environment=quick,
            )
        assert primary.data == fresh.data and hops == []
    wait_for_replica()
    with primary_lambda.recording() as hops:
        local = gql(
            PROJECT, {"id": project_id}, region="ams", headers={"Covenant-Min-Position": position}
        )
    assert local.data == fresh.data
    assert hops == []  # the replica has replayed past it: served in the region


@pytest.mark.parametrize("token", ["yesterday", "0/", "G/1", "1/2/3", "123456789/1"])
def test_a_position_this_api_did_not_issue_is_bad_user_input(gql, token: str) -> None:
    reply = gql(PROJECT, {"id": str(uuid.uuid4())}, headers={"Covenant-Min-Position": token})
    assert reply.status == 400
    assert reply.codes == ["BAD_USER_INPUT"]
    assert reply.errors[0]["extensions"]["field"] == "Covenant-Min-Position"
    assert reply.statements == []

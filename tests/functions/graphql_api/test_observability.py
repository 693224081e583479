"""What operators see: EMF metrics (requests, errors by code, latency, SQL statements per
request, cold starts), log lines with the request's correlation id, X-Ray subsegments around
the resolvers and the SQL."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import pytest
from aws_lambda_powertools.metrics.provider import cold_start

EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
NESTED = "{ countries(first: 3) { nodes { code projects(first: 2) { nodes { id } } } } }"


def _metrics(printed: str) -> list[dict]:
    """The EMF documents the function printed, one per invocation (plus a ColdStart one)."""
    documents = [json.loads(line) for line in printed.splitlines() if line.startswith('{"_aws"')]
    for document in documents:
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Covenant"
    return documents


def _names(document: dict) -> set[str]:
    return {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


def _one_request(printed: str) -> dict:
    (document,) = [d for d in _metrics(printed) if "Requests" in d]
    return document


def test_a_query_counts_one_request_its_statements_and_its_latency(gql, capsys) -> None:
    capsys.readouterr()
    reply = gql(NESTED)
    assert not reply.errors, reply.body
    document = _one_request(capsys.readouterr().out)
    assert document["Requests"] == [1.0]
    assert document["SqlStatements"] == [float(len(reply.statements))] == [2.0]
    assert document["Latency"][0] > 0
    assert not {name for name in _names(document) if name.startswith("Errors")}


@pytest.mark.parametrize(
    ("request_args", "status", "metric"),
    [
        ({"query": 'mutation { deleteProject(id: "x") { id } }'}, 200, "ErrorsUnauthenticated"),
        (
            {"query": '{ project(id: "not-a-uuid") { id } }'},
            200,
            "ErrorsBadUserInput",
        ),
        ({"query": "{ countries { "}, 400, "ErrorsBadUserInput"),  # a syntax error
        ({"query": "{ sectors { id } }", "headers": {"Content-Type": "text/plain"}}, 415, None),
        (
            {"query": '{ project(id: "00000000-0000-4000-8000-000000000000") { id } }'},
            200,
            None,
        ),
    ],
)
def test_every_error_a_client_gets_is_counted_by_its_code(
    gql, capsys, request_args, status, metric
) -> None:
    capsys.readouterr()
    reply = gql(**request_args)
    assert reply.status == status, reply.body
    document = _one_request(capsys.readouterr().out)
    codes = {f"Errors{c.title().replace('_', '')}" for c in reply.codes}
    assert {name for name in _names(document) if name.startswith("Errors")} == codes
    if metric is not None:
        assert document[metric] == [1.0]
    assert document["Latency"][0] > 0  # refused requests have a latency too


def test_a_cold_start_is_counted_once(gql, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cold_start, "is_cold_start", True)
    capsys.readouterr()
    gql("{ sectors { id } }")
    gql("{ sectors { id } }")
    cold = [d for d in _metrics(capsys.readouterr().out) if "ColdStart" in d]
    assert len(cold) == 1
    assert cold[0]["ColdStart"] == [1.0]
    assert cold[0]["function_name"] == "covenant-ams-graphql"


def test_every_log_line_carries_the_correlation_id(gql, log_lines, monkeypatch) -> None:
    import graphql_api.repository as repository

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(repository, "regional_stats", broken)
    reply = gql("{ regionalStats { projectCount } }")
    assert reply.codes == ["INTERNAL_SERVER_ERROR"]
    lines = log_lines()
    assert lines, "the error was not logged"
    for line in lines:
        assert line["service"] == "graphql"
        assert line["correlation_id"] == reply.errors[0]["extensions"]["requestId"]


def test_resolvers_and_sql_run_in_subsegments(gql, monkeypatch) -> None:
    from graphql_api.schema import tracer

    opened: list[str] = []

    @contextlib.contextmanager
    def in_subsegment(name: str, **kwargs):
        opened.append(name)
        yield mock.MagicMock()  # a subsegment: annotations and metadata go nowhere

    monkeypatch.setattr(tracer.provider, "in_subsegment", in_subsegment)
    reply = gql(NESTED)
    assert not reply.errors, reply.body
    assert opened[opened.index("## graphql_api.resolvers.query.resolve_countries") :] == [
        "## graphql_api.resolvers.query.resolve_countries",
        "## graphql_api.repository.page",  # the two statements
        "## graphql_api.repository.nested_pages",
    ]

    opened.clear()
    created = gql(
        'mutation { createProject(input: {name: "", sectorId: "energy", countryCode: '
        '"KEN", budgetUsd: 1}) { id } }',
        claims=EDITOR,
    )
    assert created.codes == ["BAD_USER_INPUT"]  # nothing written
    assert "## graphql_api.resolvers.mutation.resolve_create_project" in opened


def test_the_shared_layer_logs_as_the_function_with_the_correlation_id(
    gql, log_lines, monkeypatch
) -> None:
    """A covenant.* line (here: the outbox wake-up that could not be sent) is the function's
    JSON, not a plain root-logger line without the request it belongs to."""
    from covenant import db, wakeup

    from .conftest import EVENT

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to SQS")

    monkeypatch.setattr(wakeup.aws, "client", unreachable)
    create = (
        'mutation { createProject(input: {name: "Logged Wakeup Grid", sectorId: "energy", '
        'countryCode: "KEN", budgetUsd: 1000}) { id } }'
    )
    reply = gql(
        create,
        claims=EDITOR,
        environment={"OUTBOX_WAKEUP_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q"},
    )
    try:
        assert not reply.errors, reply.body
        [line] = [entry for entry in log_lines() if entry.get("name") == "covenant.wakeup"]
        assert line["service"] == "graphql"
        assert line["level"] == "WARNING"
        assert line["message"] == "outbox wake-up not sent; the sweep will publish the events"
        assert line["correlation_id"] == EVENT["requestContext"]["requestId"]
    finally:
        with db.writer().session() as session:
            session.run("DELETE FROM projects WHERE name = 'Logged Wakeup Grid'")

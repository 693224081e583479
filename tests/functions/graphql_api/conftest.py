"""Calls the deployed GraphQL handler with real-format API Gateway HTTP API events."""

from __future__ import annotations

import base64
import copy
import importlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from covenant.db import record_statements
from covenant.regions import get_region
from devstack.functions import get_function, invoke

from ...handoff_fixture import PrimaryLambda, secondary_environment

EVENT = json.loads((Path(__file__).parents[3] / "events" / "graphql_query.json").read_text())

ADMIN = {"sub": "sub-admin", "email": "admin@covenant.local", "cognito:groups": "[admin]"}
EDITOR = {"sub": "sub-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
VIEWER = {"sub": "sub-viewer", "email": "viewer@covenant.local", "cognito:groups": "[viewer]"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    statements: list[str]
    text: str = ""  # the body as sent

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])

    @property
    def codes(self) -> list[str]:
        return [e["extensions"]["code"] for e in self.errors]


def make_event(
    *,
    query: str | None = None,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
    claims: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    region: str = "ams",
    body: str | None = None,
    query_params: dict[str, str] | None = None,
) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["rawPath"] = f"/{region}/graphql"
    event["routeKey"] = f"{method} /graphql"
    context = event["requestContext"]
    context["stage"] = region
    context["http"]["method"] = method
    context["http"]["path"] = f"/{region}/graphql"
    context["routeKey"] = f"{method} /graphql"
    event["headers"] = {
        "accept": "application/graphql-response+json",
        "content-type": "application/json",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    if claims is not None:
        context["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
    if method == "GET":
        event.pop("body", None)
        event["queryStringParameters"] = query_params or {}
    elif body is not None:
        event["body"] = body
    else:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        if operation_name is not None:
            payload["operationName"] = operation_name
        event["body"] = json.dumps(payload)
    return event


def call(
    servers: Any, event: dict[str, Any], primary: PrimaryLambda | None = None, **environment: str
) -> Reply:
    """One invocation of the region's GraphQL function. In a secondary region a write is
    handed to the primary's function (through `primary`); `statements` are those the request
    ran in both regions."""
    region = get_region(event["requestContext"]["stage"])
    endpoints = {
        "DATABASE_URL": servers.writer_url,
        "DATABASE_READER_URL": servers.reader_url,
        **({} if region.primary else secondary_environment("graphql")),
        **environment,
    }
    with record_statements() as statements:
        if primary is None:
            response = invoke(get_function("graphql"), region, event, endpoints)
        else:
            with primary.configured(environment), primary.recording() as hops:
                response = invoke(get_function("graphql"), region, event, endpoints)
    for hop in hops if primary is not None else []:
        statements.extend(hop.statements)
    raw = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    content_type = response.get("headers", {}).get("Content-Type", "")
    body = json.loads(raw) if "json" in content_type and raw else raw
    return Reply(response["statusCode"], response.get("headers", {}), body, statements, raw)


@pytest.fixture
def gql(servers: Any, primary_lambda: PrimaryLambda) -> Callable[..., Reply]:
    """gql(query, variables=None, claims=None, headers=None, region="ams", **event_args)."""

    def run(
        query: str | None = None,
        variables: dict[str, Any] | None = None,
        *,
        environment: dict[str, str] | None = None,
        **event_args: Any,
    ) -> Reply:
        return call(
            servers,
            make_event(query=query, variables=variables, **event_args),
            primary_lambda,
            **(environment or {}),
        )

    return run


@pytest.fixture
def log_lines(monkeypatch) -> Callable[[], list[dict[str, Any]]]:
    """What the function logs, as the JSON lines its Powertools logger writes (in Lambda,
    to CloudWatch): log_lines() returns the lines written so far in this test."""
    module = importlib.import_module(get_function("graphql").handler.rpartition(".")[0])
    stream = io.StringIO()
    monkeypatch.setattr(module.logger.logger_handler, "stream", stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]

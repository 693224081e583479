"""The GraphQL explorer's subscriptions in AWS: each region's GraphQL function is told its own
region's WebSocket stage URL (a reference inside the regional API stack, never another
region's API nor a cross-stack import)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from covenant.regions import load_regions

from .conftest import resources

REGIONS = load_regions()


def _url_parts(value: Any) -> list[Any]:
    assert set(value) == {"Fn::Join"}, value
    separator, parts = value["Fn::Join"]
    assert separator == ""
    return list(parts)


@pytest.mark.parametrize("region", REGIONS, ids=[r.code for r in REGIONS])
def test_the_explorer_s_function_gets_its_own_region_s_websocket_url(templates, region) -> None:
    template = templates[f"Covenant-{region.code}-Api"]
    (websocket_api,) = [
        logical_id
        for logical_id, api in resources(template, "AWS::ApiGatewayV2::Api").items()
        if api["Properties"].get("ProtocolType") == "WEBSOCKET"
    ]
    (graphql,) = [
        f["Properties"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == "graphql_api.handler.handler"
    ]
    url = graphql["Environment"]["Variables"]["GRAPHQL_SUBSCRIPTIONS_URL"]
    assert _url_parts(url) == [
        "wss://",
        {"Ref": websocket_api},
        f".execute-api.{region.aws_region}.",
        {"Ref": "AWS::URLSuffix"},
        f"/{region.code}",
    ]
    # Only this function needs it: the page it serves is the one place the URL is used.
    others = [
        f["Properties"]["Environment"]["Variables"]
        for f in resources(template, "AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") != "graphql_api.handler.handler"
        and "Environment" in f["Properties"]
    ]
    assert not any("GRAPHQL_SUBSCRIPTIONS_URL" in env for env in others)
    assert "Fn::ImportValue" not in json.dumps(url)

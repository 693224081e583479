"""Invoking a function locally with an event file, and the sample events themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from covenant.regions import region_codes

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((REPO_ROOT / "events").glob("*.json"))


def test_invoke_prints_the_function_response(servers) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "invoke", "mobile", "events/health.json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert (body["status"], body["region"]) == ("healthy", "ams")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "events/health.json"], "no function 'nope'"),
        (["mobile", "events/missing.json"], "cannot read event file"),
        (["mobile", "pyproject.toml"], "is not valid JSON"),
        (["mobile", "events/health.json", "--region", "xyz"], "unknown region 'xyz'"),
    ],
)
def test_invoke_explains_bad_arguments(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "invoke", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", EVENTS, ids=[p.name for p in EVENTS])
def test_sample_events_have_the_real_aws_shapes(path: Path) -> None:
    event = json.loads(path.read_text())
    if "routeKey" in event:  # API Gateway HTTP API, payload format 2.0
        assert event["version"] == "2.0"
        context = event["requestContext"]
        assert context["stage"] in region_codes()
        assert event["rawPath"].startswith(f"/{context['stage']}/")
        assert context["http"]["method"] == event["routeKey"].split(" ")[0]
        assert event["rawPath"].endswith(event["routeKey"].split(" ")[1])
        if "body" in event and not event["isBase64Encoded"]:
            json.loads(event["body"])
    elif "Records" in event:  # SQS batch
        for record in event["Records"]:
            assert record["eventSource"] == "aws:sqs"
            assert {"messageId", "receiptHandle", "body", "attributes"} <= set(record)
            json.loads(record["body"])
    else:  # EventBridge scheduled event
        assert event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events"

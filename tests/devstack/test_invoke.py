"""Invoking a function locally with an event file, and the sample events themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covenant.regions import region_codes
from devstack.gateway import Gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((REPO_ROOT / "events").glob("*.json"))


def test_invoke_prints_the_function_response(servers) -> None:
    # ams's health asks the primary's function through ams's hop, here a gateway's.
    gateway = Gateway(
        0, {"DATABASE_URL": servers.writer_url, "DATABASE_READER_URL": servers.reader_url}
    )
    gateway.serve_in_thread()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "devstack", "invoke", "mobile", "events/health.json"],
            env={**os.environ, "AWS_ENDPOINT_URL_LAMBDA": str(gateway.hop_url("ams"))},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        gateway.shutdown()
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


def test_invoke_finds_the_make_dev_of_covenant_data_dir(tmp_path, monkeypatch) -> None:
    """A `make dev` started with COVENANT_DATA_DIR publishes its endpoints there; invoke and
    tail, run with the same variable, must read them there (not from .local)."""
    from devstack import invoke
    from devstack.stack import state_file

    for name in ("DATABASE_URL", "DATABASE_READER_URL", "NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    published = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:56432/covenant",
        "DATABASE_READER_URL": "postgresql://postgres@127.0.0.1:56433/covenant",
        "NATS_URL": "nats://127.0.0.1:4322",
    }
    state_file(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    state_file(tmp_path).write_text(json.dumps(published), encoding="utf-8")
    monkeypatch.setenv("COVENANT_DATA_DIR", str(tmp_path))
    assert {k: v for k, v in invoke.endpoints().items() if k in published} == published


def test_invoke_without_a_stack_or_a_database_url_says_what_to_do(tmp_path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_READER_URL", "NATS_URL")
    }
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "invoke", "mobile", "events/health.json"],
        cwd=REPO_ROOT,
        env={**env, "COVENANT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"no running `make dev` found in {tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr

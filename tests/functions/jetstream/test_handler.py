"""The JetStream custom resource and health probe against a real nats-server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jetstream import handler as jetstream


def _context() -> SimpleNamespace:
    return SimpleNamespace(
        function_name="jetstream",
        memory_limit_in_mb=256,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:jetstream",
        aws_request_id="request-1",
        get_remaining_time_in_millis=lambda: 60_000,
    )


def test_deploy_applies_the_topology_and_the_probe_reports_it_healthy(servers, monkeypatch) -> None:
    monkeypatch.setenv("NATS_URL", servers.nats.url)
    monkeypatch.setenv("NATS_REPLICAS", "1")
    monkeypatch.delenv("NATS_SECRET_ARN", raising=False)
    event = {"RequestType": "Update", "PhysicalResourceId": jetstream.PHYSICAL_ID}
    result = jetstream.handler(event, _context())
    assert result["PhysicalResourceId"] == jetstream.PHYSICAL_ID
    assert jetstream.probe() == {"healthy": True, "problems": []}


def test_a_deploy_without_a_replica_count_is_refused_rather_than_guessed(monkeypatch) -> None:
    """A default of 1 would quietly rescale production's streams from 3 replicas to 1."""
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")  # would fail differently if it connected
    monkeypatch.delenv("NATS_REPLICAS", raising=False)
    monkeypatch.delenv("NATS_SECRET_ARN", raising=False)
    event = {"RequestType": "Update", "PhysicalResourceId": jetstream.PHYSICAL_ID}
    with pytest.raises(ValueError, match="NATS_REPLICAS is not set"):
        jetstream.handler(event, _context())


def test_the_probe_reports_an_unreachable_server_as_unhealthy(monkeypatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("NATS_REPLICAS", "1")
    monkeypatch.delenv("NATS_SECRET_ARN", raising=False)
    report = jetstream.probe()
    assert report["healthy"] is False
    assert "cannot connect" in report["problems"][0]


def test_delete_leaves_the_streams_alone(monkeypatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")  # would fail if it connected
    event = {"RequestType": "Delete", "PhysicalResourceId": jetstream.PHYSICAL_ID}
    assert jetstream.handler(event, _context()) == {"PhysicalResourceId": jetstream.PHYSICAL_ID}

"""The bridge verifies NATS's certificate when its secret carries the CA: an SSLContext that
requires a certificate chaining to that CA and checks the host name (or `tls_hostname`)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from bridge import connection
from tests.stacks.conftest import make_ca_bundle


def test_a_ca_in_the_secret_makes_a_verifying_tls_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = make_ca_bundle(tmp_path / "nats-ca.pem").read_text()
    secret: dict[str, Any] = {
        "user": "bridge",
        "password": "x" * 40,
        "url": "tls://nats.internal.example:4222",
        "tls_ca": ca,
        "tls_hostname": "nats.nats.svc.cluster.local",
    }
    monkeypatch.setenv("NATS_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:1:secret:nats")
    monkeypatch.setattr(connection.parameters, "get_secret", lambda *a, **k: dict(secret))
    options, _ = connection.connection_options()
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "Covenant Test RDS CA"),),)
    ]
    assert options["tls_hostname"] == "nats.nats.svc.cluster.local"
    assert options["servers"] == ["tls://nats.internal.example:4222"]


def test_without_a_ca_there_is_no_tls_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_SECRET_ARN", raising=False)
    options, _ = connection.connection_options()
    assert "tls" not in options and "tls_hostname" not in options

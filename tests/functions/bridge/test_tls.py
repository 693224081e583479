"""The bridge verifies NATS's certificate: with the CA the stack hands over
(NATS_TLS_CA_BASE64, NATS_TLS_HOSTNAME) or the one its secret carries, an SSLContext that
requires a certificate chaining to that CA and checks the host name (or the name given). Held
against a real nats-server whose client port speaks TLS only, with a certificate for the
Kubernetes service's name from a CA of the test's own."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge import connection
from covenant import streams
from devstack.nats import NatsServer
from devstack.processes import free_port
from tests.stacks.conftest import make_ca, make_ca_bundle


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


# -- against a real nats-server with TLS, as the chart runs it ----------------------------------

SERVICE_NAME = "nats.nats.svc.cluster.local"  # stacks.events.NATS_TLS_HOSTNAME


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, bytes]]:
    """A nats-server whose client port speaks TLS only, with a certificate naming the
    Kubernetes service (as cert-manager's does) from a CA of its own; and that CA's PEM."""
    folder = tmp_path_factory.mktemp("nats-tls")
    ca_key, ca = make_ca("Covenant Test NATS CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVICE_NAME)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVICE_NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "tls.crt").write_bytes(_pem(server_certificate))
    (folder / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # What the chart renders for `config.nats.tls` (files/config/tls.yaml).
    config = json.dumps(
        {"tls": {"cert_file": str(folder / "tls.crt"), "key_file": str(folder / "tls.key")}}
    )
    server = NatsServer(folder / "server", free_port(), free_port(), config=config)
    server.start()
    try:
        yield server, _pem(ca)
    finally:
        server.stop()


def _connect(server: NatsServer, monkeypatch: pytest.MonkeyPatch, **environment: str) -> Any:
    """The bridge's connection as it opens one in AWS: NATS_URL and what the stack hands over."""
    monkeypatch.delenv("NATS_SECRET_ARN", raising=False)
    monkeypatch.setenv("NATS_URL", f"tls://127.0.0.1:{server.port}")
    monkeypatch.setenv("NATS_CONNECT_TIMEOUT_S", "1")
    for name in ("NATS_TLS_CA_BASE64", "NATS_TLS_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    loop = connection.event_loop()
    try:
        loop.run_until_complete(connection.publisher())
        client = connection._client
        assert client is not None
        return client.is_connected
    finally:
        loop.run_until_complete(connection.reset())


def test_the_bridge_verifies_the_servers_certificate_against_the_ca_it_is_given(
    tls_nats: tuple[NatsServer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_nats
    handed_over = base64.b64encode(ca).decode()  # as Kubernetes stores it, the stack reads it
    assert _connect(
        server, monkeypatch, NATS_TLS_CA_BASE64=handed_over, NATS_TLS_HOSTNAME=SERVICE_NAME
    )


def test_a_certificate_from_another_ca_or_for_another_name_is_refused(
    tls_nats: tuple[NatsServer, bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, ca = tls_nats
    _, stranger = make_ca("Someone Else's CA")
    other = base64.b64encode(_pem(stranger)).decode()
    refused = (ConnectionError, nats.errors.NoServersError)
    with caplog.at_level(logging.WARNING), pytest.raises(refused):
        _connect(server, monkeypatch, NATS_TLS_CA_BASE64=other, NATS_TLS_HOSTNAME=SERVICE_NAME)
    assert "certificate verify failed: unable to get local issuer" in caplog.text
    caplog.clear()
    # The right CA, but the URL's host (127.0.0.1) is not the name on the certificate.
    with caplog.at_level(logging.WARNING), pytest.raises(refused):
        _connect(server, monkeypatch, NATS_TLS_CA_BASE64=base64.b64encode(ca).decode())
    assert "certificate verify failed: IP address mismatch" in caplog.text


def test_the_topology_function_connects_with_the_same_ca(
    tls_nats: tuple[NatsServer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_nats
    monkeypatch.setenv("NATS_TLS_CA_BASE64", base64.b64encode(ca).decode())
    monkeypatch.setenv("NATS_TLS_HOSTNAME", SERVICE_NAME)

    async def connected() -> bool:
        client = await streams.connect(
            f"tls://127.0.0.1:{server.port}", tls=streams.environment_tls(), connect_timeout=2
        )
        try:
            return bool(client.is_connected)
        finally:
            await client.close()

    assert asyncio.run(connected())


def test_a_ca_that_is_not_base64_pem_is_a_precise_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_TLS_CA_BASE64", "not base64!")
    with pytest.raises(streams.ConnectError, match="not a base64-encoded PEM certificate"):
        streams.environment_tls()
    monkeypatch.setenv("NATS_TLS_CA_BASE64", base64.b64encode(b"no certificate here").decode())
    with pytest.raises(streams.ConnectError, match="not a PEM certificate"):
        streams.environment_tls()

"""The local primary's master user and its TLS front, as the migrator meets them in AWS: the
password from the master secret, over TLS whose certificate verifies against the folder's CA."""

from __future__ import annotations

import ssl
from typing import Any

import pg8000.native
import pytest

from devstack.errors import DevStackError
from devstack.postgres import MASTER_USER
from devstack.stack import master_secret_from_url


def _verifying(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)  # verify-full: chain and host name


def _connect(secret: dict[str, Any], **changes: Any) -> pg8000.native.Connection:
    """A connection as the migrator opens one from the master secret, with `changes`."""
    options: dict[str, Any] = {
        "host": secret["host"],
        "port": secret["port"],
        "database": secret["dbname"],
        "password": secret["password"],
        "timeout": 10,
        **changes,
    }
    return pg8000.native.Connection(secret["username"], **options)


def test_the_master_signs_in_over_verified_tls_with_the_secrets_password(servers) -> None:
    postgres = servers.postgres
    verifying = _verifying(str(postgres.ca_file))
    with postgres.tls_front() as front:
        secret = postgres.master_secret(front.port)
        assert (secret["username"], secret["host"], secret["port"]) == (
            MASTER_USER,
            "127.0.0.1",
            front.port,
        )
        connection = _connect(secret, ssl_context=verifying)
        try:
            assert connection.run("SELECT current_user") == [[MASTER_USER]]
            assert isinstance(connection._usock, ssl.SSLSocket)
            assert connection._usock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            connection.close()

        with pytest.raises(pg8000.native.DatabaseError, match="password authentication failed"):
            _connect(secret, ssl_context=verifying, password=secret["password"] + "x")
        # A client that does not ask for TLS is not served.
        with pytest.raises(pg8000.native.InterfaceError):
            _connect(secret, ssl_context=False)
        # A client that verifies against another CA (the system store's) refuses the front.
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect(secret, ssl_context=ssl.create_default_context())


def test_the_master_needs_its_password_even_on_the_trusted_loopback(servers) -> None:
    with pytest.raises(pg8000.native.DatabaseError, match="password authentication failed"):
        pg8000.native.Connection(
            MASTER_USER,
            host="127.0.0.1",
            port=servers.postgres.primary.port,
            password="guessed",
            ssl_context=False,
            timeout=10,
        )
    # Everything else keeps signing in as before.
    connection = pg8000.native.Connection(
        "postgres", host="127.0.0.1", port=servers.postgres.primary.port, timeout=10
    )
    assert connection.run("SELECT 1") == [[1]]
    connection.close()


def test_an_outside_database_gives_the_migrator_its_own_credentials_and_tls() -> None:
    secret, tls = master_secret_from_url(
        "postgresql://admin:s%40cret@db.example.internal:6432/covenant"
        "?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem"
    )
    assert secret == {
        "engine": "postgres",
        "host": "db.example.internal",
        "port": 6432,
        "username": "admin",
        "password": "s@cret",
        "dbname": "covenant",
    }
    assert tls == "sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem"


def test_an_outside_database_without_tls_stops_the_start() -> None:
    with pytest.raises(DevStackError, match="add sslmode=require"):
        master_secret_from_url("postgresql://admin:secret@127.0.0.1:5432/covenant")


def test_a_second_stack_in_the_same_process_gets_the_master_secret_again() -> None:
    """moto's state outlives its server within a process: a stack started after another (as
    bench.bridge starts one per topology) finds the secret there and writes the new password
    as its next version instead of failing."""
    from devstack.cognito import MotoServer
    from devstack.event_sources import moto_client
    from devstack.processes import free_port
    from devstack.stack import _store_secret

    server = MotoServer(free_port())
    server.start()
    try:
        name = "covenant-test/database-master"
        first = _store_secret(server.endpoint_url, "us-east-1", name, {"password": "one"})
        again = _store_secret(server.endpoint_url, "us-east-1", name, {"password": "two"})
        assert again == first
        client = moto_client("secretsmanager", server.endpoint_url, "us-east-1")
        assert client.get_secret_value(SecretId=first)["SecretString"] == '{"password": "two"}'
    finally:
        server.stop()

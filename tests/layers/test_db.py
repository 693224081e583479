"""Connections: roles really go to different servers, survive a dropped connection, time out."""

from __future__ import annotations

import socket
import ssl

import pytest
from pg8000.exceptions import DatabaseError

from covenant import db
from covenant.db import (
    ConnectionSpec,
    Database,
    DatabaseUnavailable,
    Role,
    record_statements,
    sqlstate,
)


def test_reader_is_the_replica_and_writer_the_primary(servers, reader, writer) -> None:
    with reader.session() as session:
        assert session.scalar("SELECT pg_is_in_recovery()") is True
        assert session.scalar("SELECT inet_server_port()") == servers.postgres.replica.port
    with writer.session() as session:
        assert session.scalar("SELECT pg_is_in_recovery()") is False
        assert session.scalar("SELECT inet_server_port()") == servers.postgres.primary.port


def test_connections_are_reused_across_invocations(reader) -> None:
    with reader.session() as first:
        pid = first.backend_pid
    with reader.session() as second:
        assert second.backend_pid == pid


@pytest.mark.parametrize("role", [Role.READER, Role.WRITER])
def test_a_connection_dropped_by_the_server_is_replaced_without_failing(role, writer) -> None:
    target = db.database(role)
    with target.session() as session:
        old_pid = session.backend_pid
    # Kill the backend from another session, as a failover or idle timeout would.
    admin = Database(role, target.url, statement_timeout_ms=5000, connect_timeout_s=3)
    with admin.session() as session:
        assert session.scalar("SELECT pg_terminate_backend(:pid)", pid=old_pid) is True
    admin.close()
    with target.session() as session:
        assert session.scalar("SELECT 41 + 1") == 42
        assert session.backend_pid != old_pid


def test_statement_timeout_is_enforced(servers) -> None:
    short = Database(Role.READER, servers.reader_url, statement_timeout_ms=200, connect_timeout_s=3)
    with short.session() as session, pytest.raises(DatabaseError) as raised:
        session.run("SELECT pg_sleep(2)")
    assert sqlstate(raised.value) == "57014"  # query_canceled
    with short.session() as session:  # the connection is still usable afterwards
        assert session.scalar("SELECT 1") == 1
    short.close()


def test_reader_refuses_writes(reader) -> None:
    with reader.session() as session, pytest.raises(DatabaseError) as raised:
        session.run("CREATE TABLE nope (id int)")
    assert sqlstate(raised.value) == "25006"  # read_only_sql_transaction


def test_unreachable_server_is_a_clear_error(servers) -> None:
    from devstack.processes import free_port

    dead = Database(
        Role.READER,
        f"postgresql://postgres:secret@127.0.0.1:{free_port()}/covenant",
        statement_timeout_ms=1000,
        connect_timeout_s=1,
    )
    with pytest.raises(DatabaseUnavailable) as raised, dead.session() as session:
        session.run("SELECT 1")
    assert "cannot connect to the reader at postgres@127.0.0.1" in str(raised.value)
    assert "secret" not in str(raised.value)


def test_statements_are_counted_per_request(reader) -> None:
    with record_statements() as statements, reader.session() as session:
        session.run("SELECT 1")
        session.rows("SELECT code FROM countries WHERE code = :code", code="KEN")
    assert len(statements) == 2


def test_url_sslmodes_follow_libpq() -> None:

    assert ConnectionSpec.from_url("postgresql://u@h/db").ssl_context() is None
    require = ConnectionSpec.from_url("postgresql://u@h/db?sslmode=require").ssl_context()
    assert require is not None
    assert (require.verify_mode, require.check_hostname) == (ssl.CERT_NONE, False)
    verify_ca = ConnectionSpec.from_url("postgresql://u@h/db?sslmode=verify-ca").ssl_context()
    assert verify_ca is not None
    assert (verify_ca.verify_mode, verify_ca.check_hostname) == (ssl.CERT_REQUIRED, False)
    full = ConnectionSpec.from_url("postgresql://u@h/db?sslmode=verify-full").ssl_context()
    assert full is not None
    assert (full.verify_mode, full.check_hostname) == (ssl.CERT_REQUIRED, True)
    with pytest.raises(ValueError, match="sslmode must be one of"):
        ConnectionSpec.from_url("postgresql://u@h/db?sslmode=prefer-maybe")


def test_iam_auth_signs_a_token_per_connect_and_needs_tls(monkeypatch) -> None:

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    spec = ConnectionSpec.from_url(
        "postgresql://covenant_graphql@db.example.internal:5432/covenant?sslmode=require&auth=iam"
    )
    assert spec.iam_auth and spec.password is None
    token = spec.secret()
    assert token is not None
    assert token.startswith("db.example.internal:5432/?Action=connect&DBUser=covenant_graphql")
    assert "X-Amz-Signature=" in token and "eu-west-1" in token
    assert "covenant_graphql@db.example.internal" in spec.redacted()
    assert "Signature" not in spec.redacted()
    with pytest.raises(ValueError, match="needs TLS"):
        ConnectionSpec.from_url("postgresql://u@h/db?auth=iam")
    with pytest.raises(ValueError, match="auth must be"):
        ConnectionSpec.from_url("postgresql://u@h/db?auth=kerberos")


def test_connections_send_without_nagle_delay(writer) -> None:
    with writer.session() as session:
        session.scalar("SELECT 1")
    sock = writer.connection()._usock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

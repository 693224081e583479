"""Connections: roles really go to different servers, survive a dropped connection, time out."""

from __future__ import annotations

import socket
import ssl

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from covenant import db
from covenant.db import (
    ConnectionSpec,
    Database,
    DatabaseUnavailable,
    Role,
    record_statements,
    sqlstate,
)
from devstack.processes import wait_until


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


def test_reader_role_is_read_only_on_a_writable_server(servers) -> None:
    # The replica refuses writes anyway; the reader role must also refuse them when it points
    # at the primary (DATABASE_READER_URL unset, or a failover made its endpoint writable).
    on_primary = Database(
        Role.READER, servers.writer_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    try:
        with on_primary.session() as session:
            assert session.scalar("SELECT pg_is_in_recovery()") is False
            with pytest.raises(DatabaseError) as raised:
                session.run("CREATE TABLE nope (id int)")
        assert sqlstate(raised.value) == "25006"  # read_only_sql_transaction
    finally:
        on_primary.close()


def test_both_roles_carry_the_statement_and_idle_transaction_timeouts(reader, writer) -> None:
    for role in (reader, writer):
        with role.session() as session:
            assert session.scalar("SHOW statement_timeout") == "5s"
            # A client that vanishes mid-transaction must not hold its locks for long.
            assert session.scalar("SHOW idle_in_transaction_session_timeout") == "1min"


def test_a_misuse_is_not_taken_for_a_lost_connection(writer) -> None:
    """pg8000 raises InterfaceError for a broken socket and for a COMMIT after a failed
    statement alike; only the first means the connection is gone."""
    with writer.session() as session:
        pid = session.backend_pid
        session.run("BEGIN")
        with pytest.raises(DatabaseError):
            session.run("SELECT 1 / 0")
        with pytest.raises(InterfaceError, match="in failed transaction block"):
            session.run("COMMIT")  # the server rolled back instead
    with writer.session() as session:
        assert session.backend_pid == pid  # the healthy connection was kept
        assert session.scalar("SELECT 1") == 1


def test_a_write_whose_answer_timed_out_is_not_run_again(servers, writer) -> None:
    """The server may have run it: retrying on a fresh connection would run a write twice."""
    with writer.session() as session:
        session.run("CREATE TABLE IF NOT EXISTS timed_out_writes (n int)")
    impatient = Database(
        Role.WRITER, servers.writer_url, statement_timeout_ms=5000, connect_timeout_s=3
    )

    def finished() -> bool:
        with writer.session() as session:
            return not session.scalar(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE state = 'active' AND query LIKE 'INSERT INTO timed_out_writes%'"
            )

    try:
        impatient.connection()._usock.settimeout(0.2)  # the answer comes after 0.5 s
        with impatient.session() as session, pytest.raises(DatabaseUnavailable):
            session.run("INSERT INTO timed_out_writes SELECT 1 FROM pg_sleep(0.5)")
        wait_until(finished, 10, "the abandoned INSERT to end")
        with writer.session() as session:
            assert session.scalar("SELECT count(*) FROM timed_out_writes") == 1
    finally:
        impatient.close()
        with writer.session() as session:
            session.run("DROP TABLE timed_out_writes")


def test_a_read_whose_answer_timed_out_is_retried_on_a_fresh_connection(servers) -> None:
    """A peer gone without a word (a failover) looks like a timeout; reading again is safe."""
    impatient = Database(
        Role.READER, servers.reader_url, statement_timeout_ms=5000, connect_timeout_s=3
    )
    try:
        impatient.connection()._usock.settimeout(0.2)
        with impatient.session() as session:
            assert session.scalar("SELECT 7 FROM pg_sleep(0.5)") == 7
    finally:
        impatient.close()


def test_passwords_stay_out_of_printed_settings() -> None:
    url = "postgresql://covenant:hunter2@db.internal:5432/covenant?sslmode=require"
    assert "hunter2" not in repr(ConnectionSpec.from_url(url))
    assert "hunter2" not in repr(
        Database(Role.WRITER, url, statement_timeout_ms=1, connect_timeout_s=1).spec
    )


def test_a_reader_survives_a_replica_restart(servers, reader, wait_for_replica) -> None:
    with reader.session() as session:
        old_pid = session.backend_pid
    servers.postgres.restart_replica()
    with reader.session() as session:  # the first request after the restart succeeds
        assert session.scalar("SELECT count(*) FROM countries") > 0
        assert session.backend_pid != old_pid
    wait_for_replica()


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


def test_a_statement_with_parameters_is_prepared_once_per_connection(writer) -> None:
    """Run again, it is the same prepared statement (one round trip: Bind, Execute, Sync), and
    answers what the SQL says for each run's values, nulls included."""
    sql = "SELECT CAST(:a AS int) + CAST(:b AS int) AS sum, ':not' AS text"
    with writer.session() as session:
        assert session.rows(sql, a=2, b=3) == [{"sum": 5, "text": ":not"}]
        prepared = db._prepared[writer.connection()][sql]
        assert session.rows(sql, a=40, b=2) == [{"sum": 42, "text": ":not"}]
        assert session.rows(sql, a=None, b=2) == [{"sum": None, "text": ":not"}]
        assert db._prepared[writer.connection()][sql] is prepared
        assert session.scalar("SHOW plan_cache_mode") == "force_custom_plan"


def test_a_query_without_parameters_is_prepared_and_planned_once(writer) -> None:
    """A SELECT or WITH without parameters is prepared too (its plan, having no value to
    depend on, is kept by the server); transaction control and several statements in one
    string keep the simple query protocol."""
    queries = ["SELECT 1 AS one", "  with t AS (SELECT 2 AS two) SELECT two FROM t"]
    with writer.session() as session:
        assert session.rows(queries[0]) == [{"one": 1}]
        assert session.scalar(queries[1]) == 2
        prepared = {sql: db._prepared[writer.connection()][sql] for sql in queries}
        assert session.rows(queries[0]) == [{"one": 1}]
        assert db._prepared[writer.connection()][queries[0]] is prepared[queries[0]]
        for sql in ("BEGIN", "SET LOCAL lock_timeout TO '1s'", "SELECT 1; SELECT 2", "COMMIT"):
            session.run(sql)
            assert sql not in db._prepared[writer.connection()]
        # pg8000 would take `:2` for a parameter: sent as it is, by the simple protocol.
        sliced = "SELECT (ARRAY[1, 2, 3])[1:2] AS s"
        assert session.rows(sliced) == [{"s": [1, 2]}]
        assert sliced not in db._prepared[writer.connection()]
        # The server kept one generic plan, planned at the first run and reused since.
        plans = session.rows(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement = :text",
            text=queries[0],
        )
        assert plans == [{"generic_plans": 2, "custom_plans": 0}]


def test_which_queries_without_parameters_are_prepared() -> None:
    assert db._plans_once("SELECT 1") and db._plans_once("\n  WITH a AS (SELECT 1) TABLE a")
    assert db._plans_once("SELECT ':x'::text -- a comment: fine")
    for sql in ("BEGIN", "SELECT 1; SELECT 2", "SELECT a[1:n] FROM t", "SELECT 1 AS x:"):
        assert not db._plans_once(sql), sql  # the last one pg8000 cannot read: not an error


def test_a_prepared_statement_outlives_a_schema_change(writer) -> None:
    """A migration that changes a statement's result columns: the next run outside a
    transaction is prepared afresh and answers; inside one, the error stands (the
    transaction is aborted) and the run after it works."""
    with writer.session() as session:
        session.run("DROP TABLE IF EXISTS prepared_probe")
        session.run("CREATE TABLE prepared_probe (a int)")
        session.run("INSERT INTO prepared_probe VALUES (1)")
        try:
            sql = "SELECT * FROM prepared_probe WHERE a = CAST(:a AS int)"
            assert session.rows(sql, a=1) == [{"a": 1}]
            session.run("ALTER TABLE prepared_probe ADD COLUMN b int DEFAULT 7")
            assert session.rows(sql, a=1) == [{"a": 1, "b": 7}]
            session.run("ALTER TABLE prepared_probe ADD COLUMN c int DEFAULT 8")
            session.run("BEGIN")
            with pytest.raises(DatabaseError) as raised:
                session.rows(sql, a=1)
            assert db.sqlstate(raised.value) == "0A000"
            session.run("ROLLBACK")
            assert session.rows(sql, a=1) == [{"a": 1, "b": 7, "c": 8}]
        finally:
            session.run("DROP TABLE prepared_probe")

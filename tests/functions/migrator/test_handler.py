"""The migrations custom resource against the real PostgreSQL: idempotent, and it leaves every
function a login role that may read and write the data but not change the schema, and the
bridge's role the replicas' status as well."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bridge.replica_lag import MonitoringNotAllowed, replica_lags
from covenant import db
from migrator import handler as migrator

USER = "covenant_ci_login"


def _context() -> SimpleNamespace:
    return SimpleNamespace(
        function_name="migrator",
        memory_limit_in_mb=512,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:migrator",
        aws_request_id="request-1",
    )


def test_a_second_run_applies_nothing_and_the_login_role_can_use_the_data(writer) -> None:
    migrator.apply(writer, [USER])
    second = migrator.apply(writer, [USER])
    assert second["Applied"] == "none"
    assert int(second["Countries"]) >= 195
    with writer.session() as session:
        assert session.scalar("SELECT pg_has_role(:user, 'covenant_app', 'MEMBER')", user=USER)
        assert session.scalar(
            "SELECT has_table_privilege(:user, 'projects', 'INSERT, UPDATE, DELETE')", user=USER
        )
        assert not session.scalar(
            "SELECT has_schema_privilege(:user, 'public', 'CREATE')", user=USER
        )


def test_role_names_that_are_not_plain_identifiers_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_LOGIN_USERS", "covenant_graphql,bad; DROP TABLE projects")
    with pytest.raises(migrator.MigratorError, match="not a plain role name"):
        migrator.login_users()


def test_delete_never_touches_the_database(monkeypatch) -> None:
    def fail() -> db.Database:
        raise AssertionError("connected on Delete")

    monkeypatch.setattr(migrator, "master_database", fail)
    event = {"RequestType": "Delete", "PhysicalResourceId": "covenant-migrations"}
    assert migrator.handler(event, _context()) == {"PhysicalResourceId": "covenant-migrations"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, "sslmode=require"),
        (
            "sslmode=verify-full&sslrootcert=/opt/database-ca/bundle.pem",
            "sslmode=verify-full&sslrootcert=/opt/database-ca/bundle.pem",
        ),
    ],
)
def test_the_master_connection_uses_the_stacks_tls_setting(monkeypatch, setting, expected) -> None:
    if setting is None:
        monkeypatch.delenv("DATABASE_TLS", raising=False)
    else:
        monkeypatch.setenv("DATABASE_TLS", setting)
    assert migrator.database_tls() == expected


@pytest.mark.parametrize(
    "weaker",
    ["sslmode=disable", "sslmode=prefer", "sslmode=require&password=x", "sslmode=require "],
)
def test_a_tls_setting_weaker_than_require_is_refused(monkeypatch, weaker) -> None:
    monkeypatch.setenv("DATABASE_TLS", weaker)
    with pytest.raises(migrator.MigratorError, match="require or stricter"):
        migrator.database_tls()


MONITOR = "covenant_ci_monitor"


def _as(servers, user: str) -> db.Database:
    """The writer, signed in as `user` (loopback trusts it; in AWS an IAM token)."""
    url = servers.writer_url.replace("postgres@", f"{user}@", 1)
    return db.Database(db.Role.WRITER, url, statement_timeout_ms=5000, connect_timeout_s=3)


def test_a_monitor_role_reads_the_replicas_lag_and_the_others_may_not(writer, servers) -> None:
    migrator.ensure_login_roles(writer, [USER, MONITOR], [MONITOR])
    migrator.ensure_login_roles(writer, [USER, MONITOR], [MONITOR])  # idempotent
    with writer.session() as session:
        member = "SELECT pg_has_role(:user, :role, 'MEMBER')"
        assert session.scalar(member, user=MONITOR, role="pg_read_all_stats")
        assert not session.scalar(member, user=MONITOR, role="pg_monitor")  # no more than that
        assert not session.scalar(member, user=USER, role="pg_read_all_stats")
    monitor, other = _as(servers, MONITOR), _as(servers, USER)
    try:
        with monitor.session() as session:
            (replica,) = replica_lags(session)  # the standby's figures, not hidden
        assert replica.lag_s >= 0
        with other.session() as session, pytest.raises(MonitoringNotAllowed, match="pg_read_all"):
            replica_lags(session)
    finally:
        monitor.close()
        other.close()


def test_monitor_users_must_be_login_users(monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_LOGIN_USERS", "covenant_graphql,covenant_bridge")
    monkeypatch.setenv("DATABASE_MONITOR_USERS", "covenant_bridge")
    assert migrator.monitor_users() == ["covenant_bridge"]
    monkeypatch.setenv("DATABASE_MONITOR_USERS", "covenant_bridge,covenant_admin")
    with pytest.raises(migrator.MigratorError, match="'covenant_admin' is not in DATABASE_LOGIN"):
        migrator.monitor_users()


# AWS's documented signatures of the global database's lag functions (bridge.replica_lag), as
# PostgreSQL functions in a schema of their own: what runs on Aurora alone, read the same way.
AURORA_LOOKALIKE = """
CREATE SCHEMA aurora_lookalike;
CREATE FUNCTION aurora_lookalike.aurora_global_db_instance_status()
RETURNS TABLE (server_id text, session_id text, aws_region text, durable_lsn bigint,
               highest_lsn_rcvd bigint, feedback_epoch integer, feedback_xmin integer,
               oldest_read_view_lsn bigint, visibility_lag_in_msec bigint)
LANGUAGE sql AS $$
    VALUES ('iad-writer', 'MASTER_SESSION_ID', 'us-east-1', 100::bigint, NULL::bigint,
            NULL::integer, NULL::integer, NULL::bigint, NULL::bigint),
           ('iad-reader-1', 'a1', 'us-east-1', 100, 100, 0, 0, 100, 12),
           ('ams-reader-1', 'b1', 'eu-west-1', 90, 90, 0, 0, 90, 40),
           ('syd-reader-1', 'c1', 'ap-southeast-2', 80, 80, 0, 0, 80, NULL)
$$;
CREATE FUNCTION aurora_lookalike.aurora_global_db_status()
RETURNS TABLE (aws_region text, highest_lsn_written bigint, durability_lag_in_msec bigint,
               rpo_lag_in_msec bigint, last_lag_calculation_time timestamptz,
               feedback_epoch integer, feedback_xmin integer)
LANGUAGE sql AS $$
    VALUES ('us-east-1', 100::bigint, -1::bigint, -1::bigint, 'epoch'::timestamptz,
            NULL::integer, NULL::integer),
           ('eu-west-1', 90, 7000, 7100, now(), 0, 0),
           ('ap-southeast-2', 80, 300, 350, now(), 0, 0)
$$;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA aurora_lookalike FROM PUBLIC;
GRANT USAGE ON SCHEMA aurora_lookalike TO PUBLIC;
"""


def test_on_aurora_the_monitor_role_may_execute_the_lag_functions(writer, servers) -> None:
    migrator.ensure_login_roles(writer, [USER, MONITOR])
    master, monitor, other = (
        _as(servers, "postgres"),
        _as(servers, MONITOR),
        _as(servers, USER),
    )
    with master.session() as session:
        session.run("DROP SCHEMA IF EXISTS aurora_lookalike CASCADE")
        session.run(AURORA_LOOKALIKE)  # no parameters: one simple query, several statements
    try:
        with master.session() as session:
            session.run("SET search_path = aurora_lookalike, public")
            migrator._grant_monitoring(session, MONITOR)
        with monitor.session() as session:
            session.run("SET search_path = aurora_lookalike, public")
            lags = {replica.name: replica.lag_s for replica in replica_lags(session)}
        # Each reader as far behind as the larger of its own lag and its region's storage lag.
        assert lags == {
            "ap-southeast-2/syd-reader-1": 0.3,
            "eu-west-1/ams-reader-1": 7.0,
            "us-east-1/iad-reader-1": 0.012,
        }
        with other.session() as session, pytest.raises(MonitoringNotAllowed, match="EXECUTE"):
            session.run("SET search_path = aurora_lookalike, public")
            replica_lags(session)
    finally:
        with master.session() as session:
            session.run("DROP SCHEMA IF EXISTS aurora_lookalike CASCADE")
        for database in (master, monitor, other):
            database.close()

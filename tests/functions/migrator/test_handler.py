"""The migrations custom resource against the real PostgreSQL: idempotent, and it leaves every
function a login role that may read and write the data but not change the schema."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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

"""Migrations custom resource (CloudFormation, through the CDK provider framework).

Create and Update apply the pending migrations and the seed data with the one migration runner
(`covenant.migrate`, `covenant.seed`), as the master user whose credentials Secrets Manager
holds, then make sure every function's login role exists: NOLOGIN group `covenant_app` with
the data privileges, and one LOGIN role per function granted `rds_iam`, so the functions sign
in with IAM tokens only. The roles of DATABASE_MONITOR_USERS (the bridge's: it alerts on replica
lag) may also read the replicas' status, and nothing more: `pg_read_all_stats` (the walsenders'
figures in `pg_stat_replication`, which PostgreSQL otherwise hides) and, on Aurora, EXECUTE on
`aurora_global_db_instance_status()` and `aurora_global_db_status()` should PUBLIC not hold it.
Everything is idempotent; a failure fails the deploy, which rolls back.
Delete never touches the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from covenant.config import env
from covenant.db import AURORA_LAG_FUNCTIONS, Database, Role, Session
from covenant.logs import adopt_shared_logs
from covenant.migrate import migrate
from covenant.seed import seed

logger = Logger(service="migrator")
_TLS = re.compile(r"^sslmode=(require|verify-ca|verify-full)(&sslrootcert=/[\w./-]+)?$")

PHYSICAL_ID = "covenant-migrations"
APP_ROLE = "covenant_app"
# Long enough for an index build on a large table, shorter than the function's timeout.
STATEMENT_TIMEOUT_MS = 9 * 60 * 1000
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigratorError(RuntimeError):
    """The custom resource is misconfigured."""


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID)}
    database = master_database()
    try:
        data = apply(database, login_users(), monitor_users())
    finally:
        database.close()
    logger.info("database ready", extra=data)
    return {"PhysicalResourceId": PHYSICAL_ID, "Data": data}


def login_users() -> list[str]:
    users = [u.strip() for u in (env("DATABASE_LOGIN_USERS") or "").split(",") if u.strip()]
    for user in users:
        if not _IDENTIFIER.match(user):
            raise MigratorError(f"DATABASE_LOGIN_USERS: {user!r} is not a plain role name")
    return users


def monitor_users() -> list[str]:
    """The login roles that may also read the replicas' status; each must be a login user."""
    users = [u.strip() for u in (env("DATABASE_MONITOR_USERS") or "").split(",") if u.strip()]
    logins = set(login_users())
    for user in users:
        if user not in logins:
            raise MigratorError(f"DATABASE_MONITOR_USERS: {user!r} is not in DATABASE_LOGIN_USERS")
    return users


def database_tls() -> str:
    """The URL's TLS settings, as the stack sets them (stacks.settings.DatabaseSettings):
    `sslmode=verify-full&sslrootcert=...` with a CA bundle, else `sslmode=require`. Never
    weaker than require: the master password travels on this connection."""
    tls = env("DATABASE_TLS") or "sslmode=require"
    if not _TLS.match(tls):
        raise MigratorError(f"DATABASE_TLS must be sslmode=require or stricter, not {tls!r}")
    return tls


def master_database() -> Database:
    secret_arn = env("DATABASE_SECRET_ARN")
    if not secret_arn:
        raise MigratorError("DATABASE_SECRET_ARN is not set")
    secret: dict[str, Any] = parameters.get_secret(secret_arn, transform="json", force_fetch=True)
    url = (
        f"postgresql://{quote(str(secret['username']), safe='')}:"
        f"{quote(str(secret['password']), safe='')}@{secret['host']}:{secret.get('port', 5432)}/"
        f"{quote(str(secret.get('dbname') or 'covenant'), safe='')}?{database_tls()}"
    )
    return Database(
        Role.WRITER,
        url,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        connect_timeout_s=10,
        application_name="covenant-migrator",
    )


def apply(database: Database, users: list[str], monitors: Sequence[str] = ()) -> dict[str, str]:
    """Migrations, seed data, login roles; returns what the custom resource reports."""
    applied = migrate(database)
    seeded = seed(database)
    ensure_login_roles(database, users, monitors)
    return {
        "Applied": ",".join(f"{m.version:04d}_{m.name}" for m in applied) or "none",
        "Countries": str(seeded.countries),
        "Projects": str(seeded.projects),
        "LoginRoles": ",".join(users),
        "MonitorRoles": ",".join(monitors),
    }


def ensure_login_roles(database: Database, users: list[str], monitors: Sequence[str] = ()) -> None:
    with database.session() as session:
        session.run("BEGIN")
        try:
            _grant_app_role(session)
            iam_role = session.scalar("SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'")
            for user in users:
                _login_role(session, user, iam=bool(iam_role))
            for user in monitors:
                _grant_monitoring(session, user)
            session.run("COMMIT")
        except BaseException:
            session.run("ROLLBACK")
            raise


# Role names are checked against _IDENTIFIER before they reach SQL text; DDL takes no binds.
def _grant_app_role(session: Session) -> None:
    session.run(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN;
            END IF;
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO {APP_ROLE}', current_database());
        END $$
        """
    )
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {APP_ROLE}",
    ):
        session.run(statement)


def _login_role(session: Session, user: str, *, iam: bool) -> None:
    if not _IDENTIFIER.match(user):
        raise MigratorError(f"{user!r} is not a plain role name")
    session.run(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN
                CREATE ROLE {user} LOGIN;
            END IF;
        END $$
        """
    )
    session.run(f"GRANT {APP_ROLE} TO {user}")
    if iam:
        session.run(f"GRANT rds_iam TO {user}")


def _grant_monitoring(session: Session, user: str) -> None:
    """What reading the replicas' lag takes, and no more: pg_read_all_stats, not pg_monitor (it
    adds every setting and the table-scanning statistics functions) unless the master user may
    grant only that (a grantor needs ADMIN on the very role it grants, and AWS documents what
    rds_superuser may grant only loosely). A lag function the master may not grant EXECUTE on
    leaves a warning here, not a failed deploy: the bridge then reports ReplicaLagUnreadable
    every minute, and the CloudWatch replica-lag alarm still watches."""
    if not _IDENTIFIER.match(user):
        raise MigratorError(f"{user!r} is not a plain role name")
    functions = ", ".join(f"'{f}'" for f in AURORA_LAG_FUNCTIONS)
    session.run(
        f"""
        DO $$
        DECLARE
            signature text;
        BEGIN
            BEGIN
                GRANT pg_read_all_stats TO {user};
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'may not grant pg_read_all_stats; granting pg_monitor to {user}';
                GRANT pg_monitor TO {user};
            END;
            FOREACH signature IN ARRAY ARRAY[{functions}] LOOP
                IF to_regprocedure(signature) IS NOT NULL
                   AND NOT has_function_privilege('{user}', to_regprocedure(signature), 'EXECUTE')
                THEN
                    BEGIN
                        EXECUTE format(
                            'GRANT EXECUTE ON FUNCTION %s TO {user}', to_regprocedure(signature)
                        );
                    EXCEPTION WHEN insufficient_privilege THEN
                        RAISE WARNING 'may not grant EXECUTE on % to {user}', signature;
                    END;
                END IF;
            END LOOP;
        END $$
        """
    )

"""Pre-flight checks DevOps runs before `cdk deploy` (`make preflight`), with the credentials of
the target account: what can be known without deploying.

- the context values (cdk.json): parse, and the database connection budget (stacks/capacity.py);
- per region of the region table: the region is enabled (af-south-1 is opt-in), the CDK
  bootstrap stack's version (SSM `/cdk-bootstrap/hnb659fds/version`), Lambda's concurrency
  quota against the reserved concurrencies plus the 100 unreserved executions Lambda keeps,
  the Aurora PostgreSQL engine version exists and supports global databases, and the
  `db.<instanceClass>` can be ordered for it.

Exit status 1 when any check fails; every check prints one line. Tested against moto
(tests/tools/test_preflight.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
import boto3
from botocore.exceptions import BotoCoreError, ClientError

from covenant.regions import Region, cdk_context
from stacks.capacity import check_connection_budget
from stacks.settings import AppSettings, SettingsError

BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
# DefaultStackSynthesizer of aws-cdk-lib 2.x deploys through the bootstrap roles of version 6+;
# the CLI's asset publishing and lookups want 21+ in current releases.
MINIMUM_BOOTSTRAP_VERSION = 21
UNRESERVED_MINIMUM = 100  # Lambda keeps this many executions unreserved per region


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


ClientFactory = Callable[[str, str], Any]


def default_clients(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)


def check_context(context: dict[str, Any]) -> tuple[Check, AppSettings | None]:
    try:
        settings = AppSettings.from_node(cdk.App(context=context).node)
        check_connection_budget(settings)
    except (SettingsError, ValueError, KeyError) as error:
        return Check("context", False, str(error)), None
    return Check("context", True, "cdk.json parses; connection budgets fit"), settings


def _reserved(settings: AppSettings, region: Region) -> int:
    total = 0
    for name, spec in settings.functions.items():
        deploy = settings.deploy.get(name)
        if deploy is None or (not (spec.routes or spec.websocket) and not region.primary):
            continue  # primary-only functions (the bridge) exist in the primary only
        total += deploy.reserved_for(region) or 0
    return total


def check_region(settings: AppSettings, region: Region, clients: ClientFactory) -> Iterator[Check]:
    where = f"{region.code} ({region.aws_region})"
    try:
        regions = clients("ec2", region.aws_region).describe_regions(AllRegions=True)["Regions"]
        status = next(
            (r.get("OptInStatus", "") for r in regions if r["RegionName"] == region.aws_region),
            "absent",
        )
        yield Check(
            f"{where} enabled",
            status in ("opt-in-not-required", "opted-in"),
            f"opt-in status {status}",
        )
    except (ClientError, BotoCoreError) as error:
        yield Check(f"{where} enabled", False, str(error))
    try:
        raw = clients("ssm", region.aws_region).get_parameter(Name=BOOTSTRAP_PARAMETER)
        version = int(raw["Parameter"]["Value"])
        yield Check(
            f"{where} CDK bootstrap",
            version >= MINIMUM_BOOTSTRAP_VERSION,
            f"version {version} (need {MINIMUM_BOOTSTRAP_VERSION}+)",
        )
    except (ClientError, BotoCoreError) as error:
        yield Check(f"{where} CDK bootstrap", False, f"not bootstrapped ({error})")
    try:
        limit = int(
            clients("lambda", region.aws_region).get_account_settings()["AccountLimit"][
                "ConcurrentExecutions"
            ]
        )
        need = _reserved(settings, region) + UNRESERVED_MINIMUM
        yield Check(
            f"{where} Lambda concurrency quota",
            limit >= need,
            f"{limit} (reserved {need - UNRESERVED_MINIMUM} + {UNRESERVED_MINIMUM} unreserved)",
        )
    except (ClientError, BotoCoreError) as error:
        yield Check(f"{where} Lambda concurrency quota", False, str(error))
    yield from _check_aurora(settings, region, clients)


def _check_aurora(settings: AppSettings, region: Region, clients: ClientFactory) -> Iterator[Check]:
    where = f"{region.code} ({region.aws_region})"
    database = settings.database
    rds = clients("rds", region.aws_region)
    try:
        versions = rds.describe_db_engine_versions(
            Engine="aurora-postgresql", EngineVersion=database.engine_version
        )["DBEngineVersions"]
        global_ok = bool(versions) and all(v.get("SupportsGlobalDatabases") for v in versions)
        yield Check(
            f"{where} Aurora PostgreSQL {database.engine_version} global database",
            global_ok,
            "available, supports global databases" if global_ok else "not offered here",
        )
        options = rds.describe_orderable_db_instance_options(
            Engine="aurora-postgresql",
            EngineVersion=database.engine_version,
            DBInstanceClass=f"db.{database.instance_class}",
        )["OrderableDBInstanceOptions"]
        yield Check(
            f"{where} db.{database.instance_class}",
            bool(options),
            "orderable" if options else "not orderable for this engine version",
        )
    except (ClientError, BotoCoreError, NotImplementedError) as error:
        yield Check(f"{where} Aurora", False, str(error))


def run(context: dict[str, Any], clients: ClientFactory = default_clients) -> list[Check]:
    context_check, settings = check_context(context)
    checks = [context_check]
    if settings is not None:
        for region in settings.regions:
            checks.extend(check_region(settings, region, clients))
    return checks


def main() -> int:
    checks = run(cdk_context())
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pre-flight checks DevOps runs before `cdk deploy` (`make preflight`), with the credentials of
the target account: what can be known without deploying.

- the context values (cdk.json): parse, and the database connection budget (stacks/capacity.py);
- per region of the region table: the region is enabled (af-south-1 is opt-in), the CDK
  bootstrap stack's version (SSM `/cdk-bootstrap/hnb659fds/version`), Lambda's concurrency
  quota against the reserved concurrencies plus the 100 unreserved executions Lambda keeps,
  the Aurora PostgreSQL engine version exists and supports global databases, and the
  `db.<instanceClass>` can be ordered for it;
- SnapStart for the Python runtime, in each region with a SnapStart function: the runtime is
  one SnapStart supports, and the region is one AWS has announced it in (no API answers this:
  SNAPSTART_PYTHON_REGIONS, from AWS's announcements);
- in the primary region: EKS is offered and its API lists the cluster's Kubernetes version,
  which EKS Auto Mode supports; Cognito user pools are offered (the Plus feature plan, for threat
  protection, comes with them) and answer with these credentials.

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
from stacks.layers import LAMBDA_RUNTIME
from stacks.settings import AppSettings, SettingsError

BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
# DefaultStackSynthesizer of aws-cdk-lib 2.x deploys through the bootstrap roles of version 6+;
# the CLI's asset publishing and lookups want 21+ in current releases.
MINIMUM_BOOTSTRAP_VERSION = 21
UNRESERVED_MINIMUM = 100  # Lambda keeps this many executions unreserved per region
# Where AWS has announced Lambda SnapStart for Python: the nine launch regions (What's New,
# 2024-11-18), and us-west-1 and af-south-1 from a 2025 expansion, which could not be checked
# against AWS's page from where this was written: confirm those two there before the first
# deploy. AWS has no API that answers it: confirm a region missing here before adding it.
SNAPSTART_PYTHON_REGIONS = frozenset(
    {
        "us-east-1",
        "us-east-2",
        "us-west-2",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-northeast-1",
        "eu-central-1",
        "eu-west-1",
        "eu-north-1",
        "us-west-1",
        "af-south-1",
    }
)
SNAPSTART_PYTHON_MINIMUM = (3, 12)
AUTO_MODE_MINIMUM_KUBERNETES = (1, 29)
SERVICE_PARAMETER = "/aws/service/global-infrastructure/regions/{region}/services/{service}"


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
    yield from _check_snapstart(settings, region)
    if region.primary:
        yield from _check_eks(settings, region, clients)
        yield from _check_cognito(settings, region, clients)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _check_snapstart(settings: AppSettings, region: Region) -> Iterator[Check]:
    names = sorted(
        name
        for name, spec in settings.functions.items()
        if (deploy := settings.deploy.get(name)) is not None
        and deploy.snap_start
        and (spec.routes or region.primary)
    )
    if not names:
        return
    where = f"{region.code} ({region.aws_region})"
    runtime = LAMBDA_RUNTIME.name  # "python3.13"
    supported = runtime.startswith("python") and (
        _version(runtime.removeprefix("python")) >= SNAPSTART_PYTHON_MINIMUM
    )
    announced = region.aws_region in SNAPSTART_PYTHON_REGIONS
    if not supported:
        detail = f"{runtime} is not a runtime SnapStart supports (Python 3.12 or later)"
    elif not announced:
        detail = (
            f"not announced for {region.aws_region}: confirm on AWS's SnapStart page, or set "
            f"snapStart false for {', '.join(names)}"
        )
    else:
        detail = f"{runtime} supported, announced here ({', '.join(names)})"
    yield Check(f"{where} SnapStart for {runtime}", supported and announced, detail)


def _offered(service: str, region: Region, clients: ClientFactory) -> bool:
    """Whether AWS's public SSM parameters list `service` in the region."""
    ssm = clients("ssm", region.aws_region)
    try:
        ssm.get_parameter(Name=SERVICE_PARAMETER.format(region=region.aws_region, service=service))
    except ssm.exceptions.ParameterNotFound:
        return False
    return True


def _check_eks(settings: AppSettings, region: Region, clients: ClientFactory) -> Iterator[Check]:
    where = f"{region.code} ({region.aws_region})"
    version = settings.events.kubernetes_version
    name = f"{where} EKS Auto Mode, Kubernetes {version}"
    try:
        if not _offered("eks", region, clients):
            yield Check(name, False, "EKS is not offered in this region")
            return
        listed = clients("eks", region.aws_region).describe_cluster_versions(
            clusterVersions=[version]
        )["clusterVersions"]
    except (ClientError, BotoCoreError) as error:
        yield Check(name, False, str(error))
        return
    statuses = [v.get("versionStatus", "?") for v in listed if v.get("clusterVersion") == version]
    if not statuses:
        yield Check(name, False, f"EKS does not offer Kubernetes {version} here")
    elif _version(version) < AUTO_MODE_MINIMUM_KUBERNETES:
        yield Check(name, False, f"Auto Mode needs Kubernetes 1.29 or later, not {version}")
    else:
        yield Check(name, True, f"offered ({statuses[0]})")


def _check_cognito(
    settings: AppSettings, region: Region, clients: ClientFactory
) -> Iterator[Check]:
    where = f"{region.code} ({region.aws_region})"
    protection = settings.auth.threat_protection.upper()
    plan = "Essentials" if protection == "OFF" else "Plus"
    name = f"{where} Cognito user pools, {plan} plan"
    try:
        if not _offered("cognito-idp", region, clients):
            yield Check(name, False, "Cognito user pools are not offered in this region")
            return
        clients("cognito-idp", region.aws_region).list_user_pools(MaxResults=1)
    except (ClientError, BotoCoreError) as error:
        yield Check(name, False, str(error))
        return
    detail = "offered; feature plans come with user pools"
    if plan == "Plus":
        detail += f" (threat protection {protection})"
    yield Check(name, True, detail)


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

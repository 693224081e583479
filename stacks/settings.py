"""Everything the stacks are configured by, read from cdk.json context (never literals).

The region table (`covenant:regions`) and the function table (`covenant:functions`) are parsed
by the shared layer, so the functions and the local stack read exactly what the deploy reads;
the keys below them are infrastructure only. Names other stacks or regions must find without a
lookup (the global cluster, each regional cluster, the wake-up queue) are derived here, once,
from context: that is how secondary regions learn what lives in the primary region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constructs import Node

from covenant.regions import CONTEXT_KEY as REGIONS_KEY
from covenant.regions import Region, parse_regions
from covenant.topology import CONTEXT_KEY as FUNCTIONS_KEY
from covenant.topology import FunctionSpec, parse_functions

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the database CA layer puts the bundle in a function (layers unpack under /opt).
DATABASE_CA_FILE = "/opt/database-ca/bundle.pem"
# Where each region's Data stack stores AWS's RDS CA certificates of that region at deploy time
# (Custom::CovenantDatabaseCa), one SSM parameter per certificate; the functions read it.
DATABASE_CA_PARAMETER_PATH = "/covenant/database-ca"
RDS_TRUSTSTORE = "https://truststore.pki.rds.amazonaws.com"


class SettingsError(ValueError):
    """The cdk.json context is missing a value or holds a malformed one."""


def _ca_bundle(raw: Any) -> Path | None:
    if raw in (None, ""):
        return None
    path = Path(str(raw))
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"covenant:database caBundle {raw!r} cannot be read: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SettingsError(f"covenant:database caBundle {raw!r} holds no PEM certificate")
    return path


def _flag(section: Mapping[str, Any], key: str) -> bool:
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise SettingsError(f"{key!r} must be true or false, not {value!r}")
    return value


def _section(node: Node, key: str) -> Mapping[str, Any]:
    value = node.try_get_context(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"context {key!r} must be an object")
    return value


@dataclass(frozen=True)
class RegionNetwork:
    """Per-region network settings, read from the region's entry of the region table."""

    vpc_cidr: str
    # Explicit AZ names; empty: two AZs chosen at deploy time (Fn::GetAZs), no lookup at synth.
    availability_zones: tuple[str, ...]


@dataclass(frozen=True)
class DatabaseSettings:
    global_cluster_identifier: str
    cluster_identifier_prefix: str
    engine_version: str
    engine_major_version: str
    instance_class: str
    primary_readers: int
    secondary_readers: int
    database_name: str
    master_username: str
    backup_retention_days: int
    secret_rotation_days: int
    statement_timeout_ms: int
    # DBInstanceClassMemory of `instance_class` in bytes (what RDS's parameter formulas see:
    # the instance's memory less what RDS reserves), and the connections kept out of the
    # functions' budget (RDS's own, superusers, operators, migrator, rotation).
    instance_class_memory_bytes: int = 9_531_392_000
    reserved_connections: int = 50
    # Every connection verifies the server (verify-full). The CAs come from AWS's RDS bundle of
    # the region, fetched at deploy time into SSM (DATABASE_CA_PARAMETER_PATH); or, when this
    # is set, from this PEM file (relative to the repository or absolute), shipped in a layer.
    ca_bundle: Path | None = None

    def cluster_identifier(self, region: Region) -> str:
        return f"{self.cluster_identifier_prefix}-{region.code}"

    @property
    def max_connections(self) -> int:
        """Aurora PostgreSQL's default: LEAST({DBInstanceClassMemory/9531392}, 5000)."""
        return min(self.instance_class_memory_bytes // 9_531_392, 5000)

    @property
    def function_connections(self) -> int:
        """What one instance leaves the functions: max_connections less the reserve."""
        return self.max_connections - self.reserved_connections

    @property
    def tls_query(self) -> str:
        """The TLS part of every database URL the functions get (covenant.db.ConnectionSpec)."""
        if self.ca_bundle is None:
            return f"sslmode=verify-full&sslrootcert=ssm:{DATABASE_CA_PARAMETER_PATH}"
        return f"sslmode=verify-full&sslrootcert={DATABASE_CA_FILE}"


@dataclass(frozen=True)
class AuthSettings:
    user_pool_name: str
    threat_protection: str  # FULL_FUNCTION | AUDIT_ONLY | OFF (OFF: Essentials plan)
    access_token_minutes: int
    refresh_token_days: int


@dataclass(frozen=True)
class EventsSettings:
    kubernetes_version: str
    nats_chart_version: str
    nats_image_tag: str
    external_secrets_chart_version: str
    cert_manager_chart_version: str
    nats_replicas: int
    jetstream_storage_gi: int
    wakeup_max_receive_count: int
    sweep_every_minutes: int
    admin_role_arn: str | None
    # How long the bridge keeps published outbox rows before pruning them (OUTBOX_RETENTION_S).
    outbox_retention_days: int = 7
    # SQS retention periods (at most 14 days). A message's age in the dead-letter queue counts
    # from its first enqueue in the wake-up queue, so the DLQ must keep messages longer.
    wakeup_retention_days: int = 4
    dead_letter_retention_days: int = 14
    # Replica lag (seconds, the worst replica as the writer sees it) past which the bridge's
    # scheduled run raises `replica_lag` on ALERTS: warning (the /health and CloudWatch alarm
    # threshold too), critical.
    replica_lag_warning_s: int = 5
    replica_lag_critical_s: int = 30

    wakeup_queue_name: str = "covenant-outbox-wakeup"
    wakeup_dlq_name: str = "covenant-outbox-wakeup-dlq"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> EventsSettings:
        settings = cls(
            kubernetes_version=str(raw["kubernetesVersion"]),
            nats_chart_version=str(raw["natsChartVersion"]),
            nats_image_tag=str(raw["natsImageTag"]),
            external_secrets_chart_version=str(raw["externalSecretsChartVersion"]),
            cert_manager_chart_version=str(raw["certManagerChartVersion"]),
            nats_replicas=int(raw.get("natsReplicas", 3)),
            jetstream_storage_gi=int(raw.get("jetstreamStorageGi", 20)),
            wakeup_max_receive_count=int(raw.get("wakeupMaxReceiveCount", 5)),
            sweep_every_minutes=int(raw.get("sweepEveryMinutes", 1)),
            admin_role_arn=raw.get("adminRoleArn") or None,
            outbox_retention_days=int(raw.get("outboxRetentionDays", 7)),
            wakeup_retention_days=int(raw.get("wakeupRetentionDays", 4)),
            dead_letter_retention_days=int(raw.get("deadLetterRetentionDays", 14)),
            replica_lag_warning_s=int(raw.get("replicaLagWarningSeconds", 5)),
            replica_lag_critical_s=int(raw.get("replicaLagCriticalSeconds", 30)),
        )
        if not 0 < settings.replica_lag_warning_s < settings.replica_lag_critical_s:
            raise SettingsError(
                "covenant:events.replicaLagWarningSeconds "
                f"({settings.replica_lag_warning_s}) must be above 0 and below "
                f"replicaLagCriticalSeconds ({settings.replica_lag_critical_s})"
            )
        if settings.outbox_retention_days < 1:
            raise SettingsError(
                "covenant:events.outboxRetentionDays must be at least 1, got "
                f"{settings.outbox_retention_days}"
            )
        for key, days in (
            ("wakeupRetentionDays", settings.wakeup_retention_days),
            ("deadLetterRetentionDays", settings.dead_letter_retention_days),
        ):
            if not 1 <= days <= 14:  # SQS keeps a message at most 14 days
                raise SettingsError(
                    f"covenant:events.{key} must be between 1 and 14 (SQS's limit), got {days}"
                )
        if settings.dead_letter_retention_days <= settings.wakeup_retention_days:
            raise SettingsError(
                "covenant:events.deadLetterRetentionDays "
                f"({settings.dead_letter_retention_days}) must be longer than "
                f"wakeupRetentionDays ({settings.wakeup_retention_days}): a message's age in "
                "the dead-letter queue counts from its first enqueue in the wake-up queue"
            )
        return settings


def _concurrency(name: str, raw: Any) -> tuple[int | None, int | None]:
    """reservedConcurrency: a number (every region), or {"primary": n, "secondary": m} (by the
    region's role, so a failover, which moves the `primary` flag, moves the budgets with it)."""
    if raw is None:
        return None, None
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"primary", "secondary"}
        if unknown:
            raise SettingsError(
                f"covenant:deploy.{name}.reservedConcurrency: unknown keys {sorted(unknown)}"
            )
        primary, secondary = raw.get("primary"), raw.get("secondary")
        return (
            None if primary is None else int(primary),
            None if secondary is None else int(secondary),
        )
    return int(raw), int(raw)


@dataclass(frozen=True)
class DeploySettings:
    """How one Lambda is deployed (not what it does: that is the function table)."""

    memory_mb: int
    timeout_s: int
    # Reserved concurrency in the primary region and in each secondary (None: unreserved).
    reserved_concurrency_primary: int | None
    reserved_concurrency_secondary: int | None
    provisioned_concurrency: int
    snap_start: bool

    @property
    def reserved_concurrency(self) -> int | None:
        """The primary region's (the only one for primary-only functions)."""
        return self.reserved_concurrency_primary

    def reserved_for(self, region: Region) -> int | None:
        return (
            self.reserved_concurrency_primary
            if region.primary
            else self.reserved_concurrency_secondary
        )

    @property
    def live_alias(self) -> bool:
        """Whether callers invoke the alias `live` (a published version) or $LATEST."""
        return self.snap_start or self.provisioned_concurrency > 0

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> DeploySettings:
        primary, secondary = _concurrency(name, raw.get("reservedConcurrency"))
        settings = cls(
            memory_mb=int(raw.get("memoryMb", 512)),
            timeout_s=int(raw.get("timeoutS", 15)),
            reserved_concurrency_primary=primary,
            reserved_concurrency_secondary=secondary,
            provisioned_concurrency=int(raw.get("provisionedConcurrency") or 0),
            snap_start=bool(raw.get("snapStart", False)),
        )
        if settings.snap_start and settings.provisioned_concurrency:
            raise SettingsError(
                f"covenant:deploy.{name}: SnapStart and provisioned concurrency exclude each "
                "other on one version; set provisionedConcurrency to 0 or snapStart to false"
            )
        return settings


@dataclass(frozen=True)
class DomainSettings:
    """Optional custom domain: api-<code>.<name> per region, api.<name> latency-routed."""

    name: str
    hosted_zone_id: str

    def regional_name(self, region: Region) -> str:
        return f"api-{region.code}.{self.name}"

    @property
    def global_name(self) -> str:
        return f"api.{self.name}"


@dataclass(frozen=True)
class AppSettings:
    regions: tuple[Region, ...]
    functions: dict[str, FunctionSpec]
    account: str | None
    stage: str
    log_retention_days: int
    throttle_rate: int
    throttle_burst: int
    auth_throttle_rate: int
    auth_throttle_burst: int
    cors_allowed_origins: tuple[str, ...]
    alarm_email: str | None
    nat_gateways: int
    networks: dict[str, RegionNetwork]
    database: DatabaseSettings
    auth: AuthSettings
    events: EventsSettings
    deploy: dict[str, DeploySettings]
    domain: DomainSettings | None
    nag: bool
    migrations_run: str | None = None  # covenant:migrationsRun: forces a migrations run
    # covenant:graphql: schema introspection and the browser explorer (off in AWS unless set,
    # e.g. for a staging deploy: -c covenant:graphql='{"introspection":true,"explorer":true}')
    graphql_introspection: bool = False
    graphql_explorer: bool = False
    # covenant:push: the SNS platform applications of APNs and FCM (ARNs in the primary
    # region), created by an operator with the platforms' credentials (docs/deploy.md, "Push
    # notifications"); a platform without one refuses device registration.
    push_applications: dict[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> Region:
        return next(r for r in self.regions if r.primary)

    @property
    def secondaries(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if not r.primary)

    def deploy_settings(self, name: str) -> DeploySettings:
        try:
            return self.deploy[name]
        except KeyError:
            raise SettingsError(f"covenant:deploy has no entry for function {name!r}") from None

    @classmethod
    def from_node(cls, node: Node) -> AppSettings:
        def get(key: str, default: Any) -> Any:
            value = node.try_get_context(key)
            return default if value is None else value

        raw_regions = get(REGIONS_KEY, None)
        regions = parse_regions(raw_regions)
        database = _section(node, "covenant:database")
        auth = _section(node, "covenant:auth")
        events = _section(node, "covenant:events")
        domain = node.try_get_context("covenant:domain")
        graphql = _section(node, "covenant:graphql")
        try:
            return cls(
                regions=regions,
                functions=parse_functions(get(FUNCTIONS_KEY, {})),
                account=get("covenant:account", None),
                stage=str(get("covenant:stage", "prod")),
                log_retention_days=int(get("covenant:logRetentionDays", 30)),
                throttle_rate=int(get("covenant:apiThrottleRate", 200)),
                throttle_burst=int(get("covenant:apiThrottleBurst", 400)),
                auth_throttle_rate=int(get("covenant:authThrottleRate", 10)),
                auth_throttle_burst=int(get("covenant:authThrottleBurst", 20)),
                cors_allowed_origins=tuple(get("covenant:corsAllowedOrigins", ["*"])),
                alarm_email=get("covenant:alarmEmail", None) or None,
                nat_gateways=int(_section(node, "covenant:network").get("natGateways", 2)),
                networks={
                    str(entry["code"]): RegionNetwork(
                        vpc_cidr=str(entry["vpcCidr"]),
                        availability_zones=tuple(entry.get("availabilityZones") or ()),
                    )
                    for entry in raw_regions
                },
                database=DatabaseSettings(
                    global_cluster_identifier=str(database["globalClusterIdentifier"]),
                    cluster_identifier_prefix=str(
                        database.get("clusterIdentifierPrefix", "covenant")
                    ),
                    engine_version=str(database["engineVersion"]),
                    engine_major_version=str(database["engineMajorVersion"]),
                    instance_class=str(database.get("instanceClass", "r6g.large")),
                    primary_readers=int(database.get("primaryReaders", 1)),
                    secondary_readers=int(database.get("secondaryReaders", 1)),
                    database_name=str(database.get("databaseName", "covenant")),
                    master_username=str(database.get("masterUsername", "covenant_admin")),
                    backup_retention_days=int(database.get("backupRetentionDays", 14)),
                    secret_rotation_days=int(database.get("secretRotationDays", 30)),
                    statement_timeout_ms=int(database.get("statementTimeoutMs", 5000)),
                    instance_class_memory_bytes=int(
                        database.get("instanceClassMemoryBytes", 9_531_392_000)
                    ),
                    reserved_connections=int(database.get("reservedConnections", 50)),
                    ca_bundle=_ca_bundle(database.get("caBundle")),
                ),
                auth=AuthSettings(
                    user_pool_name=str(auth.get("userPoolName", "covenant")),
                    threat_protection=str(auth.get("threatProtection", "FULL_FUNCTION")),
                    access_token_minutes=int(auth.get("accessTokenMinutes", 60)),
                    refresh_token_days=int(auth.get("refreshTokenDays", 30)),
                ),
                events=EventsSettings.parse(events),
                deploy={
                    name: DeploySettings.parse(name, raw)
                    for name, raw in _section(node, "covenant:deploy").items()
                },
                domain=(
                    DomainSettings(str(domain["name"]), str(domain["hostedZoneId"]))
                    if domain
                    else None
                ),
                nag=bool(get("covenant:nag", True)),
                migrations_run=str(get("covenant:migrationsRun", "")) or None,
                graphql_introspection=_flag(graphql, "introspection"),
                graphql_explorer=_flag(graphql, "explorer"),
                push_applications=_push_applications(_section(node, "covenant:push")),
            )
        except KeyError as exc:
            raise SettingsError(f"cdk.json context is missing {exc}") from exc


_PUSH_KEYS = {"apns": "apnsApplicationArn", "fcm": "fcmApplicationArn"}


def _push_applications(section: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for platform, key in _PUSH_KEYS.items():
        arn = str(section.get(key) or "")
        if arn and not arn.startswith("arn:aws:sns:"):
            raise SettingsError(f"covenant:push.{key} must be an SNS platform application ARN")
        if arn:
            found[platform] = arn
    return found


def push_endpoint_arns(settings: AppSettings) -> list[str]:
    """The device endpoints of the configured platform applications: an application
    `arn:aws:sns:<region>:<account>:app/APNS/<name>` has its endpoints under
    `...:endpoint/APNS/<name>/*`."""
    return [
        arn.replace(":app/", ":endpoint/", 1) + "/*" for arn in settings.push_applications.values()
    ]

"""One region's part of the Aurora PostgreSQL Global Database.

The primary region holds the primary cluster (a writer and readers), the global cluster, the
master credentials and the migrations custom resource; every other region holds a secondary
cluster of readers, without write forwarding: a secondary's functions hand every write request
to the primary region's same function (stacks/regional_api.py). Secondary stacks find the global
cluster by its name from context (`covenant:database.globalClusterIdentifier`), so nothing is
looked up at synth time and no cross-region export is needed.

Credentials: the functions authenticate with IAM database authentication (each function as its
own login role, `rds-db:connect` on its own user only): no password is stored, shipped in an
environment variable or rotated for them, and a token is valid for 15 minutes. The master user,
used by the migrations custom resource and by people in an emergency, has a password generated
into Secrets Manager (encrypted with the region's key) and rotated every
`secretRotationDays`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from covenant.regions import Region, regions_as_json
from stacks.functions import (
    CovenantFunction,
    base_environment,
    grant_database_ca_read,
    log_retention,
)
from stacks.layers import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME, SharedLayers
from stacks.nag import acknowledge, acknowledge_provider_framework, managed_policy
from stacks.network import POSTGRES_PORT, RegionalNetwork
from stacks.settings import (
    DATABASE_CA_PARAMETER_PATH,
    RDS_TRUSTSTORE,
    REPO_ROOT,
    AppSettings,
    DatabaseSettings,
)

# The Lambda functions that use the database, each as its own IAM-authenticated login role.
DATABASE_FUNCTIONS = (
    "graphql",
    "mobile",
    "bridge",
    "analytics",
    "mobile_push",
    "notifier",
    "realtime",
    "fanout",
)


# The functions whose login role may also read the replicas' status (migrator.handler): the
# bridge, whose scheduled run alerts on replica lag.
MONITORING_FUNCTIONS = ("bridge",)


def database_user(function: str) -> str:
    return f"covenant_{function}"


def _engine(settings: DatabaseSettings) -> rds.IClusterEngine:
    return rds.DatabaseClusterEngine.aurora_postgres(
        version=rds.AuroraPostgresEngineVersion.of(
            settings.engine_version, settings.engine_major_version
        )
    )


def _cluster_parameters(scope: Construct, settings: DatabaseSettings) -> rds.ParameterGroup:
    return rds.ParameterGroup(
        scope,
        "ClusterParameters",
        engine=_engine(settings),
        description="Covenant cluster parameters, the same in every region",
        parameters={
            "rds.force_ssl": "1",
            "log_min_duration_statement": "1000",
            "log_lock_waits": "1",
        },
    )


def _postgres_logs(
    scope: Construct, cluster_identifier: str, settings: AppSettings, key: kms.IKey
) -> None:
    # RDS writes into this group; creating it first gives it a retention.
    logs.LogGroup(
        scope,
        "PostgresLogs",
        log_group_name=f"/aws/rds/cluster/{cluster_identifier}/postgresql",
        retention=log_retention(settings.log_retention_days),
        encryption_key=key,
        removal_policy=RemovalPolicy.RETAIN,
    )


class PrimaryDatabase(Construct):
    """The primary cluster (writer + readers), the global cluster around it, and the master
    secret with its rotation."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
    ) -> None:
        super().__init__(scope, construct_id)
        db = settings.database
        groups = network.security_groups
        assert groups.rotation is not None
        self.key = network.data_key
        self.cluster_identifier = db.cluster_identifier(region)
        _postgres_logs(self, self.cluster_identifier, settings, self.key)

        def instance(name: str, tier: int) -> rds.IClusterInstance:
            return rds.ClusterInstance.provisioned(
                name,
                instance_type=ec2.InstanceType(db.instance_class),
                publicly_accessible=False,
                auto_minor_version_upgrade=False,
                enable_performance_insights=True,
                performance_insight_encryption_key=self.key,
                promotion_tier=tier,
            )

        self.cluster = rds.DatabaseCluster(
            self,
            "Cluster",
            cluster_identifier=self.cluster_identifier,
            engine=_engine(db),
            writer=instance("Writer", 0),
            readers=[instance(f"Reader{i + 1}", 1) for i in range(db.primary_readers)],
            vpc=network.vpc,
            vpc_subnets=network.database_subnets,
            security_groups=[groups.database],
            port=POSTGRES_PORT,
            credentials=rds.Credentials.from_generated_secret(
                db.master_username,
                secret_name=f"covenant/{region.code}/database-master",
                encryption_key=self.key,
                exclude_characters=" %+~`#$&*()|[]{}:;<>?!'/@\"\\",
            ),
            default_database_name=db.database_name,
            storage_encrypted=True,
            storage_encryption_key=self.key,
            iam_authentication=True,
            deletion_protection=True,
            removal_policy=RemovalPolicy.SNAPSHOT,
            backup=rds.BackupProps(
                retention=Duration.days(db.backup_retention_days),
                preferred_window="03:00-04:00",
            ),
            preferred_maintenance_window="sun:04:30-sun:05:30",
            cloudwatch_logs_exports=["postgresql"],
            monitoring_interval=Duration.seconds(60),
            parameter_group=_cluster_parameters(self, db),
            copy_tags_to_snapshot=True,
        )
        self.secret = self.cluster.secret
        assert self.secret is not None
        # The only copy of the master password: kept when the stack or cluster goes
        # (cluster.secret is its target attachment; the secret itself is the child "Secret").
        master = self.cluster.node.find_child("Secret")
        assert isinstance(master, secretsmanager.Secret)
        master.apply_removal_policy(RemovalPolicy.RETAIN)
        # Hosted rotation (Secrets Manager's own function) in the rotation security group,
        # whose access to the database the network stack grants.
        self.secret.add_rotation_schedule(
            "Rotation",
            automatically_after=Duration.days(db.secret_rotation_days),
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                function_name=f"covenant-{region.code}-database-master-rotation",
                vpc=network.vpc,
                vpc_subnets=network.function_subnets,
                security_groups=[groups.rotation],
            ),
        )
        self.global_cluster = rds.CfnGlobalCluster(
            self,
            "GlobalCluster",
            global_cluster_identifier=db.global_cluster_identifier,
            source_db_cluster_identifier=self.cluster.cluster_identifier,
            deletion_protection=True,
        )
        self.global_cluster.apply_removal_policy(RemovalPolicy.RETAIN)
        self.writer_host = self.cluster.cluster_endpoint.hostname
        self.reader_host = self.cluster.cluster_read_endpoint.hostname
        self.cluster_resource_id = self.cluster.cluster_resource_identifier
        acknowledge(
            self.cluster,
            "AwsSolutions-RDS11",
            "The standard PostgreSQL port: the cluster sits in isolated subnets and "
            "its security group admits only the functions' groups; a port number hides "
            "nothing.",
        )
        acknowledge(
            self.cluster,
            "AwsSolutions-IAM4",
            "Enhanced Monitoring requires the AWS managed "
            "AmazonRDSEnhancedMonitoringRole policy on its role.",
            managed_policy("service-role/AmazonRDSEnhancedMonitoringRole"),
        )


class SecondaryDatabase(Construct):
    """A secondary cluster of the global database: readers only (no write forwarding)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
    ) -> None:
        super().__init__(scope, construct_id)
        db = settings.database
        self.key = network.data_key
        self.cluster_identifier = db.cluster_identifier(region)
        _postgres_logs(self, self.cluster_identifier, settings, self.key)
        subnet_group = rds.CfnDBSubnetGroup(
            self,
            "Subnets",
            db_subnet_group_description=f"Covenant {region.code}: isolated subnets",
            subnet_ids=network.vpc.select_subnets(
                subnet_type=ec2.SubnetType.PRIVATE_ISOLATED
            ).subnet_ids,
        )
        parameters = _cluster_parameters(self, db)
        self.cluster = rds.CfnDBCluster(
            self,
            "Cluster",
            db_cluster_identifier=self.cluster_identifier,
            engine="aurora-postgresql",
            engine_version=db.engine_version,
            global_cluster_identifier=db.global_cluster_identifier,
            db_subnet_group_name=subnet_group.ref,
            vpc_security_group_ids=[network.security_groups.database.security_group_id],
            db_cluster_parameter_group_name=parameters.bind_to_cluster().parameter_group_name,
            port=POSTGRES_PORT,
            storage_encrypted=True,
            kms_key_id=self.key.key_arn,
            enable_iam_database_authentication=True,
            deletion_protection=True,
            backup_retention_period=db.backup_retention_days,
            preferred_backup_window="03:00-04:00",
            preferred_maintenance_window="sun:04:30-sun:05:30",
            enable_cloudwatch_logs_exports=["postgresql"],
            copy_tags_to_snapshot=True,
        )
        # A secondary holds a replica of the primary's data: never deleted with the stack.
        self.cluster.apply_removal_policy(RemovalPolicy.RETAIN)
        monitoring = iam.Role(
            self,
            "MonitoringRole",
            assumed_by=iam.ServicePrincipal("monitoring.rds.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonRDSEnhancedMonitoringRole"
                )
            ],
        )
        for index in range(db.secondary_readers):
            reader = rds.CfnDBInstance(
                self,
                f"Reader{index + 1}",
                db_cluster_identifier=self.cluster.ref,
                db_instance_class=f"db.{db.instance_class}",
                engine="aurora-postgresql",
                publicly_accessible=False,
                auto_minor_version_upgrade=False,
                enable_performance_insights=True,
                performance_insights_kms_key_id=self.key.key_arn,
                monitoring_interval=60,
                monitoring_role_arn=monitoring.role_arn,
                promotion_tier=1,
            )
            reader.apply_removal_policy(RemovalPolicy.RETAIN)
        # No writer path: a secondary's functions hand every write to the primary region's
        # function (no write forwarding), and connect to this reader endpoint only.
        self.reader_host = self.cluster.attr_read_endpoint_address
        self.cluster_resource_id = self.cluster.attr_db_cluster_resource_id
        acknowledge(
            self.cluster,
            "AwsSolutions-RDS11",
            "The standard PostgreSQL port, as on the primary: isolated subnets and "
            "a security group admitting only the functions' groups.",
        )
        acknowledge(
            monitoring,
            "AwsSolutions-IAM4",
            "Enhanced Monitoring requires the AWS managed "
            "AmazonRDSEnhancedMonitoringRole policy on its role.",
            managed_policy("service-role/AmazonRDSEnhancedMonitoringRole"),
        )


def migrations_digest(regions_json: str) -> str:
    """Changes whenever the migration runner, a migration, the seed data or its code changes:
    the custom resource's property, so every deploy that could apply anything runs it."""
    covenant = REPO_ROOT / "layers" / "shared" / "python" / "covenant"
    files: list[Path] = sorted(
        [
            *covenant.glob("migrations/*.sql"),
            *covenant.glob("seed/*"),
            *(covenant / name for name in ("migrate.py", "seed.py", "reference.py", "db.py")),
            *(REPO_ROOT / "functions" / "migrator").glob("*.py"),
        ]
    )
    digest = hashlib.sha256(regions_json.encode())
    for path in files:
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Migrations(Construct):
    """Applies the migrations and seed data with the one migration runner on every deploy
    that changes them, then makes sure every function's IAM login role exists."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        database: PrimaryDatabase,
    ) -> None:
        super().__init__(scope, construct_id)
        assert database.secret is not None
        groups = network.security_groups
        assert groups.migrator is not None
        layers = SharedLayers(self, "Layers", ca_bundle=settings.database.ca_bundle)
        login_users = ",".join(database_user(f) for f in DATABASE_FUNCTIONS)
        monitor_users = ",".join(database_user(f) for f in MONITORING_FUNCTIONS)
        self.function = CovenantFunction(
            self,
            "Migrator",
            package="migrator",
            handler="migrator.handler.handler",
            description="Applies migrations and seed data on deploy (custom resource)",
            deploy=settings.deploy_settings("migrator"),
            settings=settings,
            layers=layers.layers,
            environment={
                **base_environment(service="migrator", region=region, settings=settings),
                "DATABASE_SECRET_ARN": database.secret.secret_arn,
                "DATABASE_LOGIN_USERS": login_users,
                "DATABASE_MONITOR_USERS": monitor_users,
                "DATABASE_TLS": settings.database.tls_query,
            },
            vpc=network.vpc,
            subnets=network.function_subnets,
            security_group=groups.migrator,
            log_key=network.data_key,
        )
        # Secret.grant_read would also name this role in the key's policy, and the key lives in
        # the network stack, which cannot refer to this one: the role's own policy suffices
        # (the key policy trusts the account's IAM policies).
        self.function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[database.secret.secret_arn],
            )
        )
        self.function.role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[database.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{Stack.of(self).region}.amazonaws.com"
                    }
                },
            )
        )
        provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.function.function,
            log_group=logs.LogGroup(
                self,
                "ProviderLogs",
                retention=log_retention(settings.log_retention_days),
                encryption_key=network.data_key,
            ),
        )
        self.resource = CustomResource(
            self,
            "Applied",
            service_token=provider.service_token,
            resource_type="Custom::CovenantMigrations",
            # Everything the run's outcome depends on: a change to any of them runs it again
            # (a new function's login role, a TLS change); `-c covenant:migrationsRun=<id>`
            # forces a run with nothing changed (e.g. after a restore).
            properties={
                "Digest": migrations_digest(regions_as_json(settings.regions)),
                "LoginUsers": login_users,
                "MonitorUsers": monitor_users,
                "Tls": settings.database.tls_query,
                **({"Run": settings.migrations_run} if settings.migrations_run else {}),
            },
        )
        self.resource.node.add_dependency(database.cluster)
        acknowledge_provider_framework(provider, self.function.function)


class DatabaseCa(Construct):
    """AWS's RDS CA certificates of this region, downloaded at deploy time inside AWS (from
    RDS_TRUSTSTORE, over verified HTTPS) into one SSM parameter per certificate under
    DATABASE_CA_PARAMETER_PATH: the trust the functions verify Aurora against
    (sslmode=verify-full). Nothing is fetched at synth; the handler (functions/database_ca)
    runs outside the VPC, with only the SSM calls on that path."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        log_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(settings.log_retention_days),
            encryption_key=log_key,
        )
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Covenant database CA download (deploy time)",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        path_arn = stack.format_arn(
            service="ssm", resource="parameter", resource_name=DATABASE_CA_PARAMETER_PATH[1:]
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ssm:PutParameter", "ssm:DeleteParameters"],
                resources=[f"{path_arn}/*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["ssm:GetParametersByPath"], resources=[path_arn])
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description="Stores AWS's RDS CA bundle of the region in SSM (custom resource)",
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            handler="database_ca.handler.handler",
            code=lambda_.Code.from_asset(
                str(REPO_ROOT / "functions"),
                exclude=["*", "!database_ca", "!database_ca/**", "**/__pycache__"],
            ),
            memory_size=256,
            timeout=Duration.minutes(2),
            role=role,
            log_group=log_group,
        )
        provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.function,
            log_group=logs.LogGroup(
                self,
                "ProviderLogs",
                retention=log_retention(settings.log_retention_days),
                encryption_key=log_key,
            ),
        )
        self.resource = CustomResource(
            self,
            "Stored",
            service_token=provider.service_token,
            resource_type="Custom::CovenantDatabaseCa",
            properties={
                "Url": f"{RDS_TRUSTSTORE}/{region.aws_region}/{region.aws_region}-bundle.pem",
                "Path": DATABASE_CA_PARAMETER_PATH,
            },
        )
        acknowledge_provider_framework(provider, self.function)
        acknowledge(
            role,
            "AwsSolutions-IAM5",
            "PutParameter/DeleteParameters on the parameters under the CA path only "
            "(one per certificate; their count follows AWS's bundle).",
            f"Resource::arn:aws:ssm:{region.aws_region}:<AWS::AccountId>:"
            f"parameter{DATABASE_CA_PARAMETER_PATH}/*",
        )


class DataStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.database: PrimaryDatabase | SecondaryDatabase
        self.migrations: Migrations | None = None
        self.database_ca: DatabaseCa | None = None
        if settings.database.ca_bundle is None:
            self.database_ca = DatabaseCa(
                self, "DatabaseCa", region=region, settings=settings, log_key=network.data_key
            )
        if region.primary:
            primary = PrimaryDatabase(
                self, "Database", region=region, settings=settings, network=network
            )
            self.migrations = Migrations(
                self,
                "Migrations",
                region=region,
                settings=settings,
                network=network,
                database=primary,
            )
            self.database = primary
            grant_database_ca_read(self.migrations.function.role)
            if self.database_ca is not None:
                # The migrator connects with verify-full: the CA must be stored first.
                self.migrations.resource.node.add_dependency(self.database_ca.resource)
        else:
            self.database = SecondaryDatabase(
                self, "Database", region=region, settings=settings, network=network
            )

    @property
    def writer_host(self) -> str:
        """The primary's writer endpoint (a secondary has no writer path)."""
        if not isinstance(self.database, PrimaryDatabase):
            raise ValueError("a secondary region's data stack has no writer endpoint")
        return self.database.writer_host

    @property
    def reader_host(self) -> str:
        return self.database.reader_host

    @property
    def cluster_resource_id(self) -> str:
        return self.database.cluster_resource_id

    @property
    def cluster_identifier(self) -> str:
        return self.database.cluster_identifier

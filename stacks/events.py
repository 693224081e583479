"""The event path of the primary region: NATS JetStream on EKS, the wake-up queue, the bridge.

    GraphQL (any region) ──wake-up──► SQS covenant-outbox-wakeup ──► bridge Lambda ──► NATS
    EventBridge rule covenant-outbox-sweep (every minute) ─────────► bridge Lambda
                                       (a message that keeps failing ──► the dead-letter queue)

NATS runs from the official Helm chart on an EKS Auto Mode cluster with a private API endpoint:
three servers with JetStream on encrypted gp3 volumes, users and passwords from a Kubernetes
secret that External Secrets Operator keeps in step with three Secrets Manager secrets (one per
NATS user: the bridge publishes, the admin applies the topology, the consumers pull), reachable
only through an internal NLB whose security group admits the bridge, the JetStream function and
the consumers. Clients and routes speak TLS with a server certificate cert-manager issues from
a private CA inside the cluster; the CA certificate is read at deploy time and handed to every
NATS client function, which verifies the server against it (NATS_TLS_CA_BASE64 and
NATS_TLS_HOSTNAME).
The JetStream topology (covenant.streams) is applied by a custom resource on every deploy that
changes it; the same function probes JetStream every minute for the NATS health alarm.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, cast

from aws_cdk import CfnElement, CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from aws_cdk import custom_resources as cr
from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer
from constructs import Construct

from covenant.consumer import CONSUMER_INBOX_PREFIX
from covenant.regions import Region
from covenant.streams import BRIDGE_INBOX_PREFIX, CONSUMERS, DAY_S, STREAMS
from covenant.topology import FunctionSpec
from stacks.database import database_user
from stacks.functions import (
    CovenantFunction,
    base_environment,
    encrypt_log_groups,
    function_name,
    log_retention,
)
from stacks.layers import SharedLayers
from stacks.nag import acknowledge, acknowledge_provider_framework, logical_id, managed_policy
from stacks.network import HTTPS_PORT, NATS_PORT, RegionalNetwork
from stacks.settings import REPO_ROOT, AppSettings

NATS_NAMESPACE = "nats"
NATS_SERVICE = "nats"
NATS_AUTH_SECRET = "nats-auth"  # noqa: S105 - the name of the Kubernetes secret ESO writes
ESO_NAMESPACE = "external-secrets"
ESO_SERVICE_ACCOUNT = "external-secrets"
STORAGE_CLASS = "covenant-jetstream"
CERT_MANAGER_NAMESPACE = "cert-manager"
# Names of the Kubernetes secrets cert-manager writes: the private CA's certificate and key;
# the servers' certificate, key and ca.crt.
NATS_CA_SECRET = "nats-ca"  # noqa: S105 - a name
NATS_TLS_SECRET = "nats-server-tls"  # noqa: S105 - a name
# The name clients verify the servers' certificate against: the URL names the load balancer,
# whose DNS name is only known once it exists.
NATS_TLS_HOSTNAME = f"{NATS_SERVICE}.{NATS_NAMESPACE}.svc.cluster.local"

# What the bridge user of NATS may do: publish on the subjects the streams capture (its events,
# each with a reply subject for JetStream's acknowledgement) and receive on its own inboxes
# (the acknowledgements, under BRIDGE_INBOX_PREFIX, never another client's `_INBOX.` replies).
# Of the JetStream API only STREAM.INFO of the topology's streams, read-only: "no responders"
# to a publish means a missing stream or one without a leader, and only JetStream can tell
# which (bridge.relay). Nothing else under `$JS.>`: the bridge can neither change streams and
# consumers, read their messages, take (and so use up the deliveries of) another consumer's
# messages, acknowledge them, nor pause anything. A subject no stream captures is refused by
# the server (a permissions violation, no acknowledgement) rather than answered "no
# responders". tests/functions/bridge/test_nats_permissions.py holds this against a real
# nats-server.
BRIDGE_NATS_PERMISSIONS: dict[str, Any] = {
    "publish": {
        "allow": [
            *(subject for stream in STREAMS for subject in stream.subjects),
            *(f"$JS.API.STREAM.INFO.{stream.name}" for stream in STREAMS),
        ]
    },
    "subscribe": {"allow": [f"{BRIDGE_INBOX_PREFIX}.>"]},
}


def consumers_nats_permissions() -> dict[str, Any]:
    """What the consumers' NATS user may do: pull from, acknowledge and read the info of the
    durable consumers of covenant.streams (nothing else of the JetStream API: it cannot create,
    change, delete or purge anything), publish notifications (MOBILE_PUSH, to the
    NOTIFICATIONS work queue; no domain, audit or alert subject), and receive on its own
    inboxes only."""
    publish = ["notifications.>"]
    publish += [f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.durable_name}" for c in CONSUMERS]
    publish += [f"$JS.API.CONSUMER.INFO.{c.stream}.{c.durable_name}" for c in CONSUMERS]
    publish += [f"$JS.ACK.{c.stream}.{c.durable_name}.>" for c in CONSUMERS]
    # The real-time fan-out serves a subscriber that resumes (`since`) from the stream itself:
    # read-only gets of COVENANT's messages and its first sequence.
    publish += ["$JS.API.DIRECT.GET.COVENANT", "$JS.API.STREAM.INFO.COVENANT"]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"{CONSUMER_INBOX_PREFIX}.>"]},
    }


def nats_config_merge() -> dict[str, Any]:
    """What the stack merges into the chart's nats.conf (`config.merge`): the two users, their
    names and passwords from the container's environment (the nats-auth secret). `<< $VAR >>`
    is written unquoted (render_nats_config): nats-server substitutes the variable."""
    return {
        "authorization": {
            "users": [
                {
                    "user": "<< $BRIDGE_USER >>",
                    "password": "<< $BRIDGE_PASSWORD >>",
                    "permissions": BRIDGE_NATS_PERMISSIONS,
                },
                {"user": "<< $ADMIN_USER >>", "password": "<< $ADMIN_PASSWORD >>"},
                {
                    "user": "<< $CONSUMERS_USER >>",
                    "password": "<< $CONSUMERS_PASSWORD >>",
                    "permissions": consumers_nats_permissions(),
                },
            ]
        }
    }


_UNQUOTED = re.compile(r'"<<\s+(.*)\s+>>"')


def render_nats_config(config: Mapping[str, Any]) -> str:
    """nats.conf text of `config` as the official chart writes it (its `nats.formatConfig`):
    JSON indented by two spaces without HTML escaping (`toPrettyRawJson`), then every string
    `"<< X >>"` replaced by X, unquoted. The tests start nats-server with it."""
    return _UNQUOTED.sub(r"\1", json.dumps(config, indent=2, ensure_ascii=False))


def _nats_secret(scope: Construct, name: str, user: str, key: kms.IKey) -> secretsmanager.Secret:
    secret = secretsmanager.Secret(
        scope,
        name,
        description=f"NATS credentials of the {user} user (JSON: user, password)",
        encryption_key=key,
        generate_secret_string=secretsmanager.SecretStringGenerator(
            secret_string_template=json.dumps({"user": user}),
            generate_string_key="password",
            # Substituted into nats.conf from an environment variable: letters and digits only.
            exclude_punctuation=True,
            password_length=40,
        ),
        removal_policy=RemovalPolicy.RETAIN,
    )
    acknowledge(
        secret,
        "AwsSolutions-SMG4",
        "NATS has no Secrets Manager rotation function: rotation is the documented "
        "runbook (docs/deploy.md): put a new value, External Secrets syncs it, roll the "
        "NATS pods; the bridge re-reads the secret within 5 minutes and the outbox "
        "holds events meanwhile.",
    )
    return secret


class WakeupQueue(Construct):
    """The queue GraphQL functions of every region send wake-ups to, with its DLQ. Its name is
    fixed (settings), so the other regions build its URL and ARN without a lookup."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: AppSettings, bridge_timeout_s: int
    ) -> None:
        super().__init__(scope, construct_id)
        names = settings.events
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            queue_name=names.wakeup_dlq_name,
            retention_period=Duration.days(names.dead_letter_retention_days),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            queue_name=names.wakeup_queue_name,
            # AWS's guidance for a Lambda event source: six times the function's timeout.
            visibility_timeout=Duration.seconds(6 * bridge_timeout_s),
            retention_period=Duration.days(names.wakeup_retention_days),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=names.wakeup_max_receive_count
            ),
        )
        acknowledge(
            self.dead_letters,
            "AwsSolutions-SQS3",
            "This is the dead-letter queue; its depth is alarmed on.",
        )


def nats_certificate_manifests() -> list[dict[str, Any]]:
    """cert-manager's objects for NATS's TLS, all in the nats namespace: a self-signed issuer
    that signs one thing, the private CA (ECDSA P-256, ten years, its key kept on renewal so
    the CA certificate the functions hold still verifies what the renewed CA signs); a CA
    issuer; and the servers' certificate (90 days, renewed 30 days before, a new key each
    time; the chart's reloader makes nats-server load it) for the client port, through the
    service or the load balancer (clients verify NATS_TLS_HOSTNAME), and for the routes
    between the servers (`nats-<i>.nats-headless`, verified both ways)."""
    namespace = NATS_NAMESPACE
    headless = f"{NATS_SERVICE}-headless"
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": "nats-selfsigned", "namespace": namespace},
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": NATS_CA_SECRET, "namespace": namespace},
            "spec": {
                "isCA": True,
                "commonName": "Covenant NATS CA",
                "secretName": NATS_CA_SECRET,
                "duration": "87600h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Never"},
                "issuerRef": {"name": "nats-selfsigned", "kind": "Issuer"},
            },
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": "nats-ca", "namespace": namespace},
            "spec": {"ca": {"secretName": NATS_CA_SECRET}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": NATS_TLS_SECRET, "namespace": namespace},
            "spec": {
                "secretName": NATS_TLS_SECRET,
                "duration": "2160h",
                "renewBefore": "720h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["server auth", "client auth"],  # client auth: the routes' side
                "dnsNames": [
                    NATS_SERVICE,
                    f"{NATS_SERVICE}.{namespace}",
                    f"{NATS_SERVICE}.{namespace}.svc",
                    NATS_TLS_HOSTNAME,
                    f"*.{headless}",
                    f"*.{headless}.{namespace}",
                    f"*.{headless}.{namespace}.svc",
                    f"*.{headless}.{namespace}.svc.cluster.local",
                ],
                "issuerRef": {"name": "nats-ca", "kind": "Issuer"},
            },
        },
    ]


class NatsCluster(Construct):
    """EKS Auto Mode cluster running NATS with JetStream from the official Helm chart, its TLS
    certificate from cert-manager."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        key: kms.Key,
        bridge_secret: secretsmanager.ISecret,
        admin_secret: secretsmanager.ISecret,
        consumers_secret: secretsmanager.ISecret,
    ) -> None:
        super().__init__(scope, construct_id)
        config = settings.events
        groups = network.security_groups
        assert groups.nats_load_balancer is not None
        self.cluster = eks.Cluster(
            self,
            "Cluster",
            cluster_name="covenant-events",
            version=eks.KubernetesVersion.of(config.kubernetes_version),
            vpc=network.vpc,
            vpc_subnets=[network.function_subnets],
            endpoint_access=eks.EndpointAccess.PRIVATE,
            default_capacity_type=eks.DefaultCapacityType.AUTOMODE,
            compute=eks.ComputeConfig(node_pools=["system", "general-purpose"]),
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KubectlV36Layer(self, "KubectlLayer"),
                private_subnets=network.vpc.select_subnets(
                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS
                ).subnets,
            ),
            secrets_encryption_key=key,
            cluster_logging=[
                eks.ClusterLoggingTypes.API,
                eks.ClusterLoggingTypes.AUDIT,
                eks.ClusterLoggingTypes.AUTHENTICATOR,
                eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
                eks.ClusterLoggingTypes.SCHEDULER,
            ],
        )
        self._acknowledge_eks()
        # EKS Auto Mode nodes carry the cluster security group, and every pod on them with it:
        # External Secrets Operator reads the NATS secrets through the Secrets Manager
        # endpoint (private DNS), whose group must admit them. The rule lives here, beside the
        # cluster whose group it names (the network stack comes first and cannot refer to it).
        assert groups.endpoints is not None
        ec2.CfnSecurityGroupIngress(
            self,
            "EndpointsFromNodes",
            group_id=groups.endpoints.security_group_id,
            source_security_group_id=self.cluster.cluster_security_group_id,
            ip_protocol="tcp",
            from_port=HTTPS_PORT,
            to_port=HTTPS_PORT,
            description="EKS Auto Mode nodes (External Secrets Operator -> Secrets Manager)",
        )
        if config.admin_role_arn:
            self.cluster.grant_access(
                "Administrators",
                config.admin_role_arn,
                [
                    eks.AccessPolicy.from_access_policy_name(
                        "AmazonEKSClusterAdminPolicy",
                        access_scope_type=eks.AccessScopeType.CLUSTER,
                    )
                ],
            )
        # EKS Auto Mode's block storage runs as the cluster role: it encrypts the JetStream
        # volumes with the region's events key.
        key.grant(
            self.cluster.role,
            "kms:CreateGrant",
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
        )
        storage = self.cluster.add_manifest(
            "StorageClass",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS},
                "provisioner": "ebs.csi.eks.amazonaws.com",
                "volumeBindingMode": "WaitForFirstConsumer",
                # JetStream data outlives a Helm uninstall or a deleted claim.
                "reclaimPolicy": "Retain",
                "allowVolumeExpansion": True,
                "parameters": {"type": "gp3", "encrypted": "true", "kmsKeyId": key.key_arn},
            },
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": NATS_NAMESPACE},
            },
        )
        secrets = self._external_secrets(region, config.external_secrets_chart_version)
        sync = self.cluster.add_manifest(
            "NatsAuth",
            {
                "apiVersion": "external-secrets.io/v1",
                "kind": "SecretStore",
                "metadata": {"name": "aws-secrets-manager", "namespace": NATS_NAMESPACE},
                "spec": {
                    "provider": {"aws": {"service": "SecretsManager", "region": region.aws_region}}
                },
            },
            {
                "apiVersion": "external-secrets.io/v1",
                "kind": "ExternalSecret",
                "metadata": {"name": NATS_AUTH_SECRET, "namespace": NATS_NAMESPACE},
                "spec": {
                    "refreshInterval": "1h",
                    "secretStoreRef": {"name": "aws-secrets-manager", "kind": "SecretStore"},
                    "target": {"name": NATS_AUTH_SECRET, "creationPolicy": "Owner"},
                    "data": [
                        {
                            "secretKey": f"{who}-{field}",
                            "remoteRef": {"key": secret.secret_arn, "property": field},
                        }
                        for who, secret in (
                            ("bridge", bridge_secret),
                            ("admin", admin_secret),
                            ("consumers", consumers_secret),
                        )
                        for field in ("user", "password")
                    ],
                },
            },
        )
        sync.node.add_dependency(storage)
        sync.node.add_dependency(secrets)
        certificates = self.cluster.add_manifest("NatsTls", *nats_certificate_manifests())
        certificates.node.add_dependency(storage)
        certificates.node.add_dependency(self._cert_manager(config.cert_manager_chart_version))
        for secret in (bridge_secret, admin_secret, consumers_secret):
            secret.grant_read(self.secrets_role)  # and kms:Decrypt through Secrets Manager
        self.chart = self.cluster.add_helm_chart(
            "Nats",
            chart="nats",
            repository="https://nats-io.github.io/k8s/helm/charts/",
            version=config.nats_chart_version,
            release="nats",
            namespace=NATS_NAMESPACE,
            create_namespace=False,
            wait=True,
            timeout=Duration.minutes(12),
            values=nats_values(settings, groups.nats_load_balancer.security_group_id),
        )
        self.chart.node.add_dependency(sync)
        self.chart.node.add_dependency(certificates)
        address = self._read(
            "Address", "service", NATS_SERVICE, ".status.loadBalancer.ingress[0].hostname"
        )
        address.node.add_dependency(self.chart)
        self.url = f"tls://{address.value}:{NATS_PORT}"
        # The CA certificate (PEM, base64 as Kubernetes stores it) once cert-manager has issued
        # the servers' certificate: public, so a template value like the address.
        authority = self._read("CertificateAuthority", "secret", NATS_TLS_SECRET, r".data.ca\.crt")
        authority.node.add_dependency(certificates)
        # What every NATS client function needs to verify the servers (covenant.streams).
        self.tls_environment = {
            "NATS_TLS_CA_BASE64": authority.value,
            "NATS_TLS_HOSTNAME": NATS_TLS_HOSTNAME,
        }

    def _read(
        self, construct_id: str, object_type: str, name: str, json_path: str
    ) -> eks.KubernetesObjectValue:
        """A value of an object in the nats namespace, at deploy time, waited for until set."""
        return eks.KubernetesObjectValue(
            self,
            construct_id,
            # jsii's protocol for ICluster lags the class; the cluster is one.
            cluster=cast(eks.ICluster, self.cluster),
            object_type=object_type,
            object_name=name,
            object_namespace=NATS_NAMESPACE,
            json_path=json_path,
            timeout=Duration.minutes(10),
        )

    def _acknowledge_eks(self) -> None:
        """What the EKS constructs of aws-cdk-lib create and cdk-nag flags, with the reason each
        is as it must be."""
        acknowledge(
            self.cluster,
            "AwsSolutions-IAM4",
            "EKS Auto Mode requires these AWS managed policies on the cluster role (it manages "
            "compute, block storage, load balancing and networking for the cluster) and on the "
            "node role (kubelet, image pulls); AWS keeps them in step with the service.",
            *(
                managed_policy(name)
                for name in (
                    "AmazonEKSClusterPolicy",
                    "AmazonEKSComputePolicy",
                    "AmazonEKSBlockStoragePolicy",
                    "AmazonEKSLoadBalancingPolicy",
                    "AmazonEKSNetworkingPolicy",
                    "AmazonEKSWorkerNodePolicy",
                    "AmazonEC2ContainerRegistryReadOnly",
                )
            ),
        )
        provider = self.cluster.node.find_child("KubectlProvider")
        handler = provider.node.find_child("Handler")
        has_ecr_public = handler.node.find_child("HasEcrPublic")
        assert isinstance(has_ecr_public, CfnElement)
        ecr_public = {
            "Fn::If": [
                logical_id(has_ecr_public),
                {
                    "Fn::Join": [
                        "",
                        [
                            "arn:",
                            {"Ref": "AWS::Partition"},
                            ":iam::aws:policy/AmazonElasticContainerRegistryPublicReadOnly",
                        ],
                    ]
                },
                {"Ref": "AWS::NoValue"},
            ]
        }
        acknowledge(
            provider,
            "AwsSolutions-IAM4",
            "The kubectl provider of aws-cdk-lib runs kubectl and helm in the VPC against the "
            "private API endpoint: AWS managed execution, VPC access and registry read policies.",
            managed_policy("service-role/AWSLambdaBasicExecutionRole"),
            managed_policy("service-role/AWSLambdaVPCAccessExecutionRole"),
            managed_policy("AmazonEC2ContainerRegistryReadOnly"),
            "Policy::" + json.dumps(ecr_public, separators=(",", ":")),
        )
        framework = provider.node.find_child("Provider")
        acknowledge_provider_framework(framework, handler)
        acknowledge(
            provider,
            "AwsSolutions-L1",
            "The kubectl handler's runtime is chosen by aws-cdk-lib with its kubectl layer.",
        )

    def _cert_manager(self, version: str) -> Construct:
        """cert-manager from its official chart, its CRDs with it (kept if the release is
        uninstalled: deleting them would delete every certificate). Nothing of it calls AWS."""
        return self._operator(
            "CertManager",
            "https://charts.jetstack.io",
            "cert-manager",
            version,
            CERT_MANAGER_NAMESPACE,
            {"crds": {"enabled": True, "keep": True}},
        )

    def _operator(
        self,
        construct_id: str,
        repository: str,
        chart: str,
        version: str,
        namespace: str,
        values: dict[str, Any],
    ) -> eks.HelmChart:
        """An operator's official chart in a namespace of its own, released under the chart's
        name; waited for, as its webhook must answer before its objects are applied."""
        return self.cluster.add_helm_chart(
            construct_id,
            chart=chart,
            repository=repository,
            version=version,
            release=chart,
            namespace=namespace,
            create_namespace=True,
            wait=True,
            timeout=Duration.minutes(10),
            values=values,
        )

    def _external_secrets(self, region: Region, version: str) -> Construct:
        self.secrets_role = iam.Role(
            self,
            "SecretSyncRole",
            assumed_by=iam.SessionTagsPrincipal(iam.ServicePrincipal("pods.eks.amazonaws.com")),
            description="External Secrets Operator: reads the two NATS secrets only",
        )
        association = eks.CfnPodIdentityAssociation(
            self,
            "SecretSyncIdentity",
            cluster_name=self.cluster.cluster_name,
            namespace=ESO_NAMESPACE,
            service_account=ESO_SERVICE_ACCOUNT,
            role_arn=self.secrets_role.role_arn,
        )
        chart = self._operator(
            "ExternalSecrets",
            "https://charts.external-secrets.io",
            "external-secrets",
            version,
            ESO_NAMESPACE,
            {
                "installCRDs": True,
                "serviceAccount": {"create": True, "name": ESO_SERVICE_ACCOUNT},
                "env": {"AWS_REGION": region.aws_region},
            },
        )
        chart.node.add_dependency(association)
        return chart


def nats_values(settings: AppSettings, load_balancer_security_group: str) -> dict[str, Any]:
    """Values of the official NATS chart: a JetStream cluster of `natsReplicas` servers on
    separate nodes, file storage on encrypted volumes, three users from the nats-auth secret,
    clients only through an internal NLB, TLS on the client port and the routes (the routes
    verify each other's certificate against the CA)."""
    config = settings.events

    def from_secret(key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": NATS_AUTH_SECRET, "key": key}}}

    return {
        "fullnameOverride": NATS_SERVICE,
        "config": {
            "cluster": {
                "enabled": True,
                "replicas": config.nats_replicas,
                "tls": {"enabled": True, "secretName": NATS_TLS_SECRET, "ca": "ca.crt"},
            },
            "nats": {"tls": {"enabled": True, "secretName": NATS_TLS_SECRET}},
            "jetstream": {
                "enabled": True,
                "fileStore": {
                    "enabled": True,
                    "pvc": {
                        "enabled": True,
                        "size": f"{config.jetstream_storage_gi}Gi",
                        "storageClassName": STORAGE_CLASS,
                    },
                },
                "memoryStore": {"enabled": False},
            },
            "merge": nats_config_merge(),
        },
        "container": {
            "image": {"tag": config.nats_image_tag},
            "env": {
                "BRIDGE_USER": from_secret("bridge-user"),
                "BRIDGE_PASSWORD": from_secret("bridge-password"),
                "ADMIN_USER": from_secret("admin-user"),
                "ADMIN_PASSWORD": from_secret("admin-password"),
                "CONSUMERS_USER": from_secret("consumers-user"),
                "CONSUMERS_PASSWORD": from_secret("consumers-password"),
                "GOMEMLIMIT": "900MiB",
            },
            "merge": {
                "resources": {
                    "requests": {"cpu": "500m", "memory": "1Gi"},
                    "limits": {"memory": "1Gi"},
                }
            },
        },
        "podTemplate": {
            "topologySpreadConstraints": {
                "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"},
                "topology.kubernetes.io/zone": {
                    "maxSkew": 1,
                    "whenUnsatisfiable": "ScheduleAnyway",
                },
            }
        },
        "podDisruptionBudget": {"enabled": True},
        "natsBox": {"enabled": False},
        "service": {
            "merge": {
                "metadata": {
                    "annotations": {
                        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
                        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
                        "service.beta.kubernetes.io/aws-load-balancer-security-groups": (
                            load_balancer_security_group
                        ),
                        "service.beta.kubernetes.io/"
                        "aws-load-balancer-manage-backend-security-group-rules": "true",
                    }
                },
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "eks.amazonaws.com/nlb"},
            }
        },
    }


def _topology_digest(replicas: int) -> str:
    source = REPO_ROOT / "layers" / "shared" / "python" / "covenant" / "streams.py"
    handler = REPO_ROOT / "functions" / "jetstream" / "handler.py"
    digest = hashlib.sha256(str(replicas).encode())
    for path in (source, handler):
        digest.update(path.read_bytes())
    return digest.hexdigest()


class EventsStack(Stack):
    """The stateful event path: the events key, the NATS secrets, EKS with NATS and JetStream's
    volumes, the wake-up queue and its DLQ. Termination-protected; the functions that use them
    live in BridgeStack, which can be replaced or rolled back on its own."""

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
        groups = network.security_groups
        assert groups.bridge is not None and groups.jetstream is not None
        self.key = kms.Key(
            self,
            "EventsKey",
            alias=f"alias/covenant/{region.code}/events",
            description="Covenant events: NATS secrets, JetStream volumes, Kubernetes secrets",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bridge_secret = _nats_secret(self, "NatsBridgeSecret", "bridge", self.key)
        self.admin_secret = _nats_secret(self, "NatsAdminSecret", "admin", self.key)
        self.consumers_secret = _nats_secret(self, "NatsConsumersSecret", "consumers", self.key)
        self.nats = NatsCluster(
            self,
            "Nats",
            region=region,
            settings=settings,
            network=network,
            key=self.key,
            bridge_secret=self.bridge_secret,
            admin_secret=self.admin_secret,
            consumers_secret=self.consumers_secret,
        )
        self.wakeup = WakeupQueue(
            self,
            "Wakeup",
            settings=settings,
            bridge_timeout_s=settings.deploy_settings("bridge").timeout_s,
        )
        encrypt_log_groups(self, network.data_key)


class BridgeStack(Stack):
    """The stateless functions of the event path, in the primary region: the outbox bridge
    (wake-up queue event source + sweep) and the JetStream topology custom resource with its
    health probe. Nothing here holds data: replacing the stack loses nothing."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        events_stack: EventsStack,
        writer_host: str,
        cluster_resource_id: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        groups = network.security_groups
        assert groups.bridge is not None and groups.jetstream is not None
        self.nats = events_stack.nats
        self.bridge_secret = events_stack.bridge_secret
        self.admin_secret = events_stack.admin_secret
        self.wakeup = events_stack.wakeup
        self.events_key = events_stack.key
        layers = SharedLayers(self, "Layers", ca_bundle=settings.database.ca_bundle)
        bridge_spec: FunctionSpec = settings.functions["bridge"]
        bridge_deploy = settings.deploy_settings("bridge")
        database_url = (
            f"postgresql://{database_user('bridge')}@{writer_host}:5432/"
            f"{settings.database.database_name}?{settings.database.tls_query}&auth=iam"
        )
        self.bridge = CovenantFunction(
            self,
            "Bridge",
            package="bridge",
            handler=bridge_spec.handler,
            description=bridge_spec.description,
            deploy=bridge_deploy,
            settings=settings,
            layers=layers.layers,
            environment={
                **base_environment(service="bridge", region=region, settings=settings),
                "DATABASE_URL": database_url,
                "DATABASE_READER_URL": database_url,
                "DB_STATEMENT_TIMEOUT_MS": str(settings.database.statement_timeout_ms),
                "NATS_URL": self.nats.url,
                **self.nats.tls_environment,
                "NATS_SECRET_ARN": self.bridge_secret.secret_arn,
                "OUTBOX_RETENTION_S": str(settings.events.outbox_retention_days * DAY_S),
                "BRIDGE_ALERT_REPLICA_LAG_WARNING_S": str(settings.events.replica_lag_warning_s),
                "BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S": str(settings.events.replica_lag_critical_s),
            },
            vpc=network.vpc,
            subnets=network.function_subnets,
            security_group=groups.bridge,
            log_key=network.data_key,
            region=region,
            # Fixed names: moving a function between stacks (as from Events to Bridge) keeps
            # the name operators, dashboards and runbooks know.
            function_name=function_name(region, "bridge"),
        )
        self._grant_secret_read(self.bridge.role, self.bridge_secret, events_stack.key)
        self.bridge.grant_database_connect(
            cluster_resource_id=cluster_resource_id, db_user=database_user("bridge")
        )
        self.bridge.target.add_event_source(
            sources.SqsEventSource(
                self.wakeup.queue,
                batch_size=10,
                max_batching_window=Duration.seconds(1),
                report_batch_item_failures=True,
                # One relay publishes at a time (advisory lock); more pollers only wait.
                max_concurrency=2,
            )
        )
        self.sweep = events.Rule(
            self,
            "Sweep",
            rule_name="covenant-outbox-sweep",
            description="Publishes outbox events no wake-up delivered; prunes published rows",
            schedule=events.Schedule.rate(Duration.minutes(settings.events.sweep_every_minutes)),
            targets=[targets.LambdaFunction(self.bridge.target, retry_attempts=0)],
        )
        self.jetstream = self._jetstream(region, settings, network, layers)
        encrypt_log_groups(self, network.data_key)

    def _jetstream(
        self,
        region: Region,
        settings: AppSettings,
        network: RegionalNetwork,
        layers: SharedLayers,
    ) -> CovenantFunction:
        groups = network.security_groups
        assert groups.jetstream is not None
        function = CovenantFunction(
            self,
            "JetStream",
            package="jetstream",
            handler="jetstream.handler.handler",
            description="Applies the JetStream topology on deploy; probes JetStream every minute",
            deploy=settings.deploy_settings("jetstream"),
            settings=settings,
            layers=layers.layers,
            environment={
                **base_environment(service="jetstream", region=region, settings=settings),
                "NATS_URL": self.nats.url,
                **self.nats.tls_environment,
                "NATS_SECRET_ARN": self.admin_secret.secret_arn,
                "NATS_REPLICAS": str(settings.events.nats_replicas),
            },
            vpc=network.vpc,
            subnets=network.function_subnets,
            security_group=groups.jetstream,
            log_key=network.data_key,
            region=region,
            function_name=function_name(region, "jetstream"),
        )
        self._grant_secret_read(function.role, self.admin_secret, self.events_key)
        provider = cr.Provider(
            self,
            "TopologyProvider",
            on_event_handler=function.function,
            log_group=logs.LogGroup(
                self,
                "TopologyProviderLogs",
                retention=log_retention(settings.log_retention_days),
                encryption_key=network.data_key,
            ),
        )
        topology = CustomResource(
            self,
            "Topology",
            service_token=provider.service_token,
            resource_type="Custom::CovenantJetStreamTopology",
            properties={
                "Digest": _topology_digest(settings.events.nats_replicas),
                "Url": self.nats.url,
            },
        )
        topology.node.add_dependency(self.nats.chart)
        self.probe = events.Rule(
            self,
            "Probe",
            rule_name="covenant-jetstream-probe",
            description="JetStream health for the NATS alarm (metric JetStreamHealthy)",
            schedule=events.Schedule.rate(Duration.minutes(1)),
            targets=[targets.LambdaFunction(function.function, retry_attempts=0)],
        )
        acknowledge_provider_framework(provider, function.function)
        return function

    def _grant_secret_read(
        self, role: iam.IRole, secret: secretsmanager.ISecret, key: kms.IKey
    ) -> None:
        """Secret.grant_read, on the role's side only: the secret and its key live in the
        Events stack, and grant_read would add this stack's role to the key's policy there
        (a reference back from Events to Bridge, a dependency cycle). The key trusts the
        account's IAM policies, so the role's own policy is enough."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[secret.secret_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{self.region}.amazonaws.com"
                    }
                },
            )
        )

    @property
    def bridge_function(self) -> lambda_.IFunction:
        return self.bridge.function

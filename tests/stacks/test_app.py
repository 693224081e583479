"""The synthesized app has the shape DevOps and the functions rely on, in every region."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from covenant.regions import cdk_context, load_regions
from covenant.streams import DAY_S, STREAMS
from covenant.topology import load_functions
from stacks.events import BRIDGE_NATS_PERMISSIONS, consumers_nats_permissions
from stacks.layers import build_dependencies, locked_versions, runtime_requirements
from stacks.settings import DATABASE_CA_PARAMETER_PATH, EventsSettings, SettingsError

from .conftest import DOMAIN, resources

REGIONS = load_regions()
PRIMARY = next(r for r in REGIONS if r.primary)
SECONDARIES = [r for r in REGIONS if not r.primary]
CODES = [r.code for r in REGIONS]
VERIFIED_TLS = f"sslmode=verify-full&sslrootcert=ssm:{DATABASE_CA_PARAMETER_PATH}"


def _only(template: Template, kind: str, **match: Any) -> dict[str, Any]:
    found = [
        r
        for r in resources(template, kind).values()
        if all(r["Properties"].get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"expected one {kind} matching {match}, found {len(found)}"
    return found[0]


def _function(template: Template, handler: str) -> dict[str, Any]:
    return _only(template, "AWS::Lambda::Function", Handler=handler)["Properties"]


# -- stacks and regions ------------------------------------------------------------------------


def test_every_region_has_its_stacks_in_its_own_aws_region(stacks) -> None:
    expected = {}
    for r in REGIONS:
        for kind in ("Network", "Data", "Api", "Monitoring"):
            expected[f"Covenant-{r.code}-{kind}"] = r.aws_region
    expected[f"Covenant-{PRIMARY.code}-Auth"] = PRIMARY.aws_region
    expected[f"Covenant-{PRIMARY.code}-Events"] = PRIMARY.aws_region
    expected[f"Covenant-{PRIMARY.code}-Bridge"] = PRIMARY.aws_region
    expected[f"Covenant-{PRIMARY.code}-Consumers"] = PRIMARY.aws_region
    expected[f"Covenant-{PRIMARY.code}-Realtime"] = PRIMARY.aws_region
    assert {name: s.environment.region for name, s in stacks.items()} == expected


def test_stateful_stacks_are_protected_from_deletion(stacks) -> None:
    for name, stack in stacks.items():
        if name.endswith(("-Data", "-Auth", "-Events", "-Consumers")):
            assert stack.termination_protection, name


# What holds data or identity; a stateless stack has none of these, so it can be replaced.
STATEFUL_TYPES = {
    "AWS::SQS::Queue",
    "AWS::SecretsManager::Secret",
    "AWS::KMS::Key",
    "AWS::EKS::Cluster",
    "AWS::RDS::DBCluster",
    "AWS::Cognito::UserPool",
}


def test_the_bridge_and_topology_functions_live_in_their_own_stateless_stack(templates) -> None:
    """Events holds NATS, its secrets and the wake-up queue; Bridge holds the functions that
    use them (replaceable and rolled back on their own, without touching EKS)."""
    events = templates[f"Covenant-{PRIMARY.code}-Events"]
    bridge = templates[f"Covenant-{PRIMARY.code}-Bridge"]
    ours = {"bridge.handler.handler", "jetstream.handler.handler"}
    in_events = {
        f["Properties"].get("Handler") for f in resources(events, "AWS::Lambda::Function").values()
    }
    assert not (ours & in_events)
    assert resources(events, "AWS::Lambda::EventSourceMapping") == {}
    assert resources(events, "AWS::Events::Rule") == {}
    assert resources(events, "Custom::CovenantJetStreamTopology") == {}
    in_bridge = {
        f["Properties"].get("Handler"): f["Properties"]
        for f in resources(bridge, "AWS::Lambda::Function").values()
    }
    assert ours <= set(in_bridge)
    names = {in_bridge[h]["FunctionName"] for h in ours}
    assert names == {f"covenant-{PRIMARY.code}-bridge", f"covenant-{PRIMARY.code}-jetstream"}
    kinds = {r["Type"] for r in bridge.to_json()["Resources"].values()}
    assert not (kinds & STATEFUL_TYPES), kinds & STATEFUL_TYPES


# -- network ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_network_has_private_subnets_in_two_azs_and_tight_groups(templates, code) -> None:
    template = templates[f"Covenant-{code}-Network"]
    subnets = resources(template, "AWS::EC2::Subnet").values()
    private = [
        s
        for s in subnets
        if not s["Properties"].get("MapPublicIpOnLaunch")
        and any(
            t["Key"] == "aws-cdk:subnet-name" and t["Value"] == "Private"
            for t in s["Properties"]["Tags"]
        )
    ]
    assert len({json.dumps(s["Properties"]["AvailabilityZone"]) for s in private}) >= 2
    template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})
    database_ingress = [
        rule["Properties"]
        for rule in resources(template, "AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"].get("FromPort") == 5432
    ]
    # Only security groups, never a CIDR, may reach the database port.
    assert database_ingress and all("SourceSecurityGroupId" in r for r in database_ingress)
    for group in resources(template, "AWS::EC2::SecurityGroup").values():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            assert rule.get("CidrIp") != "0.0.0.0/0", group
    endpoints = {
        json.dumps(e["Properties"]["ServiceName"])
        for e in resources(template, "AWS::EC2::VPCEndpoint").values()
    }
    assert any(".s3" in e for e in endpoints)  # the gateway endpoint, in every region
    if code == PRIMARY.code:
        # Every AWS service the functions call in their own region: the bridge's, JetStream
        # probe's and migrator's secrets, the wake-ups, Cognito (mobile auth, setUserRole).
        for service in ("secretsmanager", "sqs", "cognito-idp"):
            assert any(f'.{service}"' in e for e in endpoints), service


# -- data ---------------------------------------------------------------------------------------


def test_one_global_database_with_a_writer_and_readers_in_the_primary(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Data"]
    cluster = _only(template, "AWS::RDS::DBCluster", DBClusterIdentifier="covenant-iad")
    props = cluster["Properties"]
    assert props["Engine"] == "aurora-postgresql"
    assert props["StorageEncrypted"] is True and "KmsKeyId" in props
    assert props["EnableIAMDatabaseAuthentication"] is True
    assert props["DeletionProtection"] is True
    assert props["BackupRetentionPeriod"] >= 7
    assert cluster["DeletionPolicy"] == "Snapshot"
    assert len(resources(template, "AWS::RDS::DBInstance")) >= 2  # writer + reader
    global_cluster = _only(template, "AWS::RDS::GlobalCluster")
    assert global_cluster["Properties"]["GlobalClusterIdentifier"] == "covenant-global"
    assert global_cluster["DeletionPolicy"] == "Retain"
    template.has_resource_properties(
        "AWS::SecretsManager::RotationSchedule",
        {"RotationRules": {"ScheduleExpression": "rate(30 days)"}},
    )
    # The region's data key lives in its network stack (it also encrypts the flow logs).
    templates[f"Covenant-{PRIMARY.code}-Network"].has_resource_properties(
        "AWS::KMS::Key", {"EnableKeyRotation": True}
    )


def test_five_secondary_clusters_of_readers_join_the_global_database(templates) -> None:
    assert len(SECONDARIES) == 5
    for region in SECONDARIES:
        template = templates[f"Covenant-{region.code}-Data"]
        cluster = _only(template, "AWS::RDS::DBCluster")
        props = cluster["Properties"]
        assert props["GlobalClusterIdentifier"] == "covenant-global"
        assert "EnableGlobalWriteForwarding" not in props  # writes go to the primary function
        assert props["StorageEncrypted"] is True and "KmsKeyId" in props
        assert props["DeletionProtection"] is True
        assert "MasterUsername" not in props  # a secondary inherits the primary's users
        assert cluster["DeletionPolicy"] == "Retain"
        assert len(resources(template, "AWS::RDS::DBInstance")) >= 1
        assert resources(template, "AWS::RDS::GlobalCluster") == {}


def test_migrations_run_on_deploy_as_a_custom_resource(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Data"]
    migrations = resources(template, "Custom::CovenantMigrations")
    assert len(migrations) == 1
    (resource,) = migrations.values()
    assert len(resource["Properties"]["Digest"]) == 64
    # A change to the login roles or the TLS setting runs the migrator again, too.
    assert resource["Properties"]["LoginUsers"] == (
        "covenant_graphql,covenant_mobile,covenant_bridge,covenant_analytics,"
        "covenant_mobile_push,covenant_notifier,covenant_realtime,covenant_fanout"
    )
    assert resource["Properties"]["Tls"] == VERIFIED_TLS
    assert "Run" not in resource["Properties"]  # only with -c covenant:migrationsRun=<id>
    migrator = _function(template, "migrator.handler.handler")
    env = migrator["Environment"]["Variables"]
    assert (
        env["DATABASE_LOGIN_USERS"]
        == "covenant_graphql,covenant_mobile,covenant_bridge,covenant_analytics,"
        "covenant_mobile_push,covenant_notifier,covenant_realtime,covenant_fanout"
    )
    # The bridge's role alone may also read the replicas' status (its replica-lag alert).
    assert env["DATABASE_MONITOR_USERS"] == "covenant_bridge"
    assert resource["Properties"]["MonitorUsers"] == "covenant_bridge"
    assert env["DATABASE_TLS"] == VERIFIED_TLS
    assert len(migrator["Layers"]) == 2  # dependencies, shared code (the CA is in SSM)
    assert "VpcConfig" in migrator


# -- API ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_every_route_has_the_authorizer_its_table_entry_asks_for(templates, code) -> None:
    template = templates[f"Covenant-{code}-Api"]
    authorizer_id = next(iter(resources(template, "AWS::ApiGatewayV2::Authorizer")))
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Authorizer",
        {
            "AuthorizerType": "JWT",
            "IdentitySource": ["$request.header.Authorization"],
            "JwtConfiguration": {"Issuer": Match.any_value(), "Audience": Match.any_value()},
        },
    )
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in resources(template, "AWS::ApiGatewayV2::Route").values()
        if not r["Properties"]["RouteKey"].startswith("$")  # the WebSocket API's: test_realtime
    }
    expected = {
        route.key: route.auth for spec in load_functions().values() for route in spec.routes
    }
    assert set(routes) == set(expected)
    for key, auth in expected.items():
        route = routes[key]
        if auth == "jwt":
            assert route["AuthorizationType"] == "JWT", key
            assert route["AuthorizerId"] == {"Ref": authorizer_id}, key
        else:  # none, and jwt-optional (the function verifies a token it is sent)
            assert route["AuthorizationType"] == "NONE", key


@pytest.mark.parametrize("code", CODES)
def test_stage_is_the_region_code_with_throttling_cors_and_access_logs(templates, code) -> None:
    template = templates[f"Covenant-{code}-Api"]
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "StageName": code,
            "AutoDeploy": True,
            "DefaultRouteSettings": {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400},
            "RouteSettings": {
                "POST /auth/login": {"ThrottlingRateLimit": 10, "ThrottlingBurstLimit": 20}
            },
            "AccessLogSettings": {
                "DestinationArn": Match.any_value(),
                "Format": Match.string_like_regexp(r"\$context\.requestId"),
            },
        },
    )
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Api",
        {
            "ProtocolType": "HTTP",
            "CorsConfiguration": Match.object_like(
                {
                    # A browser may send the read-your-writes position and read it back.
                    "AllowHeaders": Match.array_with(
                        ["authorization", "idempotency-key", "covenant-min-position"]
                    ),
                    "ExposeHeaders": Match.array_with(["covenant-position"]),
                }
            ),
        },
    )


@pytest.mark.parametrize("code", CODES)
def test_api_functions_run_in_the_vpc_with_this_regions_database(templates, code) -> None:
    template = templates[f"Covenant-{code}-Api"]
    for name, handler in (
        ("graphql", "graphql_api.handler.handler"),
        ("mobile", "mobile.handler.handler"),
    ):
        fn = _function(template, handler)
        assert fn["Runtime"] == "python3.14"
        assert fn["Architectures"] == ["arm64"]
        assert fn["TracingConfig"] == {"Mode": "Active"}
        assert len(fn["Layers"]) == 2  # dependencies, shared code (the database CA is in SSM)
        assert fn["VpcConfig"]["SubnetIds"] and fn["VpcConfig"]["SecurityGroupIds"]
        env = fn["Environment"]["Variables"]
        assert env["COVENANT_REGION"] == code
        assert env["POWERTOOLS_SERVICE_NAME"] == name
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Covenant"
        assert [r["code"] for r in json.loads(env["COVENANT_REGIONS"])] == CODES
        # The writer only in the primary: a secondary hands writes to the primary function.
        variables = ("DATABASE_URL", "DATABASE_READER_URL") if code == PRIMARY.code else ()
        for variable in (*variables, "DATABASE_READER_URL"):
            url = json.dumps(env[variable])
            assert f"postgresql://covenant_{name}@" in url
            # The server's certificate is verified against the bundle's CA, host name included.
            assert f"?{VERIFIED_TLS}&auth=iam" in url
        assert {"COGNITO_USER_POOL_ID", "COGNITO_CLIENT_ID", "COGNITO_REGION"} <= set(env)
        assert not any(k.startswith("AWS_") for k in env)  # reserved by Lambda
        # Both write outbox events (mutations, sync push) and wake the bridge after commit.
        assert "covenant-outbox-wakeup" in json.dumps(env["OUTBOX_WAKEUP_QUEUE_URL"])
        # The primary's /health probes NATS (its greeting, no credentials); no one else's.
        probes_nats = name == "mobile" and code == PRIMARY.code
        assert ("NATS_URL" in env) is probes_nats, (name, code)
        assert not any(k.startswith("NATS_") and k != "NATS_URL" for k in env)
        # /health's "degraded" is the bridge's replica-lag warning, from one setting.
        warning_s = str(cdk_context()["covenant:events"]["replicaLagWarningSeconds"])
        assert env.get("HEALTH_MAX_REPLICA_LAG_S") == (warning_s if name == "mobile" else None)
    graphql = _function(template, "graphql_api.handler.handler")
    assert graphql["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    # Introspection and the explorer stay off in AWS unless covenant:graphql turns them on.
    graphql_env = graphql["Environment"]["Variables"]
    assert (graphql_env["GRAPHQL_INTROSPECTION"], graphql_env["GRAPHQL_EXPLORER"]) == (
        "false",
        "false",
    )
    # API Gateway invokes the alias of the published (snapshotted) version.
    template.has_resource_properties("AWS::Lambda::Alias", {"Name": "live"})


@pytest.mark.parametrize("code", CODES)
def test_custom_domain_and_latency_routed_global_name(templates, code) -> None:
    template = templates[f"Covenant-{code}-Api"]
    region = next(r for r in REGIONS if r.code == code)
    names = {
        d["Properties"]["DomainName"]
        for d in resources(template, "AWS::ApiGatewayV2::DomainName").values()
    }
    assert names == {f"api-{code}.{DOMAIN['name']}", f"api.{DOMAIN['name']}"}
    template.has_resource_properties(
        "AWS::Route53::RecordSet",
        {
            "Name": f"api.{DOMAIN['name']}",
            "SetIdentifier": code,
            "Region": region.aws_region,
            "HealthCheckId": Match.any_value(),
        },
    )
    template.has_resource_properties(
        "AWS::Route53::HealthCheck",
        {
            "HealthCheckConfig": Match.object_like(
                {
                    "ResourcePath": "/health",
                    "FullyQualifiedDomainName": f"api-{code}.{DOMAIN['name']}",
                }
            )
        },
    )


def _role_statements(template: Template, role_prefix: str) -> list[dict[str, Any]]:
    """The statements of the policies attached to the role whose logical id starts so."""
    found = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        roles = json.dumps(policy["Properties"]["Roles"])
        if f'"{role_prefix}' in roles:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


# What functions/mobile/auth/cognito.py and functions/graphql_api/users.py call with IAM
# credentials (InitiateAuth, GetTokensFromRefreshToken and GlobalSignOut are authorized by
# the client secret or the user's own token).
COGNITO_CALLS = {
    "Mobile": {
        "cognito-idp:AdminCreateUser",
        "cognito-idp:AdminSetUserPassword",
        "cognito-idp:AdminAddUserToGroup",
        "cognito-idp:AdminDeleteUser",
        "cognito-idp:AdminGetUser",
        "cognito-idp:AdminListGroupsForUser",
        "cognito-idp:AdminUserGlobalSignOut",
        "cognito-idp:DescribeUserPool",
        # the app client's secret, read at the first sign-in (never in a template)
        "cognito-idp:DescribeUserPoolClient",
    },
    "Graphql": {
        "cognito-idp:AdminGetUser",
        "cognito-idp:AdminListGroupsForUser",
        "cognito-idp:AdminAddUserToGroup",
        "cognito-idp:AdminRemoveUserFromGroup",
        "cognito-idp:ListUsersInGroup",
    },
}


@pytest.mark.parametrize("code", CODES)
def test_api_functions_may_make_exactly_their_cognito_and_queue_calls(templates, code) -> None:
    template = templates[f"Covenant-{code}-Api"]
    for function, calls in COGNITO_CALLS.items():
        statements = _role_statements(template, f"{function}FunctionRole")
        cognito = [
            s for s in statements if any(a.startswith("cognito-idp:") for a in _list(s["Action"]))
        ]
        assert len(cognito) == 1, function
        assert set(_list(cognito[0]["Action"])) == calls, function
        # On the one user pool (its ARN, a cross-region reference outside the primary).
        pool = json.dumps(cognito[0]["Resource"])
        assert "UsersPool" in pool and "Arn" in pool and "*" not in pool, function
        send = [s for s in statements if "sqs:SendMessage" in _list(s["Action"])]
        assert len(send) == 1 and _list(send[0]["Action"]) == ["sqs:SendMessage"], function
        queue = json.dumps(send[0]["Resource"])
        assert f":sqs:{PRIMARY.aws_region}:" in queue and '":covenant-outbox-wakeup"' in queue


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_every_covenant_function_runs_python_3_14_on_arm64_in_the_vpc(templates) -> None:
    handlers = {spec.handler for spec in load_functions().values()} | {
        "migrator.handler.handler",
        "jetstream.handler.handler",
    }
    seen = set()
    for template in templates.values():
        for resource in resources(template, "AWS::Lambda::Function").values():
            props = resource["Properties"]
            if props.get("Handler") not in handlers:
                continue  # functions aws-cdk-lib brings (provider framework, kubectl, rotation)
            seen.add(props["Handler"])
            assert props["Runtime"] == "python3.14", props["Handler"]
            assert props["Architectures"] == ["arm64"], props["Handler"]
            assert props["VpcConfig"]["SubnetIds"], props["Handler"]
            env = props["Environment"]["Variables"]
            assert env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false", props["Handler"]
    assert seen == handlers


# -- auth ---------------------------------------------------------------------------------------


def test_user_pool_with_roles_password_policy_and_the_mobile_client(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Auth"]
    pool = _only(template, "AWS::Cognito::UserPool")["Properties"]
    policy = pool["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] == 12
    assert all(
        policy[k]
        for k in ("RequireLowercase", "RequireUppercase", "RequireNumbers", "RequireSymbols")
    )
    assert pool["UserPoolTier"] == "PLUS"
    assert pool["UserPoolAddOns"]["AdvancedSecurityMode"] == "ENFORCED"
    assert pool["DeletionProtection"] == "ACTIVE"
    groups = {
        g["Properties"]["GroupName"]
        for g in resources(template, "AWS::Cognito::UserPoolGroup").values()
    }
    assert groups == {"admin", "editor", "viewer"}
    client = _only(template, "AWS::Cognito::UserPoolClient")["Properties"]
    assert set(client["ExplicitAuthFlows"]) == {
        "ALLOW_USER_PASSWORD_AUTH",
        "ALLOW_REFRESH_TOKEN_AUTH",
    }
    assert client["PreventUserExistenceErrors"] == "ENABLED"
    assert client["EnableTokenRevocation"] is True


def test_the_mobile_client_is_confidential_and_propagates_the_callers_context(
    templates,
) -> None:
    """Cognito takes UserContextData (the caller's address for threat protection) only from
    a client with a secret and EnablePropagateAdditionalUserContextData."""
    template = templates[f"Covenant-{PRIMARY.code}-Auth"]
    client = _only(template, "AWS::Cognito::UserPoolClient")["Properties"]
    assert client["GenerateSecret"] is True
    assert client["EnablePropagateAdditionalUserContextData"] is True
    # Refresh goes through GetTokensFromRefreshToken, which needs rotation off or on alike;
    # rotation stays off (the app keeps its refresh token).
    assert client.get("RefreshTokenRotation", {"Feature": "DISABLED"})["Feature"] == "DISABLED"


def test_no_template_carries_the_client_secret(templates) -> None:
    """The secret is read by the mobile function from Cognito at run time: no template
    reads it (CDK's userPoolClientSecret is a custom resource whose answer CloudFormation
    would hold), passes it on, or outputs it."""
    for name, template in templates.items():
        text = json.dumps(template.to_json())
        assert "ClientSecret" not in text, name
        assert "DescribeUserPoolClient" not in text or name.endswith("-Api"), name


# -- events -------------------------------------------------------------------------------------


def _helm(template: Template, chart: str) -> dict[str, Any]:
    found = [
        r["Properties"]
        for r in resources(template, "Custom::AWSCDK-EKS-HelmChart").values()
        if r["Properties"].get("Chart") == chart
    ]
    assert len(found) == 1, chart
    return found[0]


def _resolved_json(value: Any) -> Any:
    """JSON that CloudFormation assembles with Fn::Join, with every token as "TOKEN"."""
    if isinstance(value, str):
        return json.loads(value)
    parts = value["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "TOKEN" for p in parts))


def test_nats_runs_from_the_official_chart_with_three_jetstream_replicas(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Events"]
    cluster = _only(template, "AWS::EKS::Cluster")["Properties"]
    assert cluster["ResourcesVpcConfig"]["EndpointPublicAccess"] is False
    assert cluster["EncryptionConfig"]
    nats = _helm(template, "nats")
    assert nats["Repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert nats["Version"]
    values = _resolved_json(nats["Values"])
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["storageClassName"] == "covenant-jetstream"
    users = config["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == [
        "<< $BRIDGE_USER >>",
        "<< $ADMIN_USER >>",
        "<< $CONSUMERS_USER >>",
    ]
    env = values["container"]["env"]
    assert env["BRIDGE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "nats-auth"
    service = values["service"]["merge"]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert service["spec"]["type"] == "LoadBalancer"
    _helm(template, "external-secrets")


def test_the_bridge_user_of_nats_publishes_events_and_reads_only_stream_info(
    templates,
) -> None:
    # tests/functions/bridge/test_nats_permissions.py holds these against a real nats-server.
    values = _resolved_json(_helm(templates[f"Covenant-{PRIMARY.code}-Events"], "nats")["Values"])
    assert values["config"]["merge"] == {
        "authorization": {
            "users": [
                {
                    "user": "<< $BRIDGE_USER >>",
                    "password": "<< $BRIDGE_PASSWORD >>",
                    "permissions": {
                        "publish": {
                            "allow": [
                                "covenant.countries.*",
                                "covenant.projects.*",
                                "audit.>",
                                "alerts.>",
                                "notifications.>",
                                # Read-only: "no responders" is a missing stream or a
                                # leaderless one, and only JetStream can tell which.
                                "$JS.API.STREAM.INFO.COVENANT",
                                "$JS.API.STREAM.INFO.AUDIT",
                                "$JS.API.STREAM.INFO.ALERTS",
                                "$JS.API.STREAM.INFO.NOTIFICATIONS",
                            ]
                        },
                        "subscribe": {"allow": ["_INBOX_BRIDGE.>"]},
                    },
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
    # Derived from the topology, not stated twice: a new stream's subjects come with it.
    assert BRIDGE_NATS_PERMISSIONS["publish"]["allow"] == [
        subject for stream in STREAMS for subject in stream.subjects
    ] + [f"$JS.API.STREAM.INFO.{stream.name}" for stream in STREAMS]


def test_wakeup_queue_has_a_dead_letter_queue_and_the_bridge_reports_item_failures(
    templates,
) -> None:
    queue_template = templates[f"Covenant-{PRIMARY.code}-Events"]
    template = templates[f"Covenant-{PRIMARY.code}-Bridge"]
    queue = _only(queue_template, "AWS::SQS::Queue", QueueName="covenant-outbox-wakeup")[
        "Properties"
    ]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    assert queue["MessageRetentionPeriod"] == 4 * DAY_S  # covenant:events.wakeupRetentionDays
    dlq = _only(queue_template, "AWS::SQS::Queue", QueueName="covenant-outbox-wakeup-dlq")
    assert dlq["Properties"]["MessageRetentionPeriod"] == 14 * DAY_S  # deadLetterRetentionDays
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"FunctionResponseTypes": ["ReportBatchItemFailures"], "BatchSize": 10},
    )
    bridge = _function(template, "bridge.handler.handler")
    assert "VpcConfig" in bridge
    assert bridge["ReservedConcurrentExecutions"] == 3  # covenant:deploy.bridge
    env = bridge["Environment"]["Variables"]
    assert {"NATS_URL", "NATS_SECRET_ARN", "DATABASE_URL"} <= set(env)
    assert f"?{VERIFIED_TLS}&auth=iam" in json.dumps(env["DATABASE_URL"])
    assert env["OUTBOX_RETENTION_S"] == str(7 * DAY_S)  # covenant:events.outboxRetentionDays
    # covenant:events.replicaLagWarningSeconds / replicaLagCriticalSeconds
    assert env["BRIDGE_ALERT_REPLICA_LAG_WARNING_S"] == "5"
    assert env["BRIDGE_ALERT_REPLICA_LAG_CRITICAL_S"] == "30"


def test_schedules_sweep_the_outbox_and_probe_jetstream(templates) -> None:
    template = templates[f"Covenant-{PRIMARY.code}-Bridge"]
    template.has_resource_properties(
        "AWS::Events::Rule",
        {"Name": "covenant-outbox-sweep", "ScheduleExpression": "rate(1 minute)"},
    )
    template.has_resource_properties(
        "AWS::Events::Rule",
        {"Name": "covenant-jetstream-probe", "ScheduleExpression": "rate(1 minute)"},
    )
    assert len(resources(template, "Custom::CovenantJetStreamTopology")) == 1


# -- IAM ----------------------------------------------------------------------------------------

# Actions AWS authorizes only on "*": Lambda's ENI management for VPC functions, X-Ray.
STAR_ONLY_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}
# The ENI calls Lambda makes on a VPC function's existing interfaces: never on "*".
ENI_ACTIONS = {
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


def _statements(templates) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for stack, template in templates.items():
        for logical, resource in template.to_json()["Resources"].items():
            documents = []
            if resource["Type"] == "AWS::IAM::Policy":
                documents = [resource["Properties"]["PolicyDocument"]]
            elif resource["Type"] == "AWS::IAM::Role":
                documents = [
                    p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])
                ]
            for document in documents:
                found += [(f"{stack}/{logical}", s) for s in document["Statement"]]
    return found


def test_iam_policies_use_no_wildcard_where_a_narrower_grant_exists(templates) -> None:
    statements = _statements(templates)
    assert statements
    for where, statement in statements:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        resources_ = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        assert not any("*" in action for action in actions), (where, actions)
        if "*" in resources_:
            assert set(actions) <= STAR_ONLY_ACTIONS, (where, actions)
    eni_grants = [
        json.dumps(statement["Resource"])
        for _, statement in statements
        if ENI_ACTIONS & set(_list(statement["Action"]))
    ]
    assert eni_grants
    for resource in eni_grants:
        assert ":network-interface/*" in resource and '"*"' not in resource, resource


def test_each_function_reads_only_its_own_secret_and_connects_as_its_own_user(templates) -> None:
    events = templates[f"Covenant-{PRIMARY.code}-Bridge"].to_json()["Resources"]
    readers: dict[str, set[str]] = {}
    for logical, resource in events.items():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            if "secretsmanager:GetSecretValue" in statement["Action"]:
                readers.setdefault(logical, set()).add(json.dumps(statement["Resource"]))
    bridge = next(v for k, v in readers.items() if k.startswith("BridgeRole"))
    jetstream = next(v for k, v in readers.items() if k.startswith("JetStreamRole"))
    assert len(bridge) == 1 and "NatsBridgeSecret" in next(iter(bridge))
    assert "NatsAdminSecret" not in next(iter(bridge))
    assert "NatsAdminSecret" in next(iter(jetstream)) and "NatsBridge" not in next(iter(jetstream))
    for code in CODES:
        api = templates[f"Covenant-{code}-Api"].to_json()["Resources"]
        for logical, resource in api.items():
            if resource["Type"] != "AWS::IAM::Policy" or "Role" not in logical:
                continue
            text = json.dumps(resource["Properties"]["PolicyDocument"])
            if "rds-db:connect" in text:
                user = next(
                    f"covenant_{name}"
                    for name in ("graphql", "mobile", "realtime")
                    if logical.lower().startswith(name)
                )
                assert f"/{user}" in text and text.count("dbuser") == 1, logical


# -- observability ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_alarms_notify_the_regions_topic(templates, code) -> None:
    template = templates[f"Covenant-{code}-Monitoring"]
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    metrics = json.dumps(alarms)
    for metric in ("5xx", "Latency", "Errors", "Throttles"):
        assert f'"{metric}"' in metrics, metric
    assert (
        "AuroraReplicaLagMaximum" if code == PRIMARY.code else "AuroraGlobalDBReplicationLag"
    ) in metrics
    # The lag alarm fires where the bridge warns (covenant:events, seconds; the metric is ms).
    lag_alarm = next(a for logical, a in alarms.items() if logical.startswith("ReplicaLag"))
    warning_s = cdk_context()["covenant:events"]["replicaLagWarningSeconds"]
    assert lag_alarm["Properties"]["Threshold"] == warning_s * 1000
    if code == PRIMARY.code:
        for metric in (
            "ApproximateNumberOfMessagesVisible",
            "OutboxLagSeconds",
            "JetStreamHealthy",
            "EventsDeadLettered",
        ):
            assert metric in metrics, metric
    topic = next(iter(resources(template, "AWS::SNS::Topic")))
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email"})


# -- layers -------------------------------------------------------------------------------------


def test_the_lock_file_pins_every_runtime_requirement_at_its_pyproject_version() -> None:
    locked = locked_versions()
    for requirement in runtime_requirements():
        name, _, version = requirement.partition("==")
        name = name.partition("[")[0]  # "PyJWT[crypto]" pins the distribution "pyjwt"
        assert locked.get(name.lower().replace("_", "-").replace(".", "-")) == version, requirement


def test_the_dependencies_layer_holds_the_pinned_packages_for_arm64() -> None:
    folder = build_dependencies(runtime_requirements()) / "python"
    for package in ("pg8000", "aws_lambda_powertools", "ariadne", "nats", "orjson"):
        assert (folder / package).is_dir()
    assert any(p.name == "pg8000-1.31.6.dist-info" for p in folder.iterdir())
    assert any("aarch64" in p.name for p in folder.rglob("*.so"))


@pytest.mark.parametrize(("warning", "critical"), [(30, 5), (5, 5), (0, 30)])
def test_replica_lag_thresholds_rise_from_warning_to_critical(warning, critical) -> None:
    raw = {
        **cdk_context()["covenant:events"],
        "replicaLagWarningSeconds": warning,
        "replicaLagCriticalSeconds": critical,
    }
    with pytest.raises(SettingsError, match="replicaLagWarningSeconds"):
        EventsSettings.parse(raw)

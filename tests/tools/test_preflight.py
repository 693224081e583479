"""make preflight against moto: a bootstrapped, enabled account passes; what is missing fails."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

import tools.preflight
from covenant.regions import cdk_context, load_regions
from tools.preflight import BOOTSTRAP_PARAMETER, run

REGIONS = load_regions()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


def _bootstrap(version: str, skip: str | None = None) -> None:
    for region in REGIONS:
        if region.code != skip:
            boto3.client("ssm", region_name=region.aws_region).put_parameter(
                Name=BOOTSTRAP_PARAMETER, Value=version, Type="String"
            )


class _Lambda:
    """moto does not implement GetAccountSettings: Lambda's answer for a given quota."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def get_account_settings(self) -> dict:
        return {"AccountLimit": {"ConcurrentExecutions": self.limit}}


class _Eks:
    """moto does not implement DescribeClusterVersions: EKS's answer for the versions given."""

    def __init__(self, offered: set[str]) -> None:
        self.offered = offered

    def describe_cluster_versions(self, clusterVersions: list[str]) -> dict:
        return {
            "clusterVersions": [
                {"clusterVersion": v, "versionStatus": "STANDARD_SUPPORT"}
                for v in clusterVersions
                if v in self.offered
            ]
        }


class _Ssm:
    """moto's SSM, whose public parameters list every service everywhere, without some."""

    def __init__(self, region: str, withheld: set[str]) -> None:
        self._client = boto3.client("ssm", region_name=region)
        self.exceptions = self._client.exceptions
        self.withheld = withheld

    def get_parameter(self, Name: str) -> dict:
        if Name.rsplit("/", 1)[-1] in self.withheld:
            raise self._client.exceptions.ParameterNotFound(
                {"Error": {"Code": "ParameterNotFound", "Message": Name}}, "GetParameter"
            )
        return self._client.get_parameter(Name=Name)


KUBERNETES = cdk_context()["covenant:events"]["kubernetesVersion"]


def _clients(lambda_limit: int, kubernetes: set[str] | None = None, withheld: set[str] = set()):  # noqa: B006
    def factory(service: str, region: str):
        if service == "lambda":
            return _Lambda(lambda_limit)
        if service == "eks":
            return _Eks({KUBERNETES} if kubernetes is None else kubernetes)
        if service == "ssm":
            return _Ssm(region, withheld)
        return boto3.client(service, region_name=region)

    return factory


def _by_name(checks):
    return {c.name: c for c in checks}


@mock_aws
def test_a_bootstrapped_account_passes_the_bootstrap_context_and_quota_checks() -> None:
    _bootstrap("30")
    # 1 040 needed in a secondary: GraphQL 600 + mobile 300 + realtime 40 + 100 unreserved.
    checks = _by_name(run(cdk_context(), _clients(1100)))
    assert checks["context"].ok
    for region in REGIONS:
        where = f"{region.code} ({region.aws_region})"
        assert checks[f"{where} CDK bootstrap"].ok, checks[f"{where} CDK bootstrap"]
        assert checks[f"{where} enabled"].ok, checks[f"{where} enabled"]
        quota = checks[f"{where} Lambda concurrency quota"]
        assert quota.ok and "unreserved" in quota.detail, quota


@mock_aws
def test_a_region_without_bootstrap_or_with_an_old_one_fails() -> None:
    _bootstrap("5", skip="jnb")
    checks = _by_name(run(cdk_context(), _clients(10)))  # a new account's quota
    assert not checks["jnb (af-south-1) CDK bootstrap"].ok
    assert "not bootstrapped" in checks["jnb (af-south-1) CDK bootstrap"].detail
    assert not checks["iad (us-east-1) CDK bootstrap"].ok
    assert "version 5" in checks["iad (us-east-1) CDK bootstrap"].detail
    quota = checks["iad (us-east-1) Lambda concurrency quota"]
    assert not quota.ok and quota.detail.startswith("10 (reserved 854 + 100")


@mock_aws
def test_a_context_whose_budget_does_not_fit_fails_before_any_call() -> None:
    context = cdk_context()
    context["covenant:deploy"]["mobile"]["reservedConcurrency"] = {
        "primary": 900,
        "secondary": 300,
    }
    [check] = run(context)
    assert check.name == "context" and not check.ok
    assert "primary writer" in check.detail


@mock_aws
def test_snapstart_eks_auto_mode_and_cognito_are_available_where_the_app_uses_them() -> None:
    _bootstrap("30")
    checks = _by_name(run(cdk_context(), _clients(1000)))
    for region in REGIONS:
        where = f"{region.code} ({region.aws_region})"
        [snapstart] = [c for n, c in checks.items() if n.startswith(f"{where} SnapStart for ")]
        assert snapstart.ok and "graphql" in snapstart.detail, snapstart
    primary = next(r for r in REGIONS if r.primary)
    where = f"{primary.code} ({primary.aws_region})"
    eks = checks[f"{where} EKS Auto Mode, Kubernetes {KUBERNETES}"]
    assert eks.ok and "STANDARD_SUPPORT" in eks.detail, eks
    cognito = checks[f"{where} Cognito user pools, Plus plan"]
    assert cognito.ok and "FULL_FUNCTION" in cognito.detail, cognito
    # EKS and Cognito live in the primary only: nothing is asked of the secondaries.
    assert not [n for n in checks if "EKS" in n and not n.startswith(where)]


@mock_aws
def test_a_region_without_snapstart_eks_version_or_cognito_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _bootstrap("30")
    monkeypatch.setattr(
        tools.preflight,
        "SNAPSTART_PYTHON_REGIONS",
        tools.preflight.SNAPSTART_PYTHON_REGIONS - {"af-south-1"},
    )
    checks = _by_name(
        run(cdk_context(), _clients(1000, kubernetes={"1.30"}, withheld={"cognito-idp"}))
    )
    [snapstart] = [c for n, c in checks.items() if n.startswith("jnb (af-south-1) SnapStart")]
    assert not snapstart.ok
    assert "not announced for af-south-1" in snapstart.detail
    assert "set snapStart false for graphql" in snapstart.detail
    eks = checks[f"iad (us-east-1) EKS Auto Mode, Kubernetes {KUBERNETES}"]
    assert not eks.ok and f"does not offer Kubernetes {KUBERNETES}" in eks.detail
    cognito = checks["iad (us-east-1) Cognito user pools, Plus plan"]
    assert not cognito.ok and "not offered" in cognito.detail

"""make preflight against moto: a bootstrapped, enabled account passes; what is missing fails."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

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


def _clients(lambda_limit: int):
    def factory(service: str, region: str):
        if service == "lambda":
            return _Lambda(lambda_limit)
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
    assert not quota.ok and quota.detail.startswith("10 (reserved 851 + 100")


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

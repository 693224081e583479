"""cdk-nag: the AwsSolutions pack runs on every stack at synth (a policy validation plugin), and
an unacknowledged finding stops the synth. Acknowledgments sit next to the resource they are
about, each with its reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, App, CfnElement, Stack, Token, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def enable_nag(app: App) -> None:
    """Runs the AwsSolutions pack on every stack of the app when it synthesizes."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, rule: str, reason: str, *findings: str) -> None:
    """Acknowledges `rule` on `scope` (and its children): the whole rule, or only the given
    findings of it (e.g. "Resource::*" for AwsSolutions-IAM5)."""
    ids = [f"{rule}[{finding}]" for finding in findings] or [rule]
    Validations.of(scope).acknowledge(*(Acknowledgment(id=i, reason=reason) for i in ids))


def logical_id(element: CfnElement) -> str:
    """The CloudFormation logical id of an element, as cdk-nag names it in findings."""
    stack = Stack.of(element)
    return str(stack.resolve(stack.get_logical_id(element)))


def nag_partition(scope: IConstruct) -> str:
    """The partition as cdk-nag writes it in a finding: a literal where the stack's region is
    known (@aws-cdk/core:enablePartitionLiterals), `<AWS::Partition>` otherwise."""
    partition = Stack.of(scope).partition
    return "<AWS::Partition>" if Token.is_unresolved(partition) else partition


def managed_policy(name: str) -> str:
    """The finding of AwsSolutions-IAM4 for an AWS managed policy."""
    return f"Policy::arn:<AWS::Partition>:iam::aws:policy/{name}"


def acknowledge_provider_framework(provider: IConstruct, handler: IConstruct) -> None:
    """The CDK custom resource provider framework: its function's AWS managed execution policy,
    its permission to invoke the handler's versions, its Node.js runtime."""
    function = handler.node.default_child
    assert isinstance(function, CfnElement)
    acknowledge(
        provider,
        "AwsSolutions-IAM4",
        "The CDK provider framework's function uses the AWS managed basic execution policy; "
        "it only relays CloudFormation requests to the handler and writes its own logs.",
        managed_policy("service-role/AWSLambdaBasicExecutionRole"),
    )
    acknowledge(
        provider,
        "AwsSolutions-IAM4",
        "The provider framework's function runs in the VPC when its handler does (kubectl).",
        managed_policy("service-role/AWSLambdaVPCAccessExecutionRole"),
    )
    acknowledge(
        provider,
        "AwsSolutions-IAM5",
        "The provider framework may invoke the versions of exactly one function (<arn>:*).",
        f"Resource::<{logical_id(function)}.Arn>:*",
    )


def acknowledge_push_endpoints(scope: IConstruct, endpoints: list[str]) -> None:
    """A device endpoint's ARN ends in an id SNS makes at registration: the wildcard is the
    devices of one platform application, nothing else."""
    acknowledge(
        scope,
        "AwsSolutions-IAM5",
        "Device endpoints are created at run time under their platform application; the "
        "wildcard covers the endpoints of the configured applications only.",
        *(f"Resource::{arn}" for arn in endpoints),
    )

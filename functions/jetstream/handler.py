"""JetStream topology on deploy and the JetStream health probe, in the primary region's VPC.

- CloudFormation custom resource (through the CDK provider framework): Create and Update apply
  the topology of `covenant.streams` with NATS_REPLICAS replicas as the NATS admin user,
  retrying while NATS comes up (a new load balancer, servers starting). A change the topology
  refuses (one that would lose data) fails the deploy, which rolls back, and says what to do.
  Delete leaves the streams alone: they hold the events.
- EventBridge schedule (every minute): connects as the admin user, checks that JetStream
  answers and every stream has a leader and its replicas, and emits `JetStreamHealthy` (1/0),
  `StreamLeaderless` (streams that exist without a leader: an election, or quorum lost) and
  `StreamMissing` (streams of the topology that do not exist: apply it).

NATS_URL may list the servers of the cluster (`nats://a:4222,nats://b:4222,...`): any live one
serves. Replicas are never lowered: a stream with more than NATS_REPLICAS is refused (the
deploy fails and says so) rather than scaled down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from covenant import streams
from covenant.config import env
from covenant.logs import adopt_shared_logs

logger = Logger(service="jetstream")
metrics = Metrics(namespace="Covenant", service="jetstream")

PHYSICAL_ID = "covenant-jetstream-topology"
RETRY_EVERY_S = 10
SECRET_MAX_AGE_S = 300


class TopologyRefused(RuntimeError):
    """The topology in code asks for a change JetStream cannot make without losing data."""


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    if "RequestType" in event:
        return on_deploy(event, context)
    return probe()


def _settings() -> tuple[str, int, dict[str, Any]]:
    url = env("NATS_URL") or streams.DEFAULT_URL
    # No default: a wrong count would rescale every stream and consumer (3 in AWS, 1 locally).
    raw_replicas = env("NATS_REPLICAS")
    if not raw_replicas:
        raise ValueError("NATS_REPLICAS is not set: the stack sets it (3 in AWS, 1 locally)")
    replicas = int(raw_replicas)
    secret_arn = env("NATS_SECRET_ARN")
    credentials: dict[str, Any] = {}
    if secret_arn:
        secret: dict[str, Any] = parameters.get_secret(
            secret_arn, transform="json", max_age=SECRET_MAX_AGE_S
        )
        credentials = {"user": secret.get("user"), "password": secret.get("password")}
    # In AWS: the CA cert-manager issued the servers' certificate from (the stack's).
    credentials["tls"] = streams.environment_tls()
    return url, replicas, credentials


def on_deploy(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID)}
    url, replicas, credentials = _settings()
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - 30
    while True:
        try:
            changes = streams.apply(url, replicas, connect_timeout=5, **credentials)
            break
        except streams.TopologyError as exc:
            if time.monotonic() + RETRY_EVERY_S > deadline:
                raise
            logger.info("JetStream not ready yet, retrying", extra={"reason": str(exc)})
            time.sleep(RETRY_EVERY_S)
    for change in changes:
        logger.info(str(change))
    refused = [change for change in changes if change.action == "refused"]
    if refused:
        raise TopologyRefused(
            "; ".join(str(change) for change in refused)
            + ". Those streams and consumers were left as they are: decide (docs/deploy.md, "
            "'JetStream topology'), then deploy again."
        )
    summary = "; ".join(str(change) for change in changes if change.action != "unchanged")
    return {"PhysicalResourceId": PHYSICAL_ID, "Data": {"Changes": summary[:2000] or "none"}}


def probe() -> dict[str, Any]:
    url, replicas, credentials = _settings()
    health = asyncio.run(_problems(url, replicas, credentials))
    for problem in health.problems:
        logger.warning("JetStream unhealthy", extra={"problem": problem})
    for name in health.leaderless:
        logger.error(
            "stream has no leader (an election, or a quorum of its servers lost): events "
            "wait in the outbox until it elects one",
            extra={"stream": name},
        )
    for name in health.missing:
        logger.error(
            "stream does not exist: apply the topology (deploy again)", extra={"stream": name}
        )
    metrics.add_metric("JetStreamHealthy", MetricUnit.Count, 0 if health.problems else 1)
    metrics.add_metric("StreamLeaderless", MetricUnit.Count, len(health.leaderless))
    metrics.add_metric("StreamMissing", MetricUnit.Count, len(health.missing))
    return {"healthy": not health.problems, "problems": health.problems}


@dataclass
class Health:
    problems: list[str] = field(default_factory=list)
    leaderless: list[str] = field(default_factory=list)  # streams that exist without a leader
    missing: list[str] = field(default_factory=list)  # streams of the topology that do not exist


async def _problems(url: str, replicas: int, credentials: dict[str, Any]) -> Health:
    health = Health()
    problems = health.problems
    try:
        client = await streams.connect(url, connect_timeout=5, **credentials)
    except streams.ConnectError as exc:
        problems.append(f"cannot connect to {streams.redact(url)}: {exc}")
        return health
    try:
        jsm = client.jsm()
        await asyncio.wait_for(jsm.account_info(), timeout=5)
        for spec in streams.STREAMS:
            try:
                info = await asyncio.wait_for(jsm.stream_info(spec.name), timeout=5)
            except NotFoundError:
                health.missing.append(spec.name)
                problems.append(f"stream {spec.name}: missing")
                continue
            except (TimeoutError, nats.errors.TimeoutError, ServiceUnavailableError):
                # JetStream answered account_info, so the stream's own leader is what is
                # silent (or answers 503): leaderless, for the probe as for the bridge.
                health.leaderless.append(spec.name)
                problems.append(f"stream {spec.name}: no leader answers")
                continue
            except Exception as exc:
                problems.append(f"stream {spec.name}: {type(exc).__name__}: {exc}")
                continue
            cluster = info.cluster
            if replicas > 1 and (cluster is None or not cluster.leader):
                health.leaderless.append(spec.name)
                problems.append(f"stream {spec.name}: no leader")
            elif cluster is not None and replicas > 1:
                current = sum(1 for peer in cluster.replicas or [] if peer.current)
                if current + 1 < replicas:
                    problems.append(
                        f"stream {spec.name}: {current + 1}/{replicas} replicas current"
                    )
    except Exception as exc:
        problems.append(f"JetStream: {type(exc).__name__}: {exc}")
    finally:
        await client.close()
    return health

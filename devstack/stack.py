"""`make dev`: start everything, apply migrations and seed data, serve, stop cleanly."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from covenant.db import ConnectionSpec, Database, Role
from covenant.regions import Region, load_regions, primary_region
from devstack import assets, consumers, realtime
from devstack.errors import DevStackError
from devstack.event_sources import (
    BackgroundTriggers,
    Queues,
    SqsEventSource,
    create_queues,
    moto_client,
    sqs_client,
)
from devstack.functions import function_environment, get_function, region_environment
from devstack.gateway import Gateway
from devstack.hop import round_trip_ms, rtt_enabled
from devstack.jwt_auth import JwtVerifier
from devstack.nats import NatsCluster, NatsServer
from devstack.postgres import PostgresCluster
from devstack.processes import free_port, require_free_ports, wait_until
from devstack.runtime import (
    FunctionConfig,
    LambdaRuntime,
    custom_resource_event,
    function_configs,
    invoke_once,
    thread_invoker,
)
from devstack.zygote import Zygote

logger = logging.getLogger("devstack.start")

if TYPE_CHECKING:  # devstack.cognito imports moto: only `make dev` needs it, not `make invoke`
    from devstack.cognito import LocalCognito, MotoServer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".local"
BRIDGE_FUNCTION = "bridge"
# The stream consumers and the fan-outs (eleven pollers) start one every quarter second, not at
# once: eleven cold starts together held the two cores (and the stack process, which serves
# moto and the gateway) for about a second just as the first clients' requests arrive. Events
# written meanwhile wait in their streams for at most those 2.75 s.
POLLERS_STAGGER_S = 0.25
BUILD_DIR = REPO_ROOT / ".local" / "build"  # caches shared by every data folder


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    port: int
    pg_port: int
    pg_replica_port: int
    nats_port: int
    nats_monitor_port: int
    database_url: str | None
    database_reader_url: str | None
    nats_url: str | None
    # Cognito: "local" (moto on moto_port), "remote" (an existing pool: COGNITO_USER_POOL_ID
    # and COGNITO_CLIENT_ID) or "off" (COVENANT_COGNITO=off: JWT routes answer 401).
    cognito: str = "local"
    moto_port: int = 5055
    sweep_every_s: float = 10.0
    cognito_user_pool_id: str | None = None
    cognito_client_id: str | None = None
    # COVENANT_NATS_NODES: 1 (default) one nats-server and R1 streams; 3 (or 5) a JetStream
    # cluster on loopback with as many replicas, as production runs it.
    nats_nodes: int = 1
    nats_cluster_port: int = 6222

    @property
    def nats_replicas(self) -> int:
        return self.nats_nodes

    @classmethod
    def from_environment(
        cls, port: int | None = None, data_dir: Path | None = None
    ) -> StackOptions:
        def number(name: str, default: int) -> int:
            raw = os.environ.get(name) or ""
            try:
                return int(raw) if raw else default
            except ValueError:
                raise DevStackError(f"{name} must be a port number, got {raw!r}") from None

        return cls(
            data_dir=data_dir or data_dir_from_env(),
            port=port or number("COVENANT_PORT", 8000),
            pg_port=number("COVENANT_PG_PORT", 15432),
            pg_replica_port=number("COVENANT_PG_REPLICA_PORT", 15433),
            nats_port=number("COVENANT_NATS_PORT", 4222),
            nats_monitor_port=number("COVENANT_NATS_MONITOR_PORT", 8222),
            database_url=os.environ.get("DATABASE_URL") or None,
            database_reader_url=os.environ.get("DATABASE_READER_URL") or None,
            nats_url=os.environ.get("NATS_URL") or None,
            cognito=_cognito_mode(),
            moto_port=number("COVENANT_MOTO_PORT", 5055),
            sweep_every_s=number("COVENANT_SWEEP_EVERY_S", 10),
            cognito_user_pool_id=os.environ.get("COGNITO_USER_POOL_ID") or None,
            cognito_client_id=os.environ.get("COGNITO_CLIENT_ID") or None,
            nats_nodes=_nats_nodes(),
            nats_cluster_port=number("COVENANT_NATS_CLUSTER_PORT", 6222),
        )

    @classmethod
    def isolated(cls, data_dir: Path, **overrides: Any) -> StackOptions:
        """A stack of its own (tests, benchmarks): `data_dir`, free ports, no outside server."""
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "port": free_port(),
            "pg_port": free_port(),
            "pg_replica_port": free_port(),
            "nats_port": free_port(),
            "nats_monitor_port": free_port(),
            "database_url": None,
            "database_reader_url": None,
            "nats_url": None,
            "moto_port": free_port(),
        }
        return cls(**(values | overrides))


def isolated_environment(data_dir: Path) -> dict[str, str]:
    """This process's variables for a `make dev` of its own (tests, benchmarks): `data_dir`,
    free ports, no outside database or NATS."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_READER_URL", "NATS_URL")
    }
    environment.update(
        COVENANT_DATA_DIR=str(data_dir),
        COVENANT_PORT=str(free_port()),
        COVENANT_PG_PORT=str(free_port()),
        COVENANT_PG_REPLICA_PORT=str(free_port()),
        COVENANT_NATS_PORT=str(free_port()),
        COVENANT_NATS_MONITOR_PORT=str(free_port()),
        COVENANT_NATS_CLUSTER_PORT=str(free_port()),
        COVENANT_MOTO_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return environment


def _nats_nodes() -> int:
    raw = (os.environ.get("COVENANT_NATS_NODES") or "1").strip()
    if raw not in ("1", "3", "5"):
        raise DevStackError(
            f"COVENANT_NATS_NODES must be 1, 3 or 5 (a JetStream cluster needs a majority), "
            f"got {raw!r}"
        )
    return int(raw)


def _cognito_mode() -> str:
    if (os.environ.get("COVENANT_COGNITO") or "").lower() == "off":
        return "off"
    pool, client = os.environ.get("COGNITO_USER_POOL_ID"), os.environ.get("COGNITO_CLIENT_ID")
    if pool and client:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d_\w+", pool):
            raise DevStackError(f"COGNITO_USER_POOL_ID {pool!r} is not a user pool id")
        return "remote"
    if pool or client:
        raise DevStackError(
            "set both COGNITO_USER_POOL_ID and COGNITO_CLIENT_ID to use an existing user pool, "
            "or neither for the local one"
        )
    return "local"


def state_file(data_dir: Path) -> Path:
    return data_dir / "state.json"


def data_dir_from_env() -> Path:
    return Path(os.environ.get("COVENANT_DATA_DIR") or DEFAULT_DATA_DIR)


def read_state(data_dir: Path | None = None) -> dict[str, str] | None:
    """What a running `make dev` published about itself (endpoints), or None; by default the
    one whose data folder is COVENANT_DATA_DIR (else .local), as `make dev` chose it."""
    try:
        state: dict[str, str] = json.loads(
            state_file(data_dir or data_dir_from_env()).read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return None
    return state


@contextlib.contextmanager
def _single_instance(
    data_dir: Path, advice: str = "Use that one, or stop it with Ctrl-C in its terminal."
) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / "devstack.lock"
    handle: IO[str] = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        state = read_state(data_dir) or {}
        raise DevStackError(
            f"the Covenant dev stack is already running from {data_dir} "
            f"(pid {state.get('pid', '?')}, {state.get('gateway_url', 'gateway starting')}). "
            f"{advice}"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class DevStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.postgres: PostgresCluster | None = None
        self.nats: NatsServer | NatsCluster | None = None
        self.gateway: Gateway | None = None
        self.moto: MotoServer | None = None
        self.cognito: LocalCognito | None = None
        self.verifier: JwtVerifier | None = None
        self.endpoints: dict[str, str] = {}
        self.triggers: BackgroundTriggers | None = None
        self.consumers: consumers.ConsumerLoops | None = None
        self.fanouts: list[consumers.ConsumerLoops] = []
        self.runtime: LambdaRuntime | None = None
        self._sqs: Any = None
        self._started_at = time.monotonic()

    def _phase(self, what: str) -> None:
        """A line of the start's timeline (bench/dev_start.py reads them)."""
        logger.info("%s at %.2f s", what, time.monotonic() - self._started_at)

    def stop_leftovers(self, *, even_replaced: bool = False) -> None:
        """Servers of this data folder that a killed stack (SIGKILL, a crash) left running would
        hold their ports; with the folder's lock held, no running stack owns them: stop them.
        `even_replaced`: also those DATABASE_URL / NATS_URL replace now (before a reset)."""
        o = self.options
        with contextlib.suppress(FileNotFoundError):
            state_file(o.data_dir).unlink()  # the killed stack's endpoints
        stopped: list[str] = []
        if o.database_url is None or even_replaced:
            cluster = PostgresCluster(o.data_dir / "postgres", o.pg_port, o.pg_replica_port)
            stopped += cluster.stop_leftovers()
        if o.nats_url is None or even_replaced:
            stopped += NatsServer(
                o.data_dir / "nats", o.nats_port, o.nats_monitor_port
            ).stop_leftover()
            stopped += self._nats_cluster(5).stop_leftovers()  # any node count it ran with
        if stopped:
            print(
                f"Stopped {', '.join(stopped)}, left running from {o.data_dir} by a stack that "
                "ended without Ctrl-C.",
                flush=True,
            )

    def check_ports(self) -> None:
        """Every port the stack will listen on is free, else one error names each busy one."""
        o = self.options
        wanted = [(o.port, "the gateway", "COVENANT_PORT")]
        if o.database_url is None:
            wanted += [
                (o.pg_port, "PostgreSQL primary", "COVENANT_PG_PORT"),
                (o.pg_replica_port, "PostgreSQL replica", "COVENANT_PG_REPLICA_PORT"),
            ]
        if o.nats_url is None:
            for i in range(o.nats_nodes):
                node = f" (node {i + 1})" if o.nats_nodes > 1 else ""
                wanted += [
                    (o.nats_port + i, f"nats-server{node}", "COVENANT_NATS_PORT"),
                    (
                        o.nats_monitor_port + i,
                        f"nats monitoring{node}",
                        "COVENANT_NATS_MONITOR_PORT",
                    ),
                ]
                if o.nats_nodes > 1:
                    wanted.append(
                        (
                            o.nats_cluster_port + i,
                            f"nats cluster routes{node}",
                            "COVENANT_NATS_CLUSTER_PORT",
                        )
                    )
        wanted.append((o.moto_port, "moto (Cognito, SQS)", "COVENANT_MOTO_PORT"))
        require_free_ports(wanted)

    def start(self) -> None:
        o = self.options
        self._started_at = time.monotonic()
        # The environments' fork server imports the functions' libraries while the servers
        # start; the custom resources' environments fork from it too.
        self.runtime = LambdaRuntime(
            function_configs(),
            self._function_environment,
            background=(BRIDGE_FUNCTION, realtime.FANOUT_FUNCTION, *consumers.CONSUMER_FUNCTIONS),
        )
        self.runtime.start_zygote()
        # PostgreSQL and NATS start (mostly waiting on their processes) while moto starts in
        # this thread; each custom resource (a cold start of its own environment) runs as soon
        # as what it needs is up, while this thread sets up moto's resources.
        with ThreadPoolExecutor(max_workers=4) as starting:
            database = starting.submit(self._start_postgres)
            messaging = starting.submit(self._start_nats)
            self._start_moto()
            self._phase("moto started")
            resources = [
                starting.submit(lambda: self._migrate(database.result()[0])),
                starting.submit(lambda: self._apply_streams(messaging.result())),
            ]
            self._start_cognito()
            queues = self._create_wakeup_queue()
            self._provision_consumers()
            self._phase("Cognito, queues and the consumers' tables provisioned")
            for resource in resources:
                resource.result()
            self._phase("migrator and JetStream topology applied")
        writer_url, reader_url = database.result()
        self.endpoints |= {
            "DATABASE_URL": writer_url,
            "DATABASE_READER_URL": reader_url,
            "NATS_URL": messaging.result(),  # a cluster's servers, comma-separated
            "NATS_REPLICAS": str(o.nats_replicas),
        }
        self._wait_for_replica(writer_url, reader_url)
        self._phase("replica caught up")
        explorer_assets = self._explorer_assets()
        self.gateway = Gateway(
            o.port,
            verifier=self.verifier,
            assets=explorer_assets,
            runtime=self.runtime,
            hops=self._hop_round_trips(),
        )
        self.gateway.serve_in_thread()
        self.endpoints.update(realtime.provision(self.endpoints, self.gateway.url))
        self._phase("gateway listening")
        # The API's environments first: /health in every region starts them (cold starts),
        # then the bridge's triggers, the consumers and the fan-outs start theirs in the
        # background of a stack that already answers (eleven cold starts at once would hold
        # the two cores for several seconds before any region could answer).
        self._warm_up()
        self._phase("every region healthy")
        self._start_bridge_triggers(queues)
        self._start_consumers()
        self._phase("bridge, consumers and fan-outs started")
        state_file(o.data_dir).write_text(
            json.dumps(
                {
                    "pid": str(os.getpid()),
                    "gateway_url": self.gateway.url,
                    **self.endpoints,
                    **{f"HOP_URL_{code}": proxy.url for code, proxy in self.gateway.hops.items()},
                }
            ),
            encoding="utf-8",
        )

    def _start_postgres(self) -> tuple[str, str]:
        """The writer's and the reader's URLs: the local primary and replica, started, or
        DATABASE_URL / DATABASE_READER_URL."""
        o = self.options
        if o.database_url is not None:
            return o.database_url, o.database_reader_url or o.database_url
        self.postgres = PostgresCluster(o.data_dir / "postgres", o.pg_port, o.pg_replica_port)
        self.postgres.start()
        self._phase("PostgreSQL primary and replica started")
        return self.postgres.primary.url, self.postgres.replica.url

    def _start_nats(self) -> str:
        """The NATS URL: the local server (or cluster), started, or NATS_URL."""
        o = self.options
        if o.nats_url is not None:
            return o.nats_url
        if o.nats_nodes > 1:
            self.nats = self._nats_cluster(o.nats_nodes)
        else:
            self.nats = NatsServer(o.data_dir / "nats", o.nats_port, o.nats_monitor_port)
        self.nats.start()
        self._phase("nats-server started")
        return self.nats.url

    def _zygote(self) -> Zygote | None:
        return self.runtime.start_zygote() if self.runtime is not None else None

    def _nats_cluster(self, nodes: int) -> NatsCluster:
        o = self.options
        return NatsCluster(
            o.data_dir / "nats-cluster",
            nodes,
            o.nats_port,
            o.nats_monitor_port,
            o.nats_cluster_port,
        )

    def _function_environment(self, config: FunctionConfig, region: Region) -> dict[str, str]:
        """A function's configuration in `region`, as the CDK app sets it: a secondary has no
        writer and reaches the primary's functions through its hop."""
        assert self.gateway is not None
        return region_environment(
            config.spec,
            region,
            self.endpoints,
            self.gateway.hop_url(region.code),
            self.gateway.url,
        )

    @staticmethod
    def _hop_round_trips() -> dict[str, float]:
        """Each secondary's round-trip time to the primary, from cdk.json; 0 with
        COVENANT_HOP_RTT=off."""
        primary = primary_region()
        return {
            region.code: round_trip_ms(region, primary) if rtt_enabled() else 0.0
            for region in load_regions()
            if not region.primary
        }

    def _warm_up(self) -> None:
        """Asks every region's /health once, as a client would: the stack is ready when all
        six answer (each starts its first mobile environment: a cold start)."""
        assert self.gateway is not None
        url = self.gateway.url

        def health(code: str) -> tuple[str, int]:
            try:
                with urllib.request.urlopen(f"{url}/{code}/health", timeout=30) as answer:  # noqa: S310
                    return code, answer.status
            except urllib.error.HTTPError as error:
                return code, error.code
            except OSError:
                return code, 0

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = dict(pool.map(health, (r.code for r in load_regions())))
        unhealthy = {code: status for code, status in answers.items() if status != 200}
        if unhealthy:
            raise DevStackError(f"/health did not answer 200 in every region: {unhealthy}")

    def _migrate(self, writer_url: str) -> None:
        """Migrations and seed data, by the `migrator` function in an environment of its own,
        as the deploy's custom resource runs it: the master user's credentials from a secret in
        (moto's) Secrets Manager, over TLS that verifies the server's certificate."""
        region = primary_region()
        with contextlib.ExitStack() as running:
            if self.postgres is not None:
                front = running.enter_context(self.postgres.tls_front())
                secret = self.postgres.master_secret(front.port)
                tls = f"sslmode=verify-full&sslrootcert={self.postgres.ca_file}"
            else:
                secret, tls = master_secret_from_url(writer_url)
            self._run_migrator(region, secret, tls)

    def _run_migrator(self, region: Region, secret: dict[str, Any], tls: str) -> None:
        assert self.moto is not None
        config = function_configs()["migrator"]
        secret_arn = _store_secret(
            self.moto.endpoint_url, region.aws_region, "covenant-local/database-master", secret
        )
        environment = {
            **function_environment(config.spec, region, {}),
            "DATABASE_SECRET_ARN": secret_arn,
            "DATABASE_TLS": tls,
            # The functions sign in as the local superuser (no IAM authentication here), so
            # no login roles are made for them: DATABASE_LOGIN_USERS is empty.
            "DATABASE_LOGIN_USERS": "",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto.endpoint_url,
            "AWS_DEFAULT_REGION": region.aws_region,  # Lambda sets it in every environment
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
        }
        result = invoke_once(
            config,
            region,
            custom_resource_event("Custom::CovenantMigrations", {}),
            environment,
            self._zygote(),
        )
        if result.function_error is not None:
            document = result.error_document
            raise DevStackError(
                "the migrator failed: "
                f"{document.get('errorType', 'error')}: {document.get('errorMessage', document)}"
            )

    def _apply_streams(self, nats_url: str) -> None:
        """The JetStream streams and consumers, with one replica per node (the deploy applies
        three), by the `jetstream` function in an environment of its own, as the deploy's custom
        resource runs it."""
        region = primary_region()
        config = function_configs()["jetstream"]
        # It never lowers a count a stream has (an R3 cluster given NATS_URL is refused, not
        # scaled down to R1).
        endpoints = {"NATS_URL": nats_url, "NATS_REPLICAS": str(self.options.nats_replicas)}
        environment = function_environment(config.spec, region, endpoints)
        result = invoke_once(
            config,
            region,
            custom_resource_event("Custom::JetStreamTopology", {}),
            environment,
            self._zygote(),
        )
        if result.function_error is not None:
            document = result.error_document
            raise DevStackError(
                f"cannot apply the JetStream topology at {nats_url}: "
                f"{document.get('errorMessage', document)}; if it differs in ways that would "
                "lose data (fewer replicas than the streams have: COVENANT_NATS_NODES, "
                "NATS_REPLICAS), fix or `make reset` the server, then run `make dev` again"
            )

    def _create_wakeup_queue(self) -> Queues:
        """The bridge's wake-up queue (with its dead-letter queue) in moto's SQS; the functions
        send to it as they do in AWS."""
        assert self.moto is not None
        region = primary_region()
        client = sqs_client(self.moto.endpoint_url, region.aws_region)
        queues = create_queues(client)
        self.endpoints.update(
            OUTBOX_WAKEUP_QUEUE_URL=queues.url, SQS_ENDPOINT_URL=self.moto.endpoint_url
        )
        self._sqs = client
        return queues

    def _start_bridge_triggers(self, queues: Queues) -> None:
        """The bridge runs in the primary region, on its SQS trigger and its schedule."""
        assert self.runtime is not None
        source = SqsEventSource(
            self._sqs,
            queues,
            get_function(BRIDGE_FUNCTION),
            primary_region(),
            self.endpoints,
            invoker=thread_invoker(self.runtime),
        )
        self.triggers = BackgroundTriggers(source, schedule_every_s=self.options.sweep_every_s)
        self.triggers.start()

    def _provision_consumers(self) -> None:
        """The consumers' AWS side in moto (the audit trail's table), known to every function."""
        assert self.moto is not None
        self.endpoints.update(
            consumers.provision(self.endpoints, self.moto.endpoint_url, primary_region())
        )

    def _start_consumers(self) -> None:
        """The JetStream consumers run in the primary region, each pulling without pause."""
        assert self.runtime is not None
        names = consumers.CONSUMER_FUNCTIONS
        self.consumers = consumers.ConsumerLoops(
            [get_function(name) for name in names],
            primary_region(),
            thread_invoker(self.runtime),
            stagger_s=POLLERS_STAGGER_S,
        )
        self.consumers.start()
        # The real-time fan-out: one loop per served region (devstack.realtime).
        self.fanouts = realtime.fanout_loops(
            thread_invoker(self.runtime),
            first_run_after_s=len(names) * POLLERS_STAGGER_S,
            stagger_s=POLLERS_STAGGER_S,
        )
        for loop in self.fanouts:
            loop.start()

    def _explorer_assets(self) -> Path | None:
        """GraphiQL served locally (no internet needed); without npm the explorer page falls
        back to the public CDN."""
        try:
            modules = assets.install(BUILD_DIR)
        except DevStackError as exc:
            print(f"note: {exc}; the explorer will load GraphiQL from the public CDN", flush=True)
            return None
        self.endpoints["GRAPHQL_EXPLORER_ASSETS_URL"] = assets.ASSETS_PATH
        return modules

    def stop(self) -> None:
        if self.triggers is not None:
            self.triggers.stop()
            self.triggers = None
        if self.consumers is not None:
            self.consumers.stop()
            self.consumers = None
        for loop in self.fanouts:
            loop.stop()
        self.fanouts = []
        if self.gateway is not None:
            self.gateway.shutdown()  # and every Lambda environment
            self.gateway = None
        if self.runtime is not None:
            self.runtime.stop_zygote()  # a start that failed before the gateway ran
            self.runtime = None
        with contextlib.suppress(FileNotFoundError):
            state_file(self.options.data_dir).unlink()
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def _start_moto(self) -> MotoServer:
        """moto serves the AWS APIs the functions call locally: Cognito and SQS."""
        from devstack.cognito import MotoServer

        if self.moto is None:
            self.moto = MotoServer(self.options.moto_port)
            self.moto.start()
        return self.moto

    def _start_cognito(self) -> None:
        """The user pool the JWT authorizer trusts, and its settings in the functions'
        environment (the mobile function's auth routes call Cognito with them)."""
        from devstack.cognito import issuer_for, provision

        o = self.options
        if o.cognito == "local":
            moto = self._start_moto()
            self.cognito = provision(moto.endpoint_url)
            pool_id, client_id, region = (
                self.cognito.user_pool_id,
                self.cognito.client_id,
                self.cognito.region,
            )
            jwks_url = self.cognito.jwks_url
            self.endpoints.update(self.cognito.environment())
        elif o.cognito == "remote":
            assert o.cognito_user_pool_id is not None and o.cognito_client_id is not None
            pool_id, client_id = o.cognito_user_pool_id, o.cognito_client_id
            region = pool_id.split("_", 1)[0]
            jwks_url = f"{issuer_for(region, pool_id)}/.well-known/jwks.json"
            self.endpoints.update(
                COGNITO_USER_POOL_ID=pool_id, COGNITO_CLIENT_ID=client_id, COGNITO_REGION=region
            )
        else:
            return
        self.verifier = JwtVerifier(
            issuer=issuer_for(region, pool_id), audience=client_id, jwks_url=jwks_url
        )

    def _wait_for_replica(self, writer_url: str, reader_url: str) -> None:
        """Seed data is on the primary; wait until the replica has replayed it."""
        if writer_url == reader_url:
            return
        primary = Database(Role.WRITER, writer_url, statement_timeout_ms=5000, connect_timeout_s=3)
        replica = Database(Role.READER, reader_url, statement_timeout_ms=5000, connect_timeout_s=3)
        with primary.session() as session:
            # Flushed, not inserted: WAL past the last flush (a background record) is not
            # streamed until something flushes it, which on an idle primary can take long.
            target = session.scalar("SELECT pg_current_wal_flush_lsn()::text")
        primary.close()

        def caught_up() -> bool:
            with replica.session() as session:
                return bool(
                    session.scalar(
                        "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=target
                    )
                )

        wait_until(caught_up, 30, "the replica to replay the seed data")
        replica.close()


def master_secret_from_url(writer_url: str) -> tuple[dict[str, Any], str]:
    """The master secret and TLS setting for a database given by DATABASE_URL: its own
    credentials, and its TLS, which the migrator requires as in AWS."""
    spec = ConnectionSpec.from_url(writer_url)
    if spec.sslmode == "disable" or spec.iam_auth:
        raise DevStackError(
            "the migrator signs in to DATABASE_URL with a password over TLS, as in AWS: add "
            "sslmode=require (or verify-full&sslrootcert=<CA file>) to DATABASE_URL"
        )
    tls = f"sslmode={spec.sslmode}" + (
        f"&sslrootcert={spec.sslrootcert}" if spec.sslrootcert else ""
    )
    secret = {
        "engine": "postgres",
        "host": spec.host,
        "port": spec.port,
        "username": spec.user,
        "password": spec.password or "",
        "dbname": spec.database,
    }
    return secret, tls


def _store_secret(endpoint_url: str, aws_region: str, name: str, value: dict[str, Any]) -> str:
    """`value` as a JSON secret in (moto's) Secrets Manager; returns its ARN. A secret of that
    name already there (moto's state is per process: a second stack started in the same process,
    as bench.bridge does) gets the value as its new version, as a rotation would."""
    client = moto_client("secretsmanager", endpoint_url, aws_region)
    try:
        created = client.create_secret(Name=name, SecretString=json.dumps(value))
    except client.exceptions.ResourceExistsException:
        updated = client.put_secret_value(SecretId=name, SecretString=json.dumps(value))
        return str(updated["ARN"])
    return str(created["ARN"])


def run(options: StackOptions) -> None:
    """Runs the stack in the foreground until Ctrl-C (SIGINT) or SIGTERM."""
    with _single_instance(options.data_dir):
        stack = DevStack(options)
        stack.stop_leftovers()
        stack.check_ports()
        # Plain flags, not threading.Event: Event.set() in a signal handler takes the lock that
        # Event.wait() in the main thread may hold at that instant, and never returns.
        stopping: list[int] = []
        started = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if not started.is_set() and not stopping:
                # Not interrupted midway: an initdb or base backup cut short would leave a data
                # folder that never starts again.
                print("\nStopping once the start completes ...", flush=True)
            stopping.append(signum)

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            print("Starting the Covenant local stack ...", flush=True)
            stack.start()
            started.set()
            if not stopping:
                _print_banner(stack)
            while not stopping:
                time.sleep(0.2)  # a signal ends the sleep at once; its handler runs here
            print("\nStopping ...", flush=True)
        finally:
            stack.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("Stopped every process the stack started.", flush=True)


def reset(options: StackOptions) -> None:
    """Deletes the data folder (PostgreSQL, NATS), so the next start begins fresh; refused
    while a stack runs from it. The shared build cache (.local/build) is kept."""
    data_dir = options.data_dir
    if not data_dir.exists():
        print(f"Nothing to reset: {data_dir} does not exist.", flush=True)
        return
    with _single_instance(data_dir, "Stop it with Ctrl-C in its terminal, then reset."):
        DevStack(options).stop_leftovers(even_replaced=True)
        for entry in data_dir.iterdir():
            if entry.resolve() == BUILD_DIR.resolve() or entry.name == "devstack.lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if data_dir.resolve() != DEFAULT_DATA_DIR.resolve():
        (data_dir / "devstack.lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            data_dir.rmdir()
    print(f"Reset {data_dir}: the next start creates fresh data.", flush=True)


def reset_command(data_dir: Path) -> str:
    if data_dir.resolve() == DEFAULT_DATA_DIR.resolve():
        return "make reset"
    return f"COVENANT_DATA_DIR={data_dir} make reset"


def _print_banner(stack: DevStack) -> None:
    assert stack.gateway is not None
    base = stack.gateway.url
    lines = ["", "Covenant local stack is ready.", ""]
    for region in load_regions():
        role = "primary" if region.primary else "secondary"
        lines.append(f"  {region.code} ({region.aws_region}, {role}): {base}/{region.code}/health")
    lines += [
        "",
        f"  PostgreSQL writer: {_redact(stack.endpoints['DATABASE_URL'])}",
        f"  PostgreSQL reader: {_redact(stack.endpoints['DATABASE_READER_URL'])}",
        f"  NATS JetStream:    {stack.endpoints['NATS_URL']}"
        + (
            f" ({stack.options.nats_nodes}-node cluster, R{stack.options.nats_replicas})"
            if stack.options.nats_nodes > 1
            else ""
        ),
        f"  Data folder:       {stack.options.data_dir} "
        f"(reset: {reset_command(stack.options.data_dir)})",
        *_cognito_banner(stack),
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def _cognito_banner(stack: DevStack) -> list[str]:
    e = stack.endpoints
    if stack.cognito is not None:
        return [
            f"  Cognito (moto):    {stack.cognito.endpoint_url} ({stack.cognito.region})",
            f"    user pool:       {stack.cognito.user_pool_id}",
            f"    app client:      {stack.cognito.client_id}",
            f"    users:           {', '.join(u.email for u in stack.cognito.users)}",
            "                     (passwords in README)",
        ]
    if stack.verifier is not None:
        return [
            f"  Cognito:           user pool {e['COGNITO_USER_POOL_ID']}, "
            f"app client {e['COGNITO_CLIENT_ID']}",
        ]
    return ["  Cognito:           off (COVENANT_COGNITO=off): routes that need a token answer 401"]


def _redact(url: str) -> str:
    from covenant.db import ConnectionSpec

    return ConnectionSpec.from_url(url).redacted()

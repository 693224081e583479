"""The real-time fan-out's benchmark: `.venv/bin/python -m bench.realtime` from the repository
root.

It starts a nats-server, moto (the six regions' connection tables) and one HTTP server standing
in for the six regions' `@connections` APIs (it timestamps every message it receives), then for
1, 100 and 1 000 subscribers spread over the six regions (each opened and subscribed through
the realtime handler, as API Gateway invokes it):

- subject: `--events` project changes published to COVENANT as the bridge publishes them
  (`Nats-Msg-Id`), and the six regions' fan-outs (one thread each, the deployed handler, in a
  process of their own started for the round) until idle: per message, published -> received
  by `@connections`, p50 and p99, and messages received per second from the first publish to
  the last message.
- with `--compare CHECKOUT` (e.g. `git worktree add /tmp/base main`), the same with that
  checkout's fan-out (its `functions/` and shared layer first on PYTHONPATH), right after this
  tree's, on the same subscriptions.
- floor: the same number of messages, of the same size, posted to the same server by six
  threads (one per region) with the same boto3 client, without the fan-out (no JetStream, no
  store, no GraphQL execution): what pushing over already-open connections costs here.

Floor and subjects alternate (`--rounds` times each) so that the machine's load hits both
alike. The connection from `@connections` to the client's socket (API Gateway's, or the local
gateway's emulation) is not in either figure, nor the outbox -> JetStream hop (bench.bridge
measures that). It measures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats

from covenant.aws import client as aws_client
from covenant.config import environment
from covenant.domain_events import change_events
from covenant.regions import get_region, load_regions, primary_region
from covenant.streams import CONSUMERS, apply_topology
from devstack.cognito import MotoServer
from devstack.functions import LocalContext, function_environment, get_function, load_handler
from devstack.nats import NatsServer
from devstack.processes import free_port
from devstack.realtime import provision
from realtime import store

_OUT = sys.stdout


def say(message: str = "") -> None:
    print(message, file=_OUT, flush=True)


QUERY = "subscription { projectChanged { eventId position action project { id name status } } }"


class Receiver:
    """The `@connections` stand-in: when each message arrived, by connection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[float, str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.received.append((time.time(), self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            taken, self.received = self.received, []
        return taken


@contextmanager
def servers() -> Iterator[tuple[dict[str, str], Receiver]]:
    folder = Path(tempfile.mkdtemp(prefix="covenant-bench-rt-"))
    nats_server = NatsServer(folder / "nats", free_port(), free_port())
    moto = MotoServer(free_port())
    nats_server.start()
    moto.start()
    receiver = Receiver()
    try:
        endpoints = {"NATS_URL": nats_server.url, "DYNAMODB_ENDPOINT_URL": moto.endpoint_url}
        endpoints.update(provision(endpoints, receiver.url))
        yield endpoints, receiver
    finally:
        receiver.server.shutdown()
        moto.stop()
        nats_server.stop()


def reset_stream(nats_url: str) -> None:
    async def go() -> None:
        client = await nats.connect(nats_url)
        try:
            js = client.jetstream()
            await apply_topology(js, 1)
            await js.purge_stream("COVENANT")
            for spec in CONSUMERS:
                if spec.durable_name.startswith("REALTIME_"):
                    await js.delete_consumer("COVENANT", spec.durable_name)
                    await js.add_consumer("COVENANT", spec.config(1))
        finally:
            await client.close()

    asyncio.run(go())


def invoke(name: str, region_code: str, event: dict[str, Any], endpoints: dict[str, str]) -> Any:
    function = get_function(name)
    region = get_region(region_code) if name == "realtime" else primary_region()
    with environment(function_environment(function, region, endpoints)):
        return load_handler(function)(event, LocalContext(function, region, 300))


def subscribe(count: int, endpoints: dict[str, str]) -> None:
    regions = [r.code for r in load_regions()]
    for i in range(count):
        region = regions[i % len(regions)]
        context = {
            "connectionId": f"bench{uuid.uuid4().hex[:12]}=",
            "connectedAt": int(time.time() * 1000),
            "requestId": uuid.uuid4().hex,
            "stage": region,
        }
        headers = {"Sec-WebSocket-Protocol": "graphql-transport-ws"}
        for route, body in (
            ("$connect", None),
            ("$default", {"type": "connection_init"}),
            ("$default", {"id": "s", "type": "subscribe", "payload": {"query": QUERY}}),
        ):
            event: dict[str, Any] = {"requestContext": {**context, "routeKey": route}}
            if body is None:
                event["headers"] = headers
            else:
                event["body"] = json.dumps(body)
            invoke("realtime", region, event, endpoints)


def publish(nats_url: str, events: int) -> dict[str, float]:
    """Publishes as the bridge does, 20 a second; the time each was published, by event id."""
    sent: dict[str, float] = {}

    async def go() -> None:
        client = await nats.connect(nats_url)
        try:
            js = client.jetstream()
            for i in range(events):
                row = {"id": str(uuid.uuid4()), "name": f"bench {i}", "status": "active"}
                change = change_events(
                    function="graphql",
                    region="iad",
                    actor={"sub": "bench", "roles": ["editor"]},
                    request_id="bench",
                    collection="projects",
                    action="updated",
                    row=row,
                ).change
                sent[change.id] = time.time()
                await js.publish(
                    change.type, change.to_json().encode(), headers={"Nats-Msg-Id": change.id}
                )
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    asyncio.run(go())
    return sent


# The six regions' fan-outs, as `make dev` runs them, in a process of their own (its
# PYTHONPATH picks the checkout whose code runs); "ready" once the handler is imported.
_FAN_OUTS = """
import os, threading
from covenant.config import environment
from covenant.regions import load_regions, primary_region
from devstack.functions import LocalContext, function_environment, get_function, load_handler
spec, region = get_function("fanout"), primary_region()
with environment(function_environment(spec, region, dict(os.environ))):
    handler = load_handler(spec)
print("ready", flush=True)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
def run(code):
    handler({"region": code}, LocalContext(spec, region, 300))
with environment(function_environment(spec, region, dict(os.environ))):
    threads = [threading.Thread(target=run, args=(r.code,)) for r in load_regions()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


def code_path(checkout: str | None) -> str:
    """PYTHONPATH running another checkout's functions, shared layer and devstack (this
    tree's editable install comes after it)."""
    if checkout is None:
        return ""
    root = Path(checkout).resolve()
    return os.pathsep.join(
        str(p) for p in (root / "functions", root / "layers/shared/python", root)
    )


def fan_out(endpoints: dict[str, str], checkout: str | None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **endpoints,
        "CONSUMER_IDLE_EXIT_S": "3",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONPATH": os.pathsep.join(
            p for p in (code_path(checkout), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _FAN_OUTS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the fan-outs did not start")
    return process


def subject(
    endpoints: dict[str, str],
    receiver: Receiver,
    events: int,
    subscribers: int,
    checkout: str | None = None,
) -> dict[str, float]:
    receiver.take()
    fanouts = fan_out(endpoints, checkout)
    time.sleep(1)  # the six runs connected and pulling, as under make dev
    sent = publish(endpoints["NATS_URL"], events)
    fanouts.wait()
    # A run that ended on a failed batch (a store call timed out on a loaded machine) is
    # followed by the next, as make dev's loop and AWS's schedule do: count what they post.
    for _ in range(3):
        with receiver.lock:
            if len(receiver.received) >= events * subscribers:
                break
        fan_out(endpoints, checkout).wait()
    latencies, last = [], 0.0
    for at, _, body in receiver.take():
        event_id = json.loads(body)["payload"]["data"]["projectChanged"]["eventId"]
        latencies.append((at - sent[event_id]) * 1000)
        last = max(last, at)
    return _figures(latencies, min(sent.values()), last)


def floor(endpoints: dict[str, str], receiver: Receiver, messages: int) -> dict[str, float]:
    """The same messages posted straight to @connections, six threads (regions)."""
    receiver.take()
    body = {"id": "s", "type": "next", "payload": {"data": {"projectChanged": {"x": "y" * 200}}}}
    regions = list(load_regions())
    sent: dict[int, float] = {}

    def post(index: int) -> None:
        region = regions[index]
        api = aws_client(
            "apigatewaymanagementapi",
            region.aws_region,
            f"{endpoints['WEBSOCKET_MANAGEMENT_BASE_URL']}/{region.code}",
        )
        for n in range(index, messages, len(regions)):
            sent[n] = time.time()
            api.post_to_connection(ConnectionId=f"c{n}", Data=json.dumps({**body, "n": n}).encode())

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(regions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = receiver.take()
    latencies = [(at - sent[json.loads(b)["n"]]) * 1000 for at, _, b in got]
    return _figures(latencies, min(sent.values()), max(at for at, _, _ in got))


def _figures(latencies: list[float], first: float, last: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "messages": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "per_s": len(ordered) / max(last - first, 1e-9),
    }


def clear_tables(endpoints: dict[str, str], only: str = "") -> None:
    with environment(endpoints):
        for region in load_regions():
            table = store.Store(store.client(region.aws_region))
            for item in list(table.all_items()):
                if not item["item"]["S"].startswith(only):
                    continue
                key = {"connectionId": item["connectionId"], "item": item["item"]}
                table.dynamodb.delete_item(TableName=table.name, Key=key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realtime",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=20, help="changes per round (20 a second)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--subscribers", default="1,100,1000", help="comma-separated counts")
    parser.add_argument(
        "--compare",
        metavar="CHECKOUT",
        help="also run the fan-out of another checkout (git worktree add), alternating",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave through the finally blocks
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    columns = ("messages", "p50 ms", "p99 ms", "msg/s")
    say(f"{'subscribers':>11}{'round':>6}{'':>9}" + "".join(f"{c:>9}" for c in columns))
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),  # the handlers' metrics and logs
        servers() as (endpoints, receiver),
    ):
        for count in (int(n) for n in args.subscribers.split(",")):
            clear_tables(endpoints)
            reset_stream(endpoints["NATS_URL"])
            subscribe(count, endpoints)
            for round_ in range(1, args.rounds + 1):
                sides = [("floor", floor(endpoints, receiver, count * args.events))]
                sides.append(("fan-out", subject(endpoints, receiver, args.events, count)))
                if args.compare:
                    clear_tables(endpoints, only="cur#")  # cursor items the older code trips on
                    compared = subject(endpoints, receiver, args.events, count, args.compare)
                    sides.append(("compared", compared))
                for what, figures in sides:
                    say(
                        f"{count:>11}{round_:>6}{what:>9}{int(figures['messages']):>9}"
                        f"{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
                        f"{figures['per_s']:>9.0f}"
                    )


if __name__ == "__main__":
    main()

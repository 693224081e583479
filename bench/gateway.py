"""The local gateway and Lambda runtime against the handler in-process (issue: local Lambda
runtime), side by side in one run:

1. overhead per request at concurrency 1: `POST /ams/graphql` `{ sectors { id name } }` over
   one keep-alive connection through the gateway (HTTP parsing, the API Gateway event, the
   pipe to the execution environment and back) against the same handler called in-process
   with the same event; target: at most 1 ms added at p50;
2. requests per second at concurrency 8 through the gateway (8 environments) against 8
   processes calling the handler in-process in a loop (the same number of environments,
   nothing in between); target: at least 0.8x.

The gateway runs in a process of its own (as under `make dev`); the load comes from this
process (Python's http.client and aiohttp), on the same 2 cores: the throughput ratio counts
the client's CPU against the gateway, the in-process baseline has no client at all.

Starts its own PostgreSQL primary + replica in a temporary folder. Measures only.

    .venv/bin/python -m bench.gateway [--requests 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import uvloop

QUERIES = {
    # The smallest request: the gateway's share is largest.
    "sectors": "{ sectors { id name } }",
    # A page a client asks for: 20 projects of a region with their sector and country.
    "project page": (
        '{ projects(first: 20, filter: {region: "ams"}) { totalCount nodes { id name status '
        "budgetUsd progress sector { name } country { name } } } }"
    ),
}
REGION = "ams"
CONCURRENCY = 8


def say(message: str = "") -> None:
    print(message, flush=True)


def _environment(endpoints: dict[str, str]) -> dict[str, str]:
    from covenant.regions import get_region
    from devstack.functions import function_environment, get_function

    return function_environment(get_function("graphql"), get_region(REGION), endpoints)


def _handler(endpoints: dict[str, str]) -> Any:
    os.environ.update(_environment(endpoints))
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    return importlib.import_module("graphql_api.handler").handler


class _Context:
    function_name = "covenant-ams-graphql"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:000000000000:function:covenant-ams-graphql"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 15_000


def _event(query: str) -> dict[str, Any]:
    from bench.query_mix import make_event

    return make_event(query)


def in_process_latencies(endpoints: dict[str, str], query: str, requests: int) -> list[float]:
    handler, event, sink = _handler(endpoints), _event(query), io.StringIO()
    times: list[float] = []
    with contextlib.redirect_stdout(sink):
        for n in range(requests + 50):
            started = time.perf_counter()
            answer = handler(event, _Context())
            elapsed = time.perf_counter() - started
            assert answer["statusCode"] == 200, answer
            if n >= 50:
                times.append(elapsed * 1000)
            sink.seek(0)
            sink.truncate()
    return times


def _in_process_worker(
    endpoints: dict[str, str], query: str, ready: Any, seconds: float, out: Any
) -> None:
    handler, event = _handler(endpoints), _event(query)
    sys.stdout = io.StringIO()
    for _ in range(20):
        handler(event, _Context())
    ready.wait()  # every worker imported and warm: the window starts for all at once
    done, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        handler(event, _Context())
        done += 1
        if done % 100 == 0:
            sys.stdout = io.StringIO()
    out.put(done)


def in_process_throughput(endpoints: dict[str, str], query: str, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    ready = context.Barrier(CONCURRENCY)
    workers = [
        context.Process(target=_in_process_worker, args=(endpoints, query, ready, seconds, out))
        for _ in range(CONCURRENCY)
    ]
    for worker in workers:
        worker.start()
    total = sum(out.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join()
    return total / seconds


@contextlib.contextmanager
def gateway_process(endpoints: dict[str, str]) -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", "serve"],
        env={**os.environ, **endpoints, "COVENANT_LAMBDA_MAX_PER_FUNCTION": str(CONCURRENCY)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the gateway did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def serve() -> None:
    """The gateway alone, for the measurements above (`python -m bench.gateway serve`)."""
    from devstack.gateway import Gateway

    endpoints = {k: os.environ[k] for k in ("DATABASE_URL", "DATABASE_READER_URL")}

    async def run() -> None:
        gateway = Gateway(0, endpoints)
        await gateway.start()
        print(f"ready {gateway.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gateway.stop()

    uvloop.run(run())  # the event loop the gateway runs on under make dev


def gateway_latencies(port: int, query: str, requests: int) -> list[float]:
    body = json.dumps({"query": query}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/graphql-response+json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: list[float] = []
    for n in range(requests + 50):
        started = time.perf_counter()
        connection.request("POST", f"/{REGION}/graphql", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, response.status
        if n >= 50:
            times.append(elapsed * 1000)
    connection.close()
    return times


def gateway_throughput(port: int, query: str, seconds: float) -> float:
    """Requests per second from CONCURRENCY keep-alive connections: wrk (C, Debian's package)
    when installed, whose own CPU is small, else aiohttp from this process."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        return _wrk_throughput(wrk, port, query, seconds)
    return _aiohttp_throughput(port, query, seconds)


def _wrk_throughput(wrk: str, port: int, query: str, seconds: float) -> float:
    body = json.dumps({"query": query})
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("requests %d errors %d\\n", summary.requests,\n'
        "    summary.errors.status + summary.errors.connect + summary.errors.read"
        " + summary.errors.write + summary.errors.timeout))\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    url = f"http://127.0.0.1:{port}/{REGION}/graphql"
    common = ["-t", "1", "-c", str(CONCURRENCY), "-s", handle.name, url]
    subprocess.run([wrk, "-d", "2s", *common], capture_output=True, check=True)  # warm all 8
    result = subprocess.run(
        [wrk, "-d", f"{seconds:.0f}s", *common], capture_output=True, text=True, check=True
    )
    os.unlink(handle.name)
    line = next(x for x in result.stdout.splitlines() if x.startswith("requests "))
    _, requests, _, errors = line.split()
    if int(errors):
        raise RuntimeError(f"wrk saw {errors} errors: {result.stdout}")
    return int(requests) / seconds


def _aiohttp_throughput(port: int, query: str, seconds: float) -> float:
    import aiohttp

    body = json.dumps({"query": query}).encode()
    headers = {"Content-Type": "application/json"}
    url = f"http://127.0.0.1:{port}/{REGION}/graphql"

    async def run() -> int:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(deadline: float | None) -> int:
                done = 0
                while (deadline is None and done < 20) or (deadline and time.time() < deadline):
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        assert response.status == 200
                    done += 1
                return done

            await asyncio.gather(*(worker(None) for _ in range(CONCURRENCY)))  # warm all 8
            deadline = time.time() + seconds
            return sum(await asyncio.gather(*(worker(deadline) for _ in range(CONCURRENCY))))

    return asyncio.run(run()) / seconds


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=["measure", "serve"], default="measure")
    parser.add_argument("--requests", type=int, default=500, help="timed requests at c=1")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    args = parser.parse_args()
    if args.mode == "serve":
        serve()
        return
    from bench.query_mix import cluster

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up PostgreSQL on SIGTERM
    with cluster() as servers:
        endpoints = {
            "DATABASE_URL": servers.postgres.primary.url,
            "DATABASE_READER_URL": servers.postgres.replica.url,
        }
        for name, query in QUERIES.items():
            say(f"\n== POST /{REGION}/graphql, {name}: {query}")
            measure(endpoints, query, args.requests, args.seconds)


def measure(endpoints: dict[str, str], query: str, requests: int, seconds: float) -> None:
    with gateway_process(endpoints) as port:
        through = gateway_latencies(port, query, requests)
        inline = in_process_latencies(endpoints, query, requests)
        through = sorted(through + gateway_latencies(port, query, requests))
        say(f"  concurrency 1, {requests} timed requests (ms)")
        say(f"    handler in-process   p50 {p50(inline):6.2f}  p99 {p99(inline):6.2f}")
        say(f"    through the gateway  p50 {p50(through):6.2f}  p99 {p99(through):6.2f}")
        added = p50(through) - p50(inline)
        met = "met" if added <= 1 else "NOT met"
        say(f"    added by the gateway p50 {added:6.2f} ms (target <= 1 ms: {met})")
        gateway_rps = gateway_throughput(port, query, seconds)
    baseline_rps = in_process_throughput(endpoints, query, seconds)
    ratio = gateway_rps / baseline_rps
    say(f"  concurrency {CONCURRENCY}, {seconds:.0f} s windows")
    say(f"    {CONCURRENCY} processes calling the handler in-process {baseline_rps:8.0f} req/s")
    say(f"    through the gateway, {CONCURRENCY} environments         {gateway_rps:8.0f} req/s")
    say(f"    ratio {ratio:.2f}x (target >= 0.8x: {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()

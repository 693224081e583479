"""The local gateway and Lambda runtime against the handler in-process (issue: local Lambda
runtime), side by side in one run:

1. overhead per request at concurrency 1: `POST /ams/graphql` `{ sectors { id name } }` over
   one keep-alive connection through the gateway (HTTP parsing, the API Gateway event, the
   pipe to the execution environment and back) against the same handler called in-process
   with the same event; target: at most 1 ms added at p50;
2. requests per second at concurrency 8 through the gateway (8 environments) against 8
   processes calling the handler in-process in a loop (the same number of environments,
   nothing in between); target: at least 0.8x.

The gateway runs in a process of its own (as under `make dev`, EMF metrics off as there and
in the baseline); the load at concurrency 1 comes from this process (http.client), at
concurrency 8 from wrk when installed (else aiohttp), on the same 2 cores: the throughput ratio
counts the client's CPU against the gateway, the in-process baseline has no client at all.

Baseline and gateway are measured in alternation, `--rounds` times (on a shared machine the
load then hits both alike); each round prints its figures, and the medians of the rounds come
last.

Starts its own PostgreSQL primary + replica in a temporary folder. Measures only.

    .venv/bin/python -m bench.gateway [--requests 500] [--seconds 5] [--rounds 3]
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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


def say(message: str = "", end: str = "\n") -> None:
    print(message, end=end, flush=True)


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
    # A session of its own, as every execution environment has (start_new_session): with
    # Linux's autogroup scheduling, CPU is shared between sessions first, so on a machine
    # loaded by others, workers in one session would get the CPU share of one environment.
    os.setsid()
    handler, event = _handler(endpoints), _event(query)
    sys.stdout = io.StringIO()
    for _ in range(20):
        handler(event, _Context())
    ready.wait()  # every worker imported and warm: the window starts for all at once
    done, deadline, cpu = 0, time.time() + seconds, time.process_time()
    while time.time() < deadline:
        handler(event, _Context())
        done += 1
        if done % 100 == 0:
            sys.stdout = io.StringIO()
    out.put((done, time.process_time() - cpu))


@dataclass(frozen=True)
class Window:
    """One throughput window: requests served, and the CPU seconds every process of that
    side spent on them (workers or gateway and environments, the client, PostgreSQL)."""

    requests: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s * 1e6 / self.requests


def in_process_throughput(
    endpoints: dict[str, str], query: str, seconds: float, servers: list[int]
) -> Window:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    ready = context.Barrier(CONCURRENCY + 1)
    workers = [
        context.Process(target=_in_process_worker, args=(endpoints, query, ready, seconds, out))
        for _ in range(CONCURRENCY)
    ]
    for worker in workers:
        worker.start()
    ready.wait()
    database = cpu_seconds(servers)
    results = [out.get(timeout=120) for _ in workers]
    database = cpu_seconds(servers) - database
    for worker in workers:
        worker.join()
    return Window(sum(r[0] for r in results), seconds, sum(r[1] for r in results) + database)


def cpu_seconds(pids: list[int], descendants: bool = True) -> float:
    """User + system CPU of these processes and all their descendants (Linux /proc)."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if descendants:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                total += round(cpu_seconds([int(c) for c in children]) * tick)
    return total / tick


@contextlib.contextmanager
def gateway_process(
    endpoints: dict[str, str], *, fixed: bool = False, devstack_from: str | None = None
) -> Iterator[tuple[int, int]]:
    """The gateway in a process of its own: (port, pid). `devstack_from`: a checkout whose
    devstack package it runs instead of this tree's (its environments too)."""
    extra = {"PYTHONPATH": devstack_from} if devstack_from else {}
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "serve", *(["--fixed"] if fixed else [])],
        env={
            **os.environ,
            **endpoints,
            **extra,
            "COVENANT_LAMBDA_MAX_PER_FUNCTION": str(CONCURRENCY),
            "POWERTOOLS_METRICS_DISABLED": "true",  # as make dev runs them, and the baseline
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=devstack_from,  # `python -m devstack.bootstrap` looks in the working folder first
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the gateway did not start: {line!r}")
        yield int(line.split()[1]), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def serve(fixed: bool) -> None:
    """The gateway alone, for the measurements above (`python -m bench.gateway serve`); with
    `fixed`, its graphql function is bench/fixed_answer.py and it needs no database."""
    from covenant.topology import FunctionSpec, Route
    from devstack.gateway import Gateway
    from devstack.runtime import FunctionConfig

    endpoints = {k: os.environ[k] for k in ("DATABASE_URL", "DATABASE_READER_URL") if not fixed}
    route = Route("POST", "/graphql", "none")
    spec = FunctionSpec("graphql", "fixed_answer.handler", "graphql", (route,))
    here = str(Path(__file__).resolve().parent)
    functions = {"graphql": FunctionConfig(spec, code_path=(here,))} if fixed else None

    async def run() -> None:
        gateway = Gateway(0, endpoints, functions=functions)
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


def warm_environments(port: int, query: str) -> None:
    """Starts all CONCURRENCY environments before anything is timed: as many requests at once
    as there are environments, each held while the others arrive, so every one is a cold
    start (a few seconds each on a loaded machine), then warm requests on each."""
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        list(pool.map(lambda _: gateway_latencies(port, query, 0), range(CONCURRENCY)))


def gateway_throughput(port: int, query: str, seconds: float, processes: list[int]) -> Window:
    """Requests from CONCURRENCY keep-alive connections: wrk (C, Debian's package) when
    installed, whose own CPU is small, else aiohttp from this process."""
    wrk = shutil.which("wrk")
    before = cpu_seconds(processes)
    if wrk is not None:
        requests, client_cpu = _wrk_throughput(wrk, port, query, seconds)
    else:
        client_cpu = time.process_time()
        requests = _aiohttp_throughput(port, query, seconds)
        client_cpu = time.process_time() - client_cpu
    return Window(requests, seconds, cpu_seconds(processes) - before + client_cpu)


def _wrk_throughput(wrk: str, port: int, query: str, seconds: float) -> tuple[int, float]:
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
    client = subprocess.Popen([wrk, "-d", f"{seconds:.0f}s", *common], stdout=subprocess.PIPE)
    assert client.stdout is not None
    output = client.stdout.read().decode()
    _, status, usage = os.wait4(client.pid, 0)  # its CPU, which Popen does not report
    client.returncode = os.waitstatus_to_exitcode(status)
    os.unlink(handle.name)
    if client.returncode:
        raise RuntimeError(f"wrk failed ({client.returncode}): {output}")
    line = next(x for x in output.splitlines() if x.startswith("requests "))
    _, requests, _, errors = line.split()
    if int(errors):
        raise RuntimeError(f"wrk saw {errors} errors: {output}")
    return int(requests), usage.ru_utime + usage.ru_stime


def _aiohttp_throughput(port: int, query: str, seconds: float) -> int:
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

    return asyncio.run(run())


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument(
        "mode", nargs="?", choices=["measure", "overhead", "serve"], default="measure"
    )
    parser.add_argument("--requests", type=int, default=500, help="timed requests at c=1")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of both sides")
    parser.add_argument("--fixed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare",
        metavar="CHECKOUT",
        help="overhead: also run the devstack of another checkout (git worktree add), alternating",
    )
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.fixed)
        return
    if args.mode == "overhead":
        overhead(args.requests, args.seconds, args.rounds, args.compare)
        return
    from bench.query_mix import cluster

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up PostgreSQL on SIGTERM
    with cluster() as servers:
        endpoints = {
            "DATABASE_URL": servers.postgres.primary.url,
            "DATABASE_READER_URL": servers.postgres.replica.url,
        }
        postmasters = [
            int((servers.postgres.data_dir / role / "postmaster.pid").read_text().split()[0])
            for role in ("primary", "replica")
        ]
        for name, query in QUERIES.items():
            say(f"\n== POST /{REGION}/graphql, {name}: {query}")
            measure(endpoints, postmasters, query, args.requests, args.seconds, args.rounds)


def measure(
    endpoints: dict[str, str],
    postmasters: list[int],
    query: str,
    requests: int,
    seconds: float,
    rounds: int,
) -> None:
    added: list[float] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    with gateway_process(endpoints) as (port, gateway_pid):
        warm_environments(port, query)
        for round_number in range(1, rounds + 1):
            say(f"  round {round_number}")
            inline = in_process_latencies(endpoints, query, requests)
            through = gateway_latencies(port, query, requests)
            added.append(p50(through) - p50(inline))
            say(f"    c=1, {requests} requests (ms): in-process p50 {p50(inline):6.2f} ", end="")
            say(f"p99 {p99(inline):6.2f}; gateway p50 {p50(through):6.2f} p99 {p99(through):6.2f}")
            # Alternate which side goes first, so a trend in the machine's load favours neither.
            gateway_side = [gateway_pid, *postmasters]
            if round_number % 2:
                gateway = gateway_throughput(port, query, seconds, gateway_side)
                baseline = in_process_throughput(endpoints, query, seconds, postmasters)
            else:
                baseline = in_process_throughput(endpoints, query, seconds, postmasters)
                gateway = gateway_throughput(port, query, seconds, gateway_side)
            ratios.append(gateway.rate / baseline.rate)
            cpu_ratios.append(baseline.cpu_us / gateway.cpu_us)
            say(
                f"    c={CONCURRENCY}, {seconds:.0f} s: {CONCURRENCY} processes in-process ", end=""
            )
            say(f"{baseline.rate:6.0f} req/s, {baseline.cpu_us:6.0f} us CPU/req; ", end="")
            say(f"gateway, {CONCURRENCY} environments {gateway.rate:6.0f} req/s, ", end="")
            say(f"{gateway.cpu_us:6.0f} us CPU/req")
            say(f"      ratio {ratios[-1]:.2f}x by req/s, {cpu_ratios[-1]:.2f}x by CPU per request")
    say(f"  median of {rounds} rounds")
    median = statistics.median(added)
    say(f"    added at c=1, p50 {median:5.2f} ms (target <= 1 ms: {_met(median <= 1)})")
    median = statistics.median(ratios)
    say(f"    c={CONCURRENCY} req/s ratio {median:.2f}x (target >= 0.8x: {_met(median >= 0.8)})")
    median = statistics.median(cpu_ratios)
    say(f"    c={CONCURRENCY} CPU per request ratio {median:.2f}x ({_met(median >= 0.8)})")


def overhead(requests: int, seconds: float, rounds: int, compare: str | None) -> None:
    """The gateway path alone: a handler that does nothing (bench/fixed_answer.py), the CPU
    each request costs the gateway process, the environments and the client, and the p50 at
    concurrency 1; against another checkout's devstack when asked, in alternation."""
    sides = {"this tree": None, **({f"devstack of {compare}": compare} if compare else {})}
    query = QUERIES["project page"]  # never executed: only the request's size matters
    with contextlib.ExitStack() as stack:
        servers = {
            side: stack.enter_context(gateway_process({}, fixed=True, devstack_from=checkout))
            for side, checkout in sides.items()
        }
        figures: dict[str, list[tuple[float, float, float, float, float]]] = {s: [] for s in sides}
        for port, _ in servers.values():
            warm_environments(port, query)
        say(f"== the gateway path alone, c=1 p50 and c={CONCURRENCY} CPU per request (us)")
        for round_number in range(rounds):
            order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
            for side in order:
                port, pid = servers[side]
                latency = p50(gateway_latencies(port, query, requests)) * 1000
                own, tree = cpu_seconds([pid], descendants=False), cpu_seconds([pid])
                window = gateway_throughput(port, query, seconds, [pid])
                own, tree = cpu_seconds([pid], descendants=False) - own, cpu_seconds([pid]) - tree
                us = 1e6 / window.requests
                client = window.cpu_s - tree
                row = (latency, window.rate, own * us, (tree - own) * us, client * us)
                figures[side].append(row)
                say(f"  round {round_number + 1}, {side}: c=1 p50 {latency:5.0f} us; ", end="")
                say(f"c={CONCURRENCY} {window.rate:6.0f} req/s, gateway process ", end="")
                say(f"{own * us:4.0f}, environments {(tree - own) * us:4.0f}, ", end="")
                say(f"client {client * us:3.0f}")
        say(f"  median of {rounds} rounds")
        for side, rows in figures.items():
            c1, rate, own_us, envs_us, client_us = (
                statistics.median(column) for column in zip(*rows, strict=True)
            )
            say(f"    {side}: c=1 p50 {c1:5.0f} us; c={CONCURRENCY} {rate:6.0f} req/s, ", end="")
            say(f"gateway process {own_us:4.0f}, environments {envs_us:4.0f}, ", end="")
            say(f"client {client_us:3.0f}")


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()

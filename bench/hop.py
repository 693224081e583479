"""The cross-region hop (issue 13), through the local stack as `make dev` runs it: the gateway,
the Lambda runtime's environments and each secondary's hop proxy at the round-trip time of
cdk.json's table (`covenant:interRegionRttMs`).

For each secondary region, a GraphQL mutation (updateProject) and a sync push (one new
project), sent by a signed-in editor to that region over a keep-alive connection: p50/p99, and
the round trips each crossed on the hop (counted by the proxy). Side by side in the same run:

- the floor: the same operation sent to the primary region (p50), plus one round trip;
- write forwarding, the mechanism not chosen: the same operation in the primary plus one round
  trip per statement on the writer (counted by running it once in-process in the primary).

Starts its own stack (PostgreSQL, nats-server, moto) in a temporary folder. Measures only.

    .venv/bin/python -m bench.hop [--requests 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import statistics
import sys
import time
import uuid
from typing import Any

from covenant.regions import load_regions, primary_region
from devstack.hop import round_trip_ms, rtt_enabled

UPDATE = (
    "mutation ($id: ID!, $p: Int!) { updateProject(id: $id, input: {progress: $p}) { id version } }"
)
CREATE = (
    'mutation { createProject(input: {name: "Hop bench", sectorId: "energy", '
    'countryCode: "KEN", budgetUsd: 1000000}) { id } }'
)


def say(message: str = "") -> None:
    print(message, flush=True)


class Client:
    """One keep-alive connection to the gateway, as an app's."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.token = token

    def send(self, method: str, path: str, body: Any) -> tuple[int, Any, float]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        started = time.perf_counter()
        self.connection.request(method, path, body=json.dumps(body).encode(), headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw), (time.perf_counter() - started) * 1000

    def mutation(self, region: str, project_id: str, n: int) -> float:
        status, body, elapsed = self.send(
            "POST",
            f"/{region}/graphql",
            {"query": UPDATE, "variables": {"id": project_id, "p": n % 100}},
        )
        if status != 200 or body.get("errors"):
            raise RuntimeError(f"{region} mutation: {status} {body}")
        return elapsed

    def push(self, region: str, cursor: int, n: int) -> float:
        record = {
            "id": str(uuid.uuid4()),
            "name": f"hop bench {region} {n}",
            "description": "",
            "sector_id": "energy",
            "country_code": "KEN",
            "region": "",
            "status": "active",
            "budget_usd": 1000 + n,
            "impact_score": 1,
            "progress": 0,
            "version": 0,
            "created_at": 0,
            "updated_at": 0,
        }
        changes = {"projects": {"created": [record], "updated": [], "deleted": []}}
        status, body, elapsed = self.send(
            "POST", f"/{region}/sync?last_pulled_at={cursor}", changes
        )
        if status != 200:
            raise RuntimeError(f"{region} push: {status} {body}")
        return elapsed


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 2 else max(values)


def writer_statements(stack: Any, project_id: str, cursor: int) -> dict[str, int]:
    """How many statements each operation runs on the writer, in the primary (in-process)."""
    from covenant import db
    from covenant.topology import Route
    from devstack.functions import get_function, invoke
    from devstack.gateway import build_event

    region = primary_region()
    editor = {"sub": "bench-editor", "email": "editor@covenant.local", "cognito:groups": "[editor]"}
    counts: dict[str, int] = {}
    requests = {
        "mutation": (
            "graphql",
            "POST /graphql",
            "/graphql",
            "",
            {"query": UPDATE, "variables": {"id": project_id, "p": 7}},
        ),
        "push": ("mobile", "POST /sync", "/sync", f"last_pulled_at={cursor}", None),
    }
    for name, (function, key, path, query, body) in requests.items():
        if body is None:
            body = {
                "projects": {
                    "created": [
                        {
                            "id": str(uuid.uuid4()),
                            "name": "hop count",
                            "description": "",
                            "sector_id": "energy",
                            "country_code": "KEN",
                            "region": "",
                            "status": "active",
                            "budget_usd": 5,
                            "impact_score": 1,
                            "progress": 0,
                            "version": 0,
                            "created_at": 0,
                            "updated_at": 0,
                        }
                    ],
                    "updated": [],
                    "deleted": [],
                }
            }
        method, _, route_path = key.partition(" ")
        event = build_event(
            region=region,
            route=Route(method, route_path, "jwt"),
            method=method,
            path=path,
            query=query,
            headers={"content-type": "application/json"},
            body=json.dumps(body).encode(),
            source_ip="127.0.0.1",
            path_parameters={},
            domain="localhost",
            authorizer={"jwt": {"claims": editor, "scopes": None}},
        )
        with db.record_statements() as statements:
            answer = invoke(get_function(function), region, event, stack.endpoints)
        assert answer["statusCode"] == 200, answer
        writes = [
            s for s in statements if not s.lstrip().upper().startswith(("SELECT", "WITH RECENT"))
        ]
        counts[name] = len(statements)
        counts[f"{name}_writes"] = len(writes)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per region")
    args = parser.parse_args()
    if not rtt_enabled():
        say("COVENANT_HOP_RTT is off: the figures below have no distance in them")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the servers on SIGTERM
    from bench.bridge import editor_gateway, local_stack

    with local_stack() as stack:
        assert stack.gateway is not None
        editor = editor_gateway(stack)
        client = Client(stack.gateway.port, editor.token)
        primary = primary_region()
        _, created, _ = client.send("POST", f"/{primary.code}/graphql", {"query": CREATE})
        project_id = created["data"]["createProject"]["id"]
        pull = http.client.HTTPConnection("127.0.0.1", stack.gateway.port, timeout=60)
        pull.request(
            "GET",
            f"/{primary.code}/sync?last_pulled_at=null&schema_version=1",
            headers={"Authorization": f"Bearer {editor.token}"},
        )
        cursor = json.loads(pull.getresponse().read())["timestamp"]
        counts = writer_statements(stack, project_id, cursor)
        n = args.requests
        for warm in range(3):  # start each region's environments (cold starts are not the hop)
            for region in load_regions():
                client.mutation(region.code, project_id, warm)
                client.push(region.code, cursor, warm)
        floor_m = [client.mutation(primary.code, project_id, i) for i in range(n * 2)]
        floor_p = [client.push(primary.code, cursor, 1000 + i) for i in range(n * 2)]
        say(
            f"in the primary ({primary.code}): mutation p50 {p50(floor_m):.1f} ms, "
            f"push p50 {p50(floor_p):.1f} ms"
        )
        say(
            f"writer statements: mutation {counts['mutation']}, push {counts['push']} "
            "(each a round trip under write forwarding)\n"
        )
        say(
            "region  rtt | operation  hop p50    p99 | floor p50 | hop/floor | round trips "
            "| write forwarding p50"
        )
        for region in load_regions():
            if region.primary:
                continue
            rtt = round_trip_ms(region, primary) if rtt_enabled() else 0.0
            hop = stack.gateway.hops[region.code]
            cases = (
                ("mutation", floor_m, counts["mutation"]),
                ("push", floor_p, counts["push"]),
            )
            for operation, floor, count in cases:
                before = hop.round_trips
                if operation == "mutation":
                    times = [client.mutation(region.code, project_id, i) for i in range(n)]
                else:
                    times = [client.push(region.code, cursor, 5000 + i) for i in range(n)]
                trips = (hop.round_trips - before) / n
                base = p50(floor) + rtt
                forwarding = p50(floor) + count * rtt
                say(
                    f"{region.code:5} {rtt:4.0f} | {operation:9} "
                    f"{p50(times):7.1f} {p99(times):6.1f} | {base:9.1f} | "
                    f"{p50(times) / base:8.2f}x | {trips:11.2f} | "
                    f"{forwarding:8.1f} ({forwarding / base:.1f}x)"
                )
        say("\ntargets: hop p50 <= 2x the floor; the goal one round trip per write (<= 1.2x)")


if __name__ == "__main__":
    main()

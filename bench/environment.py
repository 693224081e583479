"""One execution environment of the GraphQL function, as bench/postgraphile.py measures its
throughput: a process of its own that imports the deployed handler (init), then, for each JSON
line `{"query": ..., "seconds": ...}` on stdin, answers that query in-process one request at a
time (as a Lambda environment does) for that long, and writes one JSON line: requests, seconds,
the billed milliseconds (each request's duration rounded up to the millisecond, as Lambda bills)
and its memory (VmRSS now, VmHWM: the peak, what Lambda reports as Max Memory Used).

    python -m bench.environment     (DATABASE_URL and DATABASE_READER_URL from the environment)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from typing import Any


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB (Linux /proc)."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    return found


def main() -> None:
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    # A disabled flush warns that it has nothing to publish, once per request.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from bench.query_mix import QUERIES, make_event
    from covenant.regions import get_region
    from devstack.functions import get_function, invoke

    function = get_function("graphql")
    region = get_region("ams")
    endpoints = {
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "DATABASE_READER_URL": os.environ["DATABASE_READER_URL"],
        "DB_STATEMENT_TIMEOUT_MS": "60000",
    }
    events = {name: make_event(query) for name, query in QUERIES.items()}
    sink = io.StringIO()

    def call(event: dict[str, Any]) -> None:
        with contextlib.redirect_stdout(sink):  # Powertools' EMF lines
            response = invoke(function, region, event, endpoints)
        sink.seek(0)
        sink.truncate()
        if response["statusCode"] != 200 or '"errors"' in response["body"]:
            raise RuntimeError(f"the handler answered {response['body'][:300]}")

    for event in events.values():
        call(event)  # the first request of each query: connections opened, documents cached
    print(json.dumps({"ready": True, **memory_mb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        event = events[command["query"]]
        requests = 0
        billed_ms = 0
        started = time.perf_counter()
        deadline = started + float(command["seconds"])
        while True:
            before = time.perf_counter()
            call(event)
            after = time.perf_counter()
            requests += 1
            billed_ms += math.ceil((after - before) * 1000)
            if after >= deadline:
                break
        seconds = time.perf_counter() - started
        report = {"requests": requests, "seconds": seconds, "billed_ms": billed_ms}
        print(json.dumps({**report, **memory_mb()}), flush=True)


if __name__ == "__main__":
    main()

"""The offline-sync benchmark: `.venv/bin/python -m bench.sync` from the repository root (or
`.venv/bin/python bench/sync.py`).

It starts its own PostgreSQL primary + streaming replica in a temporary folder (as the tests
do) with two databases: one holding 10 000 projects, one holding 1 000 000. Then, through the
mobile handler in-process (GET /sync, as the gateway invokes it, reading the replica):

- the first pull of all countries and sectors plus the 10 000 projects: latency, bytes of the
  JSON, bytes on the wire with gzip;
- an incremental pull of 10 changes at 10 000 and at 1 000 000 projects, the two sizes
  interleaved sample by sample in the same run (so machine noise hits both alike), and the
  server-side plan and execution time of the pull statement at each size.

Target: the incremental pull at 1 000 000 projects costs at most 1.5x what it costs at 10 000.
It measures and prints; nothing here asserts on time.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native

# Run as a script, this folder would be sys.path[0]: the repository root must be. The project's
# modules are imported inside the functions below, after this.
if __name__ == "__main__" and not __package__:
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Before Powertools is imported: no EMF metric blobs between the figures.
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"

REPO = Path(__file__).resolve().parent.parent
SMALL, LARGE = 10_000, 1_000_000
CHANGES = 10
FIRST_PULL_RUNS = 15
INCREMENTAL_RUNS = 300  # per size, interleaved
WARMUP = 5
GROW_BATCH = 200_000
TARGET_RATIO = 1.5

# Bulk load with the per-row triggers bypassed (session_replication_role = replica) and their
# effects applied set-based: region from the country, change number from change_seq, version and
# timestamps from the defaults. Foreign keys are not checked in that mode; the rows are valid by
# construction. With the triggers on, each row would be stamped by its own UPDATE at commit.
_GROW = """
WITH c AS (SELECT array_agg(code ORDER BY code) AS codes, array_agg(name ORDER BY code) AS names,
                  array_agg(region ORDER BY code) AS regions, count(*)::int AS n
           FROM countries)
INSERT INTO projects (id, name, description, sector_id, country_code, region, status,
                      budget_usd, impact_score, progress, change_seq)
SELECT md5('covenant-sync-bench-' || g.n)::uuid,
       c.names[1 + g.n % c.n] || ' Sync Programme ' || g.n,
       'Benchmark project ' || g.n,
       (ARRAY['agriculture', 'minerals', 'energy', 'technology', 'health', 'education'])
           [1 + (g.n / c.n) % 6],
       c.codes[1 + g.n % c.n],
       c.regions[1 + g.n % c.n],
       (ARRAY['planning', 'active', 'cancelled'])[1 + g.n % 3],
       100000 + ((g.n::bigint * 2654435761) % 250000) * 1000,
       ((g.n::bigint * 40503) % 1001) / 100.0,
       (g.n * 37) % 100,
       nextval('change_seq')
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS g(n), c
"""


def say(message: str = "") -> None:
    print(message, flush=True)


def _connect(port: int, database: str, *, read_only: bool = False) -> pg8000.native.Connection:
    options = "-c statement_timeout=0"
    if read_only:
        options += " -c default_transaction_read_only=on"
    return pg8000.native.Connection(
        user="postgres",
        host="127.0.0.1",
        port=port,
        database=database,
        application_name="covenant-sync-bench",
        startup_params={"options": options},
    )


@dataclass
class Target:
    """One database of the cluster, at one size."""

    name: str
    size: int
    writer_url: str
    reader_url: str
    writer: pg8000.native.Connection
    reader: pg8000.native.Connection

    def wait_for_replica(self) -> None:
        from devstack.processes import wait_until

        lsn = self.writer.run("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        wait_until(
            lambda: bool(
                self.reader.run("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=lsn)[
                    0
                ][0]
            ),
            600,
            "replica catch-up",
        )

    def grow(self) -> None:
        """Bulk load as one restores a dump: the secondary indexes are dropped, the rows
        inserted, the indexes built again. The table ends with every index it had."""
        current = int(self.writer.run("SELECT count(*) FROM projects")[0][0])
        started = time.perf_counter()
        indexes = [
            (name, definition)
            for name, definition in self.writer.run(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'projects' "
                "AND indexname NOT IN ('projects_pkey', 'projects_change_seq') "
                "AND indexdef NOT LIKE '%UNIQUE%'"
            )
        ]
        for name, _ in indexes:
            self.writer.run(f'DROP INDEX "{name}"')
        n = 1
        while current < self.size:
            count = min(GROW_BATCH, self.size - current)
            self.writer.run("BEGIN")
            self.writer.run("SET LOCAL session_replication_role = replica")
            self.writer.run(_GROW, lo=n, hi=n + count - 1)
            self.writer.run("COMMIT")
            n += count
            current += count
        self.writer.run("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            self.writer.run(definition)
        self.writer.run("VACUUM (ANALYZE) projects")
        self.writer.run("VACUUM (ANALYZE) tombstones")
        self.wait_for_replica()
        total = int(self.writer.run("SELECT count(*) FROM projects")[0][0])
        say(
            f"  {self.name}: {total:,} projects, {len(indexes) + 2} indexes "
            f"({time.perf_counter() - started:.1f} s to load and index)"
        )

    def cursor(self) -> int:
        return int(self.reader.run("SELECT sync_cursor()")[0][0])

    def change(self, count: int, round_: int) -> list[str]:
        """`count` projects updated in one ordinary transaction (stamped at commit)."""
        ids = [
            row[0]
            for row in self.writer.run(
                "SELECT id::text FROM projects ORDER BY change_seq LIMIT :n OFFSET :skip",
                n=count,
                skip=round_ * count,
            )
        ]
        self.writer.run("BEGIN")
        self.writer.run(
            "UPDATE projects SET progress = (progress + 1) % 100, status = 'active' "
            "WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=ids,
        )
        self.writer.run("COMMIT")
        self.wait_for_replica()
        return ids


@contextlib.contextmanager
def cluster() -> Iterator[tuple[Target, Target]]:
    from covenant import db
    from covenant.migrate import migrate
    from covenant.seed import seed
    from devstack.postgres import PostgresCluster
    from devstack.processes import free_port, hand_over, service_user

    data_dir = Path(tempfile.mkdtemp(prefix="covenant-sync-bench-"))
    data_dir.chmod(0o755)
    hand_over(data_dir, service_user())
    postgres = PostgresCluster(data_dir / "postgres", free_port(), free_port(), durable=False)
    postgres.start()
    connections: list[pg8000.native.Connection] = []
    try:
        admin = _connect(postgres.primary.port, "postgres")
        admin.run("CREATE DATABASE covenant_large")
        admin.close()
        targets = []
        for name, size in (("covenant", SMALL), ("covenant_large", LARGE)):
            writer_url = postgres.primary.url.rsplit("/", 1)[0] + f"/{name}"
            reader_url = postgres.replica.url.rsplit("/", 1)[0] + f"/{name}"
            os.environ["DATABASE_URL"] = writer_url
            os.environ["DATABASE_READER_URL"] = reader_url
            migrate()
            seed()
            writer = _connect(postgres.primary.port, name)
            reader = _connect(postgres.replica.port, name, read_only=True)
            connections += [writer, reader]
            targets.append(Target(name, size, writer_url, reader_url, writer, reader))
        yield targets[0], targets[1]
    finally:
        db.close_all()
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class _Sink(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


@dataclass
class Pull:
    ms: float
    status: int
    body: dict[str, Any]
    json_bytes: int
    wire_bytes: int


class Handler:
    """The mobile function's GET /sync, invoked in-process as the gateway does."""

    def __init__(self) -> None:
        from covenant.regions import get_region
        from devstack.functions import get_function

        self.function = get_function("mobile")
        self.region = get_region("ams")
        self.base = json.loads((REPO / "events" / "sync_pull.json").read_text())
        self.sink = _Sink()

    def pull(self, target: Target, since: int | None, *, gzip_ok: bool = True) -> Pull:
        from devstack.functions import invoke

        event = copy.deepcopy(self.base)
        event["requestContext"]["stage"] = "ams"
        event["queryStringParameters"]["last_pulled_at"] = "null" if since is None else str(since)
        if not gzip_ok:
            event["headers"]["accept-encoding"] = "identity"
        endpoints = {"DATABASE_URL": target.writer_url, "DATABASE_READER_URL": target.reader_url}
        started = time.perf_counter()
        with contextlib.redirect_stdout(self.sink):
            response = invoke(self.function, self.region, event, endpoints)
        ms = (time.perf_counter() - started) * 1000
        raw = response["body"]
        wire = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
        payload = gzip.decompress(wire) if response["headers"].get("Content-Encoding") else wire
        return Pull(ms, response["statusCode"], json.loads(payload), len(payload), len(wire))


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, statistics.fmean(ordered)


def _plan(target: Target, since: int) -> tuple[float, str]:
    """Server execution time (ms) of the pull statement and how it reads projects."""
    from mobile.sync.pull import PULL_SQL
    from mobile.sync.schema import TABLES

    params: dict[str, Any] = {"since": since}
    for table in TABLES:
        params[f"{table.name}_rows_since"] = since
        params[f"{table.name}_all_new"] = False
        params[f"{table.name}_tombstones_since"] = since
    times = []
    document: Any = None
    for _ in range(7):
        raw = target.reader.run("EXPLAIN (ANALYZE, FORMAT JSON) " + PULL_SQL, **params)[0][0]
        document = json.loads(raw) if isinstance(raw, str) else raw
        times.append(float(document[0]["Execution Time"]))

    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    scan = next(n for n in nodes(document[0]["Plan"]) if n.get("Relation Name") == "projects")
    how = f"{scan['Node Type']} using {scan.get('Index Name', '-')}, {scan['Actual Rows']:.0f} rows"
    return statistics.median(times), how


def main() -> None:
    from bench.cli import start

    start("python -m bench.sync", __doc__)
    say("Sync benchmark: GET /sync through the mobile handler, reading the streaming replica")
    say(f"  loading {SMALL:,} and {LARGE:,} projects (two databases, one cluster) ...")
    with cluster() as (small, large):
        for target in (small, large):
            target.grow()
        handler = Handler()

        say()
        say(f"First pull: all countries and sectors + {SMALL:,} projects ({FIRST_PULL_RUNS} runs)")
        for _ in range(2):
            handler.pull(small, None)
        zipped = [handler.pull(small, None) for _ in range(FIRST_PULL_RUNS)]
        plain = [handler.pull(small, None, gzip_ok=False) for _ in range(FIRST_PULL_RUNS)]
        first = zipped[0].body["changes"]
        counts = {t: len(first[t]["updated"]) for t in ("countries", "sectors", "projects")}
        for label, runs in (("gzip (Accept-Encoding: gzip)", zipped), ("identity", plain)):
            p50, p99, _ = _stats([r.ms for r in runs])
            say(
                f"  {label:<30} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   "
                f"wire {runs[0].wire_bytes:>10,} B"
            )
        say(f"  records: {counts}")
        say(
            f"  JSON {zipped[0].json_bytes:,} bytes, gzip {zipped[0].wire_bytes:,} bytes "
            f"({zipped[0].json_bytes / zipped[0].wire_bytes:.1f}x smaller; the Lambda answer "
            f"carries it in base64: {4 * ((zipped[0].wire_bytes + 2) // 3):,} bytes)"
        )

        say()
        say(
            f"Incremental pull of {CHANGES} changes ({INCREMENTAL_RUNS} runs per size, interleaved)"
        )
        cursors = {}
        for target in (small, large):
            cursors[target.name] = target.cursor()
            changed = target.change(CHANGES, 0)
            check = handler.pull(target, cursors[target.name])
            got = sorted(r["id"] for r in check.body["changes"]["projects"]["updated"])
            assert got == sorted(changed), "the pull must hold exactly the 10 changed projects"
        samples: dict[str, list[float]] = {small.name: [], large.name: []}
        wire: dict[str, int] = {}
        for index in range(WARMUP + INCREMENTAL_RUNS):
            order = (small, large) if index % 2 == 0 else (large, small)
            for target in order:
                pulled = handler.pull(target, cursors[target.name])
                wire[target.name] = pulled.wire_bytes
                if index >= WARMUP:
                    samples[target.name].append(pulled.ms)
        results = {}
        for target in (small, large):
            p50, p99, mean = _stats(samples[target.name])
            server_ms, how = _plan(target, cursors[target.name])
            results[target.name] = p50
            say(
                f"  {target.size:>9,} projects: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   "
                f"mean {mean:6.2f} ms   {wire[target.name]:,} B   "
                f"(SQL on the replica {server_ms:.2f} ms: {how})"
            )
        ratio = results[large.name] / results[small.name]
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        say(
            f"  ratio p50 {LARGE:,} / {SMALL:,}: {ratio:.2f}x "
            f"(target <= {TARGET_RATIO}x: {verdict})"
        )


if __name__ == "__main__":
    main()

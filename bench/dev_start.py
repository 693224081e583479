"""`make dev` from an installed data folder: seconds from start until `GET /<region>/health`
answers 200 in all six regions, over several restarts, with the start's timeline and the CPU
time the stack's processes spent by each step.

    .venv/bin/python -m bench.dev_start [--runs 5] [--against /path/to/other/checkout]

Each run starts `python -m devstack run` (what `make dev` runs) on one data folder and its
ports (free ones, chosen once), the folder installed by an untimed first run. It reads the
stack's `devstack.start` timeline as it arrives; "ready" is when the stack prints its banner,
which it does once its own first `GET /health` in every region (through the gateway, as a
client's) has answered 200. Then, as a developer's client would, the benchmark asks each
region's `/health` itself (again 50 ms after a non-200): "healthy" counts until all six have
answered it 200, whatever the stack started meanwhile (the bridge, the consumers and the
fan-outs start after the banner). Then it stops the stack with SIGINT, as Ctrl-C.

CPU: the stack's process tree (the stack, PostgreSQL's servers, nats-server, every Lambda
environment), read from /proc every 50 ms while it starts; a process that lives less than
that between two reads is missed, so the figure is a floor. On a machine shared with other
work, wall time stretches with the load and CPU time much less: both are printed.

`--against DIR` alternates the runs with another checkout of this repository (its code on
PYTHONPATH ahead of this one's, same interpreter and packages), e.g. a `git worktree` of the
commit before a change, each with a data folder of its own: the two move with the machine's
load alike. It measures only: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from covenant.regions import region_codes
from devstack.stack import isolated_environment

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")
READY = "Covenant local stack is ready."
PHASE = re.compile(r"devstack\.start (?P<what>.+) at [\d.]+ s$")


@dataclass
class Run:
    ready_s: float = float("nan")
    healthy_s: float = float("nan")
    cpu_at_healthy_s: float = float("nan")
    # (seconds since the process started, when the line arrived; what; CPU seconds by then)
    phases: list[tuple[float, str, float]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)


class TreeCpu:
    """utime + stime of a process and every descendant seen so far (also after they exit or
    are handed to init, as pg_ctl's servers are), read from /proc."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, str], float] = {}  # (pid, start time) -> CPU seconds

    def sample(self) -> float:
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            stats[int(entry)] = text[text.rfind(")") + 2 :].split()
        known = {pid for pid, _ in self.seen} | {self.root}
        grew = True
        while grew:
            grew = False
            for pid, fields in stats.items():
                if pid not in known and int(fields[1]) in known:
                    known.add(pid)
                    grew = True
        for pid in known:
            fields = stats.get(pid)
            if fields is not None:
                # fields[0] is the state; utime, stime are 14th and 15th of stat (1-based)
                self.seen[(pid, fields[19])] = (int(fields[11]) + int(fields[12])) / TICKS
        return sum(self.seen.values())


def _environment(data_dir: Path, against: Path | None) -> dict[str, str]:
    env = isolated_environment(data_dir)
    if against is not None:
        roots = [against / "layers" / "shared" / "python", against / "functions", against]
        env["PYTHONPATH"] = ":".join(str(p) for p in roots)
    return env


def _health(base: str, code: str, deadline: float) -> float:
    """Seconds (monotonic clock) at which the region's /health first answered 200."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/{code}/health", timeout=30) as answer:
                if answer.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"/{code}/health never answered 200")


def start_once(env: dict[str, str], against: Path | None, timeout_s: float = 120) -> Run:
    run = Run()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run"],
        cwd=against or REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    cpu = TreeCpu(process.pid)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    ready = threading.Event()
    arrivals: list[float] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.output.append(line)
            arrivals.append(time.monotonic() - started)
            if READY in line:
                run.ready_s = time.monotonic() - started
                ready.set()

    def sampler() -> None:
        while not done.is_set():
            samples.append((time.monotonic() - started, cpu.sample()))
            done.wait(0.05)

    threads = [threading.Thread(target=pump, daemon=True), threading.Thread(target=sampler)]
    for thread in threads:
        thread.start()
    base = f"http://127.0.0.1:{env['COVENANT_PORT']}"
    try:
        if not ready.wait(timeout_s):
            raise TimeoutError("the stack never printed its banner:\n" + "".join(run.output))
        with ThreadPoolExecutor(max_workers=6) as pool:
            deadline = started + timeout_s
            answered = list(pool.map(lambda c: _health(base, c, deadline), region_codes()))
        run.healthy_s = max(answered) - started
        done.set()
        threads[1].join()
        run.cpu_at_healthy_s = cpu.sample()
    finally:
        done.set()
        _stop(process, env, against)
        threads[0].join(timeout=5)
    for line, at in zip(run.output, arrivals, strict=False):
        match = PHASE.search(line.strip())
        if match:
            by_then = [c for t, c in samples if t <= at]
            run.phases.append((at, match["what"], by_then[-1] if by_then else 0.0))
    if "Stopped every process the stack started." not in "".join(run.output):
        raise RuntimeError("the stack did not stop cleanly:\n" + "".join(run.output))
    return run


def _stop(process: subprocess.Popen[str], env: dict[str, str], against: Path | None) -> None:
    """Ctrl-C; a stack that does not stop within a minute is killed, and the servers it
    left are stopped by `devstack reset` (which deletes that data folder)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reset = [sys.executable, "-m", "devstack", "reset"]
        subprocess.run(reset, cwd=against or REPO, env=env, check=False, capture_output=True)
        raise RuntimeError("the stack did not stop within 60 s of SIGINT") from None


def _report(label: str, runs: list[Run]) -> None:
    healthy = [r.healthy_s for r in runs]
    ready = [r.ready_s for r in runs]
    cpu = [r.cpu_at_healthy_s for r in runs]
    print(
        f"{label}: healthy in all six regions after median {statistics.median(healthy):.2f} s "
        f"(runs: {', '.join(f'{h:.2f}' for h in healthy)}; budget {BUDGET_S:.0f} s); ready "
        f"(banner) after median {statistics.median(ready):.2f} s "
        f"(runs: {', '.join(f'{r:.2f}' for r in ready)}); "
        f"CPU of its processes by healthy median {statistics.median(cpu):.2f} s"
    )
    typical = sorted(runs, key=lambda r: r.healthy_s)[len(runs) // 2]
    print(f"  timeline of the median run ({label}):")
    previous_at, previous_cpu = 0.0, 0.0
    for at, what, spent in typical.phases:
        print(
            f"    {at:6.2f} s  (+{at - previous_at:5.2f} s wall, "
            f"+{spent - previous_cpu:5.2f} s CPU)  {what}"
        )
        previous_at, previous_cpu = at, spent
    print(f"    {typical.ready_s:6.2f} s  ready: the banner")
    print(
        f"    {typical.healthy_s:6.2f} s  (CPU {typical.cpu_at_healthy_s:5.2f} s in all)  "
        "all six /health answered 200 to the benchmark"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout to alternate with")
    args = parser.parse_args()
    subjects: dict[str, Path | None] = {"this tree": None}
    if args.against is not None:
        subjects = {f"against {args.against}": args.against.resolve(), "this tree": None}
    folders = {label: Path(tempfile.mkdtemp(prefix="covenant-devstart-")) for label in subjects}
    # One set of ports per folder, as a developer's `make dev` keeps its own.
    envs = {label: _environment(folders[label], tree) for label, tree in subjects.items()}
    results: dict[str, list[Run]] = {label: [] for label in subjects}
    try:
        for label, tree in subjects.items():
            folders[label].chmod(0o755)  # PostgreSQL runs as another user when we are root
            first = start_once(envs[label], tree, timeout_s=300)
            print(f"{label}: installed the data folder in {first.healthy_s:.1f} s (untimed)")
        for number in range(args.runs):
            order = list(subjects.items())
            if number % 2:
                order.reverse()
            for label, tree in order:
                results[label].append(start_once(envs[label], tree))
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"\n{args.runs} restarts each, {os.cpu_count()} cores, load average {load}")
        for label, runs in results.items():
            _report(label, runs)
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

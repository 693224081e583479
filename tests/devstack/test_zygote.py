"""Execution environments forked from the zygote (devstack.zygote): each still a process of its
own, whose module state, variables and init are its own, as when it was a new interpreter.
Handler: tests/devstack/handlers/fork_probe.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from covenant.regions import get_region
from covenant.topology import FunctionSpec
from devstack.runtime import FunctionConfig, Invocation, LambdaRuntime, invoke_once

from .probes import HANDLERS

PROBE = FunctionConfig(
    FunctionSpec("probe", "fork_probe.handler", "probe", ()),
    memory_mb=256,
    timeout_s=10,
    code_path=(HANDLERS,),
)


def _runtime(fork_server: bool, variables: dict[str, str] | None = None) -> LambdaRuntime:
    return LambdaRuntime(
        {"probe": PROBE}, lambda _config, _region: variables or {}, fork_server=fork_server
    )


async def _invoke(runtime: LambdaRuntime, region: str, **event: Any) -> Invocation:
    return await runtime.invoke("probe", region, json.dumps(event).encode())


def _answer(invocation: Invocation) -> dict[str, Any]:
    assert invocation.function_error is None, invocation.payload
    answer: dict[str, Any] = json.loads(invocation.payload)
    return answer


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "new interpreter"])
def test_each_environment_keeps_its_own_module_state(fork_server: bool) -> None:
    async def scenario() -> list[dict[str, Any]]:
        runtime = _runtime(fork_server)
        await runtime.start()
        try:
            first = await asyncio.gather(*(_invoke(runtime, "ams", sleep=0.5) for _ in range(3)))
            again = await _invoke(runtime, "ams")
            return [*map(_answer, first), _answer(again)]
        finally:
            await runtime.close()

    *first, again = asyncio.run(scenario())
    pids = {answer["pid"] for answer in first}
    assert len(pids) == 3 and os.getpid() not in pids
    for answer in first:
        # The handler's module was imported in the environment itself (its init), and what it
        # left on a library's module is not seen by the others.
        assert answer["importedIn"] == answer["pid"]
        assert answer["marks"] == [answer["pid"]]
        assert answer["session"] == answer["pid"]  # a session of its own: Ctrl-C is the stack's
        assert answer["utcOffset"] == "+0000"
        assert answer["function"] == "covenant-ams-probe"
        assert answer["preloaded"] is fork_server
    assert again["pid"] in pids and again["marks"] == [again["pid"]] * 2


def test_the_init_duration_is_the_functions_own_init(caplog) -> None:
    async def scenario() -> Invocation:
        runtime = _runtime(True, {"PROBE_INIT_SLEEP_S": "0.3"})
        await runtime.start()
        try:
            return await _invoke(runtime, "syd")
        finally:
            await runtime.close()

    with caplog.at_level(logging.INFO, logger="devstack.lambda"):
        invocation = asyncio.run(scenario())
    _answer(invocation)
    assert invocation.init_ms is not None and invocation.init_ms >= 300
    reports = [r.getMessage() for r in caplog.records if "REPORT RequestId" in r.getMessage()]
    init = re.search(r"Init Duration: ([\d.]+) ms", reports[0])
    assert init is not None and float(init[1]) >= 300


def test_an_environment_that_exits_is_reported_with_its_status_and_replaced() -> None:
    async def scenario() -> tuple[Invocation, dict[str, Any], dict[str, Any]]:
        runtime = _runtime(True)
        await runtime.start()
        try:
            before = _answer(await _invoke(runtime, "jnb"))
            died = await _invoke(runtime, "jnb", exit=3)
            after = _answer(await _invoke(runtime, "jnb"))
            return died, before, after
        finally:
            await runtime.close()

    died, before, after = asyncio.run(scenario())
    assert died.function_error == "Unhandled"
    assert died.error_document["errorType"] == "Runtime.ExitError"
    assert died.error_document["errorMessage"].endswith("Runtime exited with error: exit status 3")
    assert after["pid"] != before["pid"] and after["marks"] == [after["pid"]]


def test_closing_the_runtime_ends_the_zygote_and_every_environment() -> None:
    async def scenario() -> list[int]:
        runtime = _runtime(True)
        await runtime.start()
        zygote = runtime.start_zygote()
        assert zygote is not None and zygote.pid is not None
        try:
            answers = await asyncio.gather(*(_invoke(runtime, "sin", sleep=0.3) for _ in range(2)))
        finally:
            await runtime.close()
        return [zygote.pid, *(_answer(a)["pid"] for a in answers)]

    pids = asyncio.run(scenario())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_exists(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_exists(pid) for pid in pids)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_runtimes_sharing_a_zygote_each_get_their_own_environment() -> None:
    """`make dev` forks its two custom resources' environments at once from the stack's zygote,
    from two threads: each runtime must get (and, closing, stop) its own environment, not the
    other's."""
    owner = _runtime(True)
    zygote = owner.start_zygote()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            slow = pool.submit(
                invoke_once, PROBE, get_region("iad"), {}, {"PROBE_INIT_SLEEP_S": "1.5"}, zygote
            )
            fast = [
                pool.submit(invoke_once, PROBE, get_region("iad"), {}, {}, zygote) for _ in range(3)
            ]
            answers = [_answer(f.result()) for f in fast] + [_answer(slow.result())]
    finally:
        owner.stop_zygote()
    assert len({answer["pid"] for answer in answers}) == 4


def test_a_killed_zygote_is_replaced_at_the_next_cold_start() -> None:
    async def scenario() -> tuple[Invocation, dict[str, Any]]:
        runtime = _runtime(True)
        await runtime.start()
        try:
            zygote = runtime.start_zygote()
            assert zygote is not None and zygote.pid is not None
            os.kill(zygote.pid, signal.SIGKILL)
            while zygote.alive:
                await asyncio.sleep(0.01)
            # The runtime notices at the next cold start and forks from a new zygote.
            first = await _invoke(runtime, "ams")
            return first, _answer(await _invoke(runtime, "ams"))
        finally:
            await runtime.close()

    first, answer = asyncio.run(scenario())
    assert first.function_error is None, first.payload
    assert answer["preloaded"] is True

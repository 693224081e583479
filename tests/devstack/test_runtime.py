"""The local Lambda runtime behind the gateway: isolated execution environments, Lambda's
limits and API Gateway's answers when they are hit, and a server that real clients cannot
block. Handlers: tests/devstack/handlers/runtime_probe.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from covenant.regions import load_regions
from devstack.gateway import Gateway
from devstack.runtime import function_configs, lambda_environment

from .probes import probe_function

INTERNAL_ERROR = {"message": "Internal Server Error"}


FUNCTIONS = {
    f.name: f
    for f in (
        probe_function("state", "state"),
        probe_function("sleeps", "sleeps", timeout_s=1),
        probe_function("slow", "sleeps", timeout_s=10),
        probe_function("raises", "raises"),
        probe_function("garbage", "garbage"),
        probe_function("throttled", "sleeps", timeout_s=10, reserved=1),
        probe_function("health", "state"),
    )
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    server = Gateway(0, {}, functions=FUNCTIONS)
    server.serve_in_thread()
    yield server
    server.shutdown()


def _call(url: str, data: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_concurrent_invocations_run_in_separate_environments(gateway: Gateway) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: _call(f"{gateway.url}/ams/state?sleep=0.5"), range(6)))
    assert {status for status, _ in answers} == {200}
    # Six at once: six environments, each its first invocation (module state of its own).
    assert len({body["pid"] for _, body in answers}) == 6
    assert [body["invocations"] for _, body in answers] == [1] * 6
    # Later ones reuse a warm environment, whose module state carries on.
    status, body = _call(f"{gateway.url}/ams/state")
    assert status == 200
    assert body["pid"] in {b["pid"] for _, b in answers}
    assert body["invocations"] == 2


def test_each_region_has_environments_with_its_own_configuration(gateway: Gateway) -> None:
    _, ams = _call(f"{gateway.url}/ams/state")
    _, syd = _call(f"{gateway.url}/syd/state")
    assert (ams["region"], syd["region"]) == ("ams", "syd")
    assert ams["pid"] != syd["pid"]
    assert (ams["function"], syd["function"]) == ("covenant-ams-state", "covenant-syd-state")
    assert ams["memory"] == "256"
    assert 9000 < ams["remainingMs"] <= 10000


def test_a_cold_start_reports_its_init_duration(gateway: Gateway, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="devstack.lambda"):
        _call(f"{gateway.url}/sin/state")
        _call(f"{gateway.url}/sin/state")
    reports = [r.getMessage() for r in caplog.records if "REPORT RequestId" in r.getMessage()]
    reports = [line for line in reports if "covenant-sin-state" in line]
    assert len(reports) == 2
    assert "Init Duration:" in reports[0] and "Init Duration:" not in reports[1]
    assert "Memory Size: 256 MB" in reports[0] and "Max Memory Used:" in reports[0]


def test_a_handler_past_its_timeout_is_stopped_and_replaced(gateway: Gateway, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="devstack"):
        started = time.monotonic()
        assert _call(f"{gateway.url}/ams/sleeps?s=30") == (502, INTERNAL_ERROR)
        assert time.monotonic() - started < 10  # the 1 s timeout, not the 30 s sleep
    assert "Task timed out after 1.00 seconds" in caplog.text
    status, body = _call(f"{gateway.url}/ams/sleeps?s=0")
    assert (status, body["slept"]) == (200, True)
    timed_out = [r.getMessage() for r in caplog.records if "Status: timeout" in r.getMessage()]
    assert timed_out and "covenant-ams-sleeps" in timed_out[0]


def test_an_unhandled_exception_gets_api_gateways_502(gateway: Gateway, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="devstack.gateway"):
        assert _call(f"{gateway.url}/jnb/raises") == (502, INTERNAL_ERROR)
    assert "function error ValueError: the handler failed on purpose" in caplog.text


@pytest.mark.parametrize("kind", ["status", "body", "unserializable", "exit"])
def test_a_malformed_answer_gets_api_gateways_502(gateway: Gateway, kind: str) -> None:
    assert _call(f"{gateway.url}/ams/garbage?kind={kind}") == (502, INTERNAL_ERROR)


def test_an_answer_without_a_status_is_a_200_json_body(gateway: Gateway) -> None:
    assert _call(f"{gateway.url}/ams/garbage?kind=bare") == (200, {"bare": "value"})


def test_past_its_reserved_concurrency_a_function_is_throttled(gateway: Gateway) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_call, f"{gateway.url}/iad/throttled?s=2")
        time.sleep(1)  # the first holds the function's one environment
        assert _call(f"{gateway.url}/iad/throttled?s=0") == (500, INTERNAL_ERROR)
        assert first.result()[0] == 200
    assert _call(f"{gateway.url}/iad/throttled?s=0")[0] == 200
    assert gateway.runtime.pool_stats()["covenant-iad-throttled"]["throttles"] == 1


def test_past_the_integration_timeout_the_client_gets_503(caplog) -> None:
    # A gateway of its own: an integration timeout this short would turn the other tests'
    # waits on a loaded machine into 503s.
    server = Gateway(0, {}, functions={"slow": FUNCTIONS["slow"]}, integration_timeout_s=1)
    server.serve_in_thread()
    try:
        with caplog.at_level(logging.INFO, logger="devstack.lambda"):
            assert _call(f"{server.url}/sfo/slow?s=3") == (503, {"message": "Service Unavailable"})
            # The invocation itself runs to its end, as in AWS.
            deadline = time.monotonic() + 15
            while "covenant-sfo-slow" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        assert "covenant-sfo-slow" in caplog.text
    finally:
        server.shutdown()


def test_an_invocation_over_6_mb_is_rejected_and_over_10_mb_never_sent(gateway: Gateway) -> None:
    seven_mb = json.dumps({"pad": "x" * (7 * 1024 * 1024)}).encode()
    assert _call(f"{gateway.url}/ams/state", seven_mb) == (500, INTERNAL_ERROR)
    eleven_mb = b"x" * (11 * 1024 * 1024)
    status, body = _call(f"{gateway.url}/ams/state", eleven_mb)
    assert (status, body) == (413, {"message": "Request Entity Too Large"})


def test_bytes_that_are_not_utf8_reach_the_function_base64_encoded(gateway: Gateway) -> None:
    status, body = _call(f"{gateway.url}/ams/state", b"\xfb\xff{")
    assert (status, body["isBase64Encoded"], body["body"]) == (200, True, "+/97")


def test_slow_and_idle_clients_do_not_hold_up_others(gateway: Gateway) -> None:
    host, port = gateway.host, gateway.port
    held: list[socket.socket] = []
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                sock.sendall(b"x")
            except OSError:
                return
            stop.wait(0.5)

    try:
        for _ in range(10):  # a body sent a byte at a time
            sock = socket.create_connection((host, port))
            sock.sendall(
                b"POST /ams/state HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            held.append(sock)
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        for _ in range(10):  # keep-alive connections left idle after one request
            sock = socket.create_connection((host, port))
            sock.sendall(b"GET /ams/state HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)
            held.append(sock)
        for _ in range(20):
            started = time.monotonic()
            assert _call(f"{gateway.url}/ams/state", timeout=5)[0] == 200
            assert time.monotonic() - started < 5
    finally:
        stop.set()
        for sock in held:
            sock.close()


def test_500_concurrent_requests_get_500_answers_and_health_stays_fast(gateway: Gateway) -> None:
    async def burst() -> tuple[list[int], list[float]]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(n: int) -> int:
                region = ("ams", "syd", "iad")[n % 3]
                async with session.get(f"{gateway.url}/{region}/state?sleep=0.02") as response:
                    await response.read()
                    return response.status

            async def health_checks() -> list[float]:
                waits = []
                for _ in range(5):
                    started = time.monotonic()
                    async with session.get(f"{gateway.url}/ams/health") as response:
                        assert response.status == 200
                    waits.append(time.monotonic() - started)
                    await asyncio.sleep(0.2)
                return waits

            checks = asyncio.create_task(health_checks())
            statuses = await asyncio.gather(*(one(n) for n in range(500)))
            return statuses, await checks

    statuses, health_waits = asyncio.run(burst())
    assert statuses == [200] * 500
    # Another function's environments are not the flooded one's: health is answered while the
    # burst queues for its own (a loose bound: this is not a benchmark).
    assert max(health_waits) < 5, health_waits


def test_every_environment_has_its_own_region_in_both_of_lambdas_region_variables() -> None:
    """Lambda sets AWS_REGION and AWS_DEFAULT_REGION to the function's region; the Cognito
    pool's region reaches the functions as COGNITO_REGION, as the CDK app sets it."""
    for region in load_regions():
        config = next(iter(function_configs().values()))
        values = lambda_environment(config, region)
        assert values["AWS_REGION"] == values["AWS_DEFAULT_REGION"] == region.aws_region

"""The emulated cross-region hop: a secondary region's functions have no writer and reach the
primary region's functions through Lambda's Invoke API behind a proxy that adds the region
pair's round-trip time (devstack.hop)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from covenant.regions import get_region, primary_region
from devstack.gateway import Gateway
from devstack.hop import round_trip_ms, rtt_table

from .probes import probe_function

RTT_MS = 150.0


FUNCTIONS = {
    f.name: f
    for f in (
        probe_function("state", "state"),
        probe_function("raises", "raises"),
        probe_function("one", "sleeps", reserved=1),
    )
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    server = Gateway(
        0, {"DATABASE_URL": "postgresql://writer"}, functions=FUNCTIONS, hops={"syd": RTT_MS}
    )
    server.serve_in_thread()
    yield server
    server.shutdown()


def _lambda(endpoint: str) -> object:
    return boto3.client(
        "lambda",
        region_name=primary_region().aws_region,
        endpoint_url=endpoint,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


def test_the_table_has_every_pair_of_regions() -> None:
    from covenant.regions import load_regions

    table = rtt_table()
    regions = load_regions()
    for a in regions:
        for b in regions:
            assert round_trip_ms(a, b, table) == (0 if a == b else round_trip_ms(b, a, table))
            assert a == b or round_trip_ms(a, b, table) > 0


def test_a_secondary_has_no_writer_and_knows_its_way_to_the_primary(gateway: Gateway) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{gateway.url}/syd/state", timeout=10) as answer:
        syd = json.loads(answer.read())
    with urllib.request.urlopen(f"{gateway.url}/iad/state", timeout=10) as answer:
        iad = json.loads(answer.read())
    assert (syd["hasWriter"], syd["primaryFunction"]) == (False, "covenant-iad-state")
    assert syd["lambdaEndpoint"] == gateway.hop_url("syd")
    assert (iad["hasWriter"], iad["primaryFunction"], iad["lambdaEndpoint"]) == (True, None, None)


def test_an_invocation_through_the_hop_costs_its_round_trips(gateway: Gateway) -> None:
    client = _lambda(gateway.hop_url("syd"))
    started = time.monotonic()
    first = client.invoke(FunctionName="covenant-iad-state", Payload=b"{}")
    first["Payload"].read()  # a read answer gives the connection back for reuse
    cold = time.monotonic() - started
    started = time.monotonic()
    second = client.invoke(
        FunctionName="arn:aws:lambda:us-east-1:000000000000:function:covenant-iad-state:live",
        Payload=b"{}",
    )
    warm = time.monotonic() - started
    body = json.loads(json.loads(second["Payload"].read())["body"])
    assert first["StatusCode"] == 200 and body["region"] == "iad"
    # A new connection: TCP and TLS handshakes, then the request (3 round trips); a reused
    # one: the request alone.
    assert cold >= 3 * RTT_MS / 1000
    assert warm >= RTT_MS / 1000
    assert gateway.hops["syd"].connections == 1
    assert gateway.hops["syd"].round_trips == 2  # one request/answer turn per invocation


def test_the_invoke_api_answers_as_lambda_does(gateway: Gateway) -> None:
    client = _lambda(gateway.url)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="covenant-iad-nothing", Payload=b"{}")
    failed = client.invoke(FunctionName="covenant-iad-raises", Payload=b"{}")
    assert failed["FunctionError"] == "Unhandled"
    document = json.loads(failed["Payload"].read())
    assert (document["errorType"], document["errorMessage"]) == (
        "ValueError",
        "the handler failed on purpose",
    )
    import threading

    held = threading.Thread(
        target=client.invoke,
        kwargs={
            "FunctionName": "covenant-iad-one",
            "Payload": b'{"queryStringParameters": {"s": "1.5"}}',
        },
    )
    held.start()
    time.sleep(0.7)
    with pytest.raises(client.exceptions.TooManyRequestsException):
        client.invoke(FunctionName="covenant-iad-one", Payload=b"{}")
    held.join()
    assert get_region("syd").primary is False

"""The fan-out: COVENANT events from the real nats-server to the subscribers of a region, through
a real HTTP `@connections` server, with the connection store in moto."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import boto3
import nats
import pytest

from covenant.config import environment
from covenant.regions import get_region
from realtime import store
from realtime.fanout import FanOut, durable_name
from realtime.fanout import run_fanout as serve_stream
from realtime.management import Connections

from .conftest import ConnectionsApi, Socket, project_row, publish_changes, run_fanout, token

pytestmark = pytest.mark.usefixtures("fresh")

PROJECTS = """
subscription($f: ProjectFilter, $since: String) {
  projectChanged(filter: $f, since: $since) {
    eventId position action project { id name status region { code } } changedBy { sub }
  }
}"""


def nexts(api: ConnectionsApi, socket: Socket, sub_id: str = "s") -> list[dict[str, Any]]:
    return [m["payload"] for m in api.messages(socket.connection_id, "next") if m["id"] == sub_id]


def test_changes_reach_the_matching_subscribers_of_each_region_in_stream_order(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    active_jnb = Socket("ams", endpoints).open()
    active_jnb.subscribe("s", PROJECTS, f={"status": "ACTIVE", "region": "jnb"})
    everything = Socket("syd", endpoints).open()
    everything.subscribe("s", PROJECTS)
    rows = [
        project_row(name="one"),
        project_row(name="two", status="planning"),
        project_row(name="three", region="ams", country_code="IRL"),
        project_row(name="four"),
    ]
    ids = publish_changes(endpoints["NATS_URL"], [("projects", "created", r) for r in rows])
    run_fanout(endpoints, "ams")
    run_fanout(endpoints, "syd")
    got = nexts(connections_api, active_jnb)
    assert [p["data"]["projectChanged"]["eventId"] for p in got] == [ids[0], ids[3]]
    assert [p["data"]["projectChanged"]["project"]["name"] for p in got] == ["one", "four"]
    assert got[0]["data"]["projectChanged"]["project"]["region"] == {"code": "jnb"}
    every = [p["data"]["projectChanged"] for p in nexts(connections_api, everything)]
    assert [c["eventId"] for c in every] == ids
    positions = [int(c["position"]) for c in every]
    assert positions == sorted(positions) and len(set(positions)) == 4


def test_a_viewer_does_not_receive_who_made_a_change_and_an_admin_does(
    endpoints: dict[str, str], connections_api: ConnectionsApi, aws_server: Any
) -> None:
    pool = aws_server[1]
    viewer = Socket("ams", endpoints).open(token(pool, "viewer"))
    admin = Socket("ams", endpoints).open(token(pool, "admin"))
    anonymous = Socket("ams", endpoints).open()
    for socket in (viewer, admin, anonymous):
        socket.subscribe("s", PROJECTS)
    publish_changes(endpoints["NATS_URL"], [("projects", "updated", project_row())])
    run_fanout(endpoints, "ams")
    (seen_by_viewer,) = nexts(connections_api, viewer)
    assert seen_by_viewer["data"]["projectChanged"]["changedBy"] is None
    assert [e["extensions"]["code"] for e in seen_by_viewer["errors"]] == ["FORBIDDEN"]
    (seen_by_anonymous,) = nexts(connections_api, anonymous)
    assert seen_by_anonymous["data"]["projectChanged"]["changedBy"] is None
    assert seen_by_anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    (seen_by_admin,) = nexts(connections_api, admin)
    assert seen_by_admin["data"]["projectChanged"]["changedBy"] == {"sub": "sub-editor"}
    assert "errors" not in seen_by_admin


def test_since_resumes_after_the_last_position_seen_without_a_gap(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    first = Socket("ams", endpoints).open()
    first.subscribe("s", PROJECTS)
    ids = publish_changes(
        endpoints["NATS_URL"],
        [("projects", "updated", project_row(name=f"p{i}")) for i in range(3)],
    )
    run_fanout(endpoints, "ams")
    seen = [p["data"]["projectChanged"] for p in nexts(connections_api, first)]
    assert [c["eventId"] for c in seen] == ids
    first.disconnect()  # the client lost the connection after the first change
    later = publish_changes(
        endpoints["NATS_URL"],
        [("projects", "updated", project_row(name=f"q{i}")) for i in range(2)],
    )
    run_fanout(endpoints, "ams")  # nobody listening for these
    again = Socket("ams", endpoints).open()
    again.subscribe("s", PROJECTS, since=seen[0]["position"])
    run_fanout(endpoints, "ams")
    resumed = [p["data"]["projectChanged"]["eventId"] for p in nexts(connections_api, again)]
    assert resumed == [*ids[1:], *later]


def test_a_position_the_stream_no_longer_keeps_is_refused(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    publish_changes(endpoints["NATS_URL"], [("projects", "updated", project_row())] * 2)

    async def purge() -> None:
        client = await nats.connect(endpoints["NATS_URL"])
        await client.jetstream().purge_stream("COVENANT")
        await client.close()

    asyncio.run(purge())
    socket = Socket("ams", endpoints).open()
    socket.subscribe("s", PROJECTS, since="1")
    publish_changes(endpoints["NATS_URL"], [("projects", "updated", project_row())])
    run_fanout(endpoints, "ams")
    (error,) = connections_api.messages(socket.connection_id, "error")
    assert error["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "since"}
    assert nexts(connections_api, socket) == []


def test_stats_move_with_each_project_or_country_change_in_the_region(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    socket = Socket("sin", endpoints).open()
    socket.subscribe(
        "s",
        'subscription { statsChanged(region: "jnb") { eventId global { projectCount } '
        "regional { region { code } projectCount } } }",
    )
    kenya = {"code": "KEN", "name": "Kenya", "region": "jnb", "covenant_status": "active"}
    ireland = {"code": "IRL", "name": "Ireland", "region": "ams", "covenant_status": "active"}
    ids = publish_changes(
        endpoints["NATS_URL"],
        [
            ("projects", "updated", project_row()),
            ("projects", "updated", project_row(region="ams", country_code="IRL")),
            ("countries", "updated", ireland),
            ("countries", "updated", kenya),
        ],
    )
    run_fanout(endpoints, "sin")
    got = [p["data"]["statsChanged"] for p in nexts(connections_api, socket)]
    assert [g["eventId"] for g in got] == [ids[0], ids[3]]
    assert got[0]["global"]["projectCount"] >= 300
    assert [r["region"]["code"] for r in got[0]["regional"]] == ["jnb"]


def _items(endpoints: dict[str, str], region: str) -> list[dict[str, Any]]:
    dynamodb = boto3.client(
        "dynamodb",
        region_name=get_region(region).aws_region,
        endpoint_url=endpoints["DYNAMODB_ENDPOINT_URL"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    return [
        i for i in store.Store(dynamodb).all_items() if not i["connectionId"]["S"].startswith("#")
    ]


def test_a_gone_connection_is_cleaned_up(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    socket = Socket("ams", endpoints).open()
    socket.subscribe("s", PROJECTS)
    assert len(_items(endpoints, "ams")) == 2
    connections_api.gone.add(socket.connection_id)  # the client vanished; no $disconnect
    publish_changes(endpoints["NATS_URL"], [("projects", "updated", project_row())])
    assert run_fanout(endpoints, "ams")["gone"] == 1
    assert _items(endpoints, "ams") == []


def test_expired_sessions_and_connections_that_never_initialise_are_closed(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    silent = Socket("ams", endpoints, connected_at=int(time.time() * 1000) - 60_000)
    silent.connect()
    expired = Socket("ams", endpoints).open()
    dynamodb = boto3.client(
        "dynamodb",
        region_name=get_region("ams").aws_region,
        endpoint_url=endpoints["DYNAMODB_ENDPOINT_URL"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    dynamodb.update_item(
        TableName=store.DEFAULT_TABLE,
        Key={"connectionId": {"S": expired.connection_id}, "item": {"S": "connection"}},
        UpdateExpression="SET tokenExpiresAt = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    fresh_one = Socket("ams", endpoints).open()
    assert run_fanout(endpoints, "ams", idle_exit_s=0.5)["closed"] == 2
    assert sorted(connections_api.closed) == sorted(
        [("ams", silent.connection_id), ("ams", expired.connection_id)]
    )
    assert {i["connectionId"]["S"] for i in _items(endpoints, "ams")} == {fresh_one.connection_id}


def _three_subscribers_then_changes(
    endpoints: dict[str, str], changes: int
) -> tuple[list[Socket], list[str]]:
    sockets = [Socket("ams", endpoints).open() for _ in range(3)]
    for socket in sockets:
        socket.subscribe("s", PROJECTS)
    ids = publish_changes(
        endpoints["NATS_URL"],
        [("projects", "updated", project_row(name=f"p{i}")) for i in range(changes)],
    )
    return sockets, ids


def test_a_fanout_killed_mid_stream_loses_nothing_and_repeats_at_most_the_message_in_flight(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    sockets, ids = _three_subscribers_then_changes(endpoints, 40)
    connections_api.hold_after = 50  # the 51st post waits: kill the fan-out then
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER],
        env={**os.environ, **endpoints, "CONSUMER_IDLE_EXIT_S": "5"},
    )
    try:
        assert connections_api.held.wait(60), "the fan-out never reached the 51st post"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    connections_api.hold_after = None
    connections_api.release.set()
    assert len(connections_api.posted) == 50  # three acks, then 47 changes before the kill
    run_fanout(endpoints, "ams", idle_exit_s=3)  # the batch comes back after its ack wait
    # docs/realtime.md, "What is guaranteed": every change, in stream order; a subscription
    # whose post was accepted but not yet recorded when the fan-out died gets that one message
    # again, right after it, with the same eventId and position (a client keeping its last
    # position drops it).
    for socket in sockets:
        got = [p["data"]["projectChanged"] for p in nexts(connections_api, socket)]
        kept = [c for n, c in enumerate(got) if n == 0 or c != got[n - 1]]
        assert [c["eventId"] for c in kept] == ids, socket.connection_id
        assert len(got) - len(kept) <= 1, f"{socket.connection_id}: repeated {len(got) - len(kept)}"


def test_a_run_out_of_time_stops_mid_batch_and_the_next_repeats_nothing(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    sockets, ids = _three_subscribers_then_changes(endpoints, 10)
    stop_at = len(connections_api.posted) + 7  # the run's time is up after 7 of 30 posts

    async def short_run() -> None:
        client = await nats.connect(endpoints["NATS_URL"])
        ams = get_region("ams")
        fanout = FanOut(
            store.Store(store.client(ams.aws_region)), Connections(ams), client.jetstream(), "ams"
        )
        try:
            await serve_stream(
                client,
                fanout,
                durable_name("ams"),
                should_stop=lambda: len(connections_api.posted) >= stop_at,
            )
        finally:
            fanout.pool.shutdown()
            await client.close()

    with environment(endpoints):
        asyncio.run(short_run())
    assert stop_at <= len(connections_api.posted) < stop_at + 3  # the posts already going
    run_fanout(endpoints, "ams", idle_exit_s=4)  # the rest of the batch, back after 2 s
    for socket in sockets:
        got = [p["data"]["projectChanged"]["eventId"] for p in nexts(connections_api, socket)]
        assert got == ids, socket.connection_id


def test_subscriptions_added_and_completed_during_a_run_are_seen_at_the_next_batch(
    endpoints: dict[str, str], connections_api: ConnectionsApi
) -> None:
    first = Socket("ams", endpoints).open()
    first.subscribe("s", PROJECTS)
    run = threading.Thread(target=run_fanout, args=(endpoints, "ams", 4.0))
    run.start()
    try:
        before = publish_changes(
            endpoints["NATS_URL"], [("projects", "updated", project_row(name="before"))]
        )
        _wait_for(lambda: len(nexts(connections_api, first)) == 1)
        # The run keeps its view of the shard between batches; these must reach it.
        second = Socket("ams", endpoints).open()
        second.subscribe("s", PROJECTS)
        first.send({"id": "s", "type": "complete"})
        after = publish_changes(
            endpoints["NATS_URL"], [("projects", "updated", project_row(name="after"))]
        )
        _wait_for(lambda: len(nexts(connections_api, second)) == 1)
    finally:
        run.join()
    assert [p["data"]["projectChanged"]["eventId"] for p in nexts(connections_api, first)] == before
    assert [p["data"]["projectChanged"]["eventId"] for p in nexts(connections_api, second)] == after


def _wait_for(condition: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


_WORKER = """
import threading
from covenant.regions import primary_region
from devstack.functions import LocalContext, get_function, load_handler
from covenant.config import environment
from devstack.functions import function_environment
import os
spec = get_function("fanout")
region = primary_region()
with environment({**dict(os.environ), **function_environment(spec, region, dict(os.environ))}):
    load_handler(spec)({"region": "ams"}, LocalContext(spec, region, 60))
"""


def test_a_session_signed_out_everywhere_is_closed(
    endpoints: dict[str, str],
    connections_api: ConnectionsApi,
    aws_server: Any,
    wait_for_replica: Any,
) -> None:
    from covenant.revocation import record_sign_out

    from .conftest import token_claims_sub

    access = token(aws_server[1], "editor")
    signed_in = Socket("ams", endpoints).open(access)
    signed_in.subscribe("s", PROJECTS)
    anonymous = Socket("ams", endpoints).open()
    assert run_fanout(endpoints, "ams", idle_exit_s=0.5)["closed"] == 0
    record_sign_out(token_claims_sub(access))
    wait_for_replica()
    # The fan-out checks each session every REVOCATION_EVERY_S: a new run checks at once.
    assert run_fanout(endpoints, "ams", idle_exit_s=0.5)["closed"] == 1
    assert connections_api.closed == [("ams", signed_in.connection_id)]
    assert {i["connectionId"]["S"] for i in _items(endpoints, "ams")} == {anonymous.connection_id}

"""The consumers' NATS settings take a cluster's server list, as the bridge's do."""

from __future__ import annotations

from covenant.config import environment
from covenant.consumer import connection_options


def test_a_comma_separated_nats_url_is_every_server_of_the_cluster() -> None:
    with environment({"NATS_URL": "nats://a:4222, nats://b:4223,nats://c:4224"}):
        assert connection_options()["servers"] == [
            "nats://a:4222",
            "nats://b:4223",
            "nats://c:4224",
        ]

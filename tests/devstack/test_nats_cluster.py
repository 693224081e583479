"""`COVENANT_NATS_NODES`: which NATS `make dev` starts, and how a cluster's nodes are laid out
(no process started here: tests/functions/bridge/test_cluster.py runs a real cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.errors import DevStackError
from devstack.nats import NatsCluster
from devstack.stack import StackOptions


def test_one_node_by_default_three_on_request(monkeypatch) -> None:
    monkeypatch.delenv("COVENANT_NATS_NODES", raising=False)
    options = StackOptions.from_environment(data_dir=Path("/tmp/unused"))
    assert (options.nats_nodes, options.nats_replicas) == (1, 1)
    monkeypatch.setenv("COVENANT_NATS_NODES", "3")
    options = StackOptions.from_environment(data_dir=Path("/tmp/unused"))
    assert (options.nats_nodes, options.nats_replicas, options.nats_cluster_port) == (3, 3, 6222)


@pytest.mark.parametrize("nodes", ["2", "4", "0", "three"])
def test_a_cluster_without_a_majority_is_refused(monkeypatch, nodes) -> None:
    monkeypatch.setenv("COVENANT_NATS_NODES", nodes)
    with pytest.raises(DevStackError, match="COVENANT_NATS_NODES must be 1, 3 or 5"):
        StackOptions.from_environment(data_dir=Path("/tmp/unused"))


def test_each_node_has_its_own_store_and_ports_and_routes_to_the_others(tmp_path) -> None:
    cluster = NatsCluster(tmp_path, 3, 4222, 8222, 6222)
    assert [n.data_dir for n in cluster.nodes] == [tmp_path / f"n{i}" for i in (1, 2, 3)]
    assert [(n.port, n.monitor_port, n.cluster_port) for n in cluster.nodes] == [
        (4222, 8222, 6222),
        (4223, 8223, 6223),
        (4224, 8224, 6224),
    ]
    assert [n.routes for n in cluster.nodes] == [(6223, 6224), (6222, 6224), (6222, 6223)]
    assert len({n.name for n in cluster.nodes}) == 3
    assert cluster.url == "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"

"""`make cluster`'s layout, without starting it: the order children stop in, HAProxy's configuration,
each node's own configuration, the programs it needs (the running cluster: tests/cluster)."""

from __future__ import annotations

import pytest

from services.common import config as config_mod
from services.mesh import cluster, haproxy
from services.mesh.supervisor import Child, ChildSpec, _stop_batches
from tests.conftest import REPO


def names(batches: list[list[list[Child]]]) -> list[list[list[str]]]:
    return [[[c.spec.name for c in chain] for chain in batch] for batch in batches]


def test_children_stop_in_reverse_order_with_the_nodes_of_a_cluster_side_by_side() -> None:
    mesh = config_mod.MeshConfig()
    specs = [ChildSpec("redis", ())]
    specs += [
        ChildSpec(f"{n}-{p}", (), group=n) for n in ("node1", "node2") for p in ("hub", "executor", "edge")
    ]
    specs += [ChildSpec("haproxy", ())]
    children = [Child(s, mesh, {}) for s in specs]
    assert names(_stop_batches(children)) == [
        [["haproxy"]],
        [["node2-edge", "node2-executor", "node2-hub"], ["node1-edge", "node1-executor", "node1-hub"]],
        [["redis"]],
    ]
    plain = [Child(ChildSpec(n, ()), mesh, {}) for n in ("hub", "executor", "edge")]  # make run: one by one
    assert names(_stop_batches(plain)) == [[["edge"]], [["executor"]], [["hub"]]]


def test_haproxy_balances_every_edge_checked_on_its_health_route_with_a_host_it_accepts() -> None:
    backends = [haproxy.Backend("node1", "127.0.0.1:8082"), haproxy.Backend("node2", "127.0.0.1:8083")]
    text = haproxy.config(7, backends, 300.0, "127.0.0.1")
    for line in (
        "bind fd@7",
        "balance roundrobin",
        "http-check send meth GET uri /api/v1/health ver HTTP/1.1 hdr Host 127.0.0.1",
        "server node1 127.0.0.1:8082",
        "server node2 127.0.0.1:8083",
        "use-server node2 if { req.hdr(x-toolscore-edge) -m str node2 }",
        "timeout server 330s",
        "retry-on conn-failure",
        "option http-server-close",
        "option forwardfor",  # the client's address, for the edges' per-client bounds
    ):
        assert f"    {line}\n" in text, line
    assert "cookie" not in text and "stick" not in text  # no stickiness


def test_each_node_gets_its_own_id_sockets_and_data_and_the_shared_redis() -> None:
    cfg = config_mod.load(REPO / "config" / "toolscore.toml", env={})
    opts = cluster.ClusterOptions()
    one, two = (
        cluster.node_env(cfg, opts, n, hub, edge, "redis://127.0.0.1:6380/0")
        for n, hub, edge in (("node1", 50051, 8082), ("node2", 50061, 8083))
    )
    assert (one["TOOLSCORE_CLUSTER__NODE_ID"], two["TOOLSCORE_CLUSTER__NODE_ID"]) == ("node1", "node2")
    assert (one["TOOLSCORE_HUB__TCP"], two["TOOLSCORE_HUB__TCP"]) == ("127.0.0.1:50051", "127.0.0.1:50061")
    shared = {k for k in one if one[k] == two[k]}
    assert shared == {
        "TOOLSCORE_MESH__MODE",
        "TOOLSCORE_STORE__BACKEND",
        "TOOLSCORE_FEED__BACKEND",
        "TOOLSCORE_RUNTIME__TASK_BACKEND",
        "TOOLSCORE_EDGE__MCP_SESSION_STORE",
        "TOOLSCORE_CLUSTER__REDIS_URL",
        "TOOLSCORE_EDGE__HOST",
        "TOOLSCORE_EDGE__HUB",
        "TOOLSCORE_EDGE__TRUSTED_PROXIES",
    }
    node_cfg = config_mod.load(REPO / "config" / "toolscore.toml", env=one)
    assert node_cfg.store.backend == node_cfg.feed.backend == "redis"
    # HAProxy connects from the cluster's host: its X-Forwarded-For names each client.
    assert node_cfg.edge.trusted_proxies == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("host", "proxies"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("localhost", ["127.0.0.1"]),  # and ::1 where the machine resolves it
        ("0.0.0.0", ["127.0.0.1", "::1"]),  # the edges' connections are local ones
        ("::1", ["::1"]),
    ],
)
def test_the_edges_trust_haproxy_from_the_addresses_the_host_names(host: str, proxies: list[str]) -> None:
    cfg = config_mod.load(REPO / "config" / "toolscore.toml", env={})
    env = cluster.node_env(cfg, cluster.ClusterOptions(host=host), "node1", 50051, 8082, "redis://x:1/0")
    trusted = config_mod.load(REPO / "config" / "toolscore.toml", env=env).edge.trusted_proxies
    assert set(proxies) <= set(trusted) and all(t in ("127.0.0.1", "::1") for t in trusted), trusted


def test_a_missing_program_is_named_with_the_command_that_installs_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = cluster.ClusterOptions(redis_server=str(tmp_path / "none"), haproxy=str(tmp_path / "nada"))
    with pytest.raises(cluster.MissingProgram, match="apt-get install redis-server haproxy"):
        cluster.find_programs(opts)

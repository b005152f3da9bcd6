"""Installs in a cluster: real hubs on one real Redis, each a node, with the local package index.

A server installed through one hub runs on every hub node, one replica each, callable through
each; an uninstall through any hub removes every replica; a node started later (or one that was
down during an uninstall) converges to the installed set in Redis; a node that cannot install is
reported as such, not hidden; with Redis down, installs and uninstalls are refused with
UNAVAILABLE and calls go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from toolscore.v1 import discovery_pb2 as pb

from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import struct_to_dict
from services.discovery import catalog as catalog_mod
from services.discovery.installed_set import InstallSpec
from services.hub.app import Hub
from tests.discovery.conftest import NS, PackageIndex, build_wheel, processes_under, server_json
from tests.discovery.test_install_lifecycle import Stubs, _publish_echo
from tests.discovery.test_rest_routes import _rest
from tests.helpers import deadline, reason_of
from tests.library.test_redis_registry import shared_cfg

TOOL_ID = "io.github.toolscore-tests.ts-echo"


def node_cfg(dcfg: Config, root: Path, redis_server: Any, name: str, **discovery: Any) -> Config:
    c = shared_cfg(dcfg, root, redis_server.url, name)
    return config_mod.replace(c, discovery=discovery) if discovery else c


@contextlib.asynccontextmanager
async def node(cfg: Config) -> AsyncIterator[tuple[Hub, Stubs]]:
    """A hub and stubs over its TCP address (what other nodes reach)."""
    async with Hub(cfg) as hub, grpc.aio.insecure_channel(hub.tcp_target or "") as ch:
        yield hub, Stubs(ch)


def where(hub: Hub) -> list[str]:
    """The nodes serving the echo server's tool, as `hub` sees it."""
    entry = hub.registry.entry(TOOL_ID)
    return [] if entry is None else sorted([entry.tool.node_id, *(r.node_id for r in entry.tool.replicas)])


async def converged(hub: Hub, until: Callable[[], bool] | None = None) -> None:
    """Wait until `hub`'s discovery reconciled with the installed set (once, or until `until()`)."""
    cluster = hub.discovery.cluster
    assert cluster is not None
    done = until or (lambda: cluster.rounds >= 1)
    async with deadline(120, f"node {hub.cfg.cluster.node_id} to converge"), cluster.converged:
        await cluster.converged.wait_for(done)


async def applied(hub: Hub, other: Hub) -> None:
    assert hub.redis_feed is not None
    await hub.redis_feed.wait_applied(other.registry.revision)


async def test_an_install_through_one_hub_runs_on_every_node_and_an_uninstall_through_another_removes_all(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    async with (
        node(node_cfg(dcfg, root, redis_server, "hub1")) as (h1, one),
        node(node_cfg(dcfg, root, redis_server, "hub2")) as (h2, two),
    ):
        installed = await one.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=240)
        assert installed.server.state == pb.SERVER_STATE_RUNNING
        assert [(n.node_id, n.ok, n.error_reason) for n in installed.nodes] == [("hub2", True, "")]
        await applied(h1, h2)
        assert where(h1) == where(h2) == ["hub1", "hub2"]
        assert TOOL_ID in h1.discovery.runners and TOOL_ID in h2.discovery.runners

        for stubs in (one, two):  # each node runs it on its own replica (local first)
            resp = await stubs.call(TOOL_ID, "add", a=2, b=40)
            assert not resp.is_error and struct_to_dict(resp.structured) == {"sum": 42}
        assert (h1.registry.entry(TOOL_ID).calls, h2.registry.entry(TOOL_ID).calls) == (1, 1)

        dirs = [h.discovery.installer.dir_for(TOOL_ID) for h in (h1, h2)]
        removed = await two.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=60)
        assert list(removed.removed_tool_ids) == [TOOL_ID]
        assert [(n.node_id, n.ok) for n in removed.nodes] == [("hub1", True)]
        await applied(h1, h2)
        assert h1.registry.entry(TOOL_ID) is None and h2.registry.entry(TOOL_ID) is None
        assert not h1.discovery.records and not h2.discovery.records
        for d in dirs:
            assert not d.exists() and not processes_under(d)
        assert redis_server.client().hlen("toolscore:servers") == 0


async def test_a_node_started_later_installs_the_clusters_servers_and_one_down_at_an_uninstall_removes_them(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    c3 = node_cfg(dcfg, root, redis_server, "hub3")
    async with node(node_cfg(dcfg, root, redis_server, "hub1")) as (h1, one):
        installed = await one.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=240)
        assert list(installed.nodes) == []  # no other node yet
        async with node(c3) as (h3, three):
            await converged(h3)
            await applied(h1, h3)
            assert where(h1) == where(h3) == ["hub1", "hub3"]
            resp = await three.call(TOOL_ID, "echo", text="on the late node")
            assert resp.content[0].text.text == "on the late node"
            assert h3.registry.entry(TOOL_ID).calls == 1  # its own replica ran it
            install_dir = h3.discovery.installer.dir_for(TOOL_ID)
        # hub 3 stopped cleanly: its replica withdrawn; the uninstall cannot reach it
        assert where(h1) == ["hub1"]
        removed = await one.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=60)
        assert list(removed.nodes) == [] and h1.registry.entry(TOOL_ID) is None
        assert install_dir.exists()  # hub 3's files, until it hears of the uninstall
        async with node(c3) as (h3, _):
            await converged(h3)
            assert not h3.discovery.records and h3.registry.entry(TOOL_ID) is None
            assert not install_dir.exists() and not processes_under(install_dir)


async def test_a_node_that_cannot_install_is_reported_and_the_others_serve_the_server(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    strict = node_cfg(dcfg, root, redis_server, "hub2", allowed_packages=("pypi:other-*",))
    async with (
        node(node_cfg(dcfg, root, redis_server, "hub1")) as (h1, one),
        node(strict) as (h2, two),
    ):
        installed = await one.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=240)
        (outcome,) = installed.nodes
        assert (outcome.node_id, outcome.ok, outcome.error_reason) == ("hub2", False, "INSTALL_NOT_ALLOWED")
        assert "not allowed" in outcome.error_message
        await applied(h2, h1)
        assert where(h2) == ["hub1"] and not h2.discovery.records
        resp = await two.call(TOOL_ID, "echo", text="forwarded")  # hub 2 forwards it to hub 1
        assert resp.content[0].text.text == "forwarded"
        assert (h1.registry.entry(TOOL_ID).calls, h2.registry.entry(TOOL_ID).calls) == (1, 0)


async def test_with_redis_down_installs_and_uninstalls_are_refused_and_calls_go_on(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    async with node(node_cfg(dcfg, root, redis_server, "hub1")) as (h1, one):
        await one.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=240)
        redis_server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await one.ts.InstallServer(pb.InstallServerRequest(name=f"{name}-other"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(refused.value) == "INSTALLS_UNAVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await one.ts.UninstallServer(pb.UninstallServerRequest(name=name), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(refused.value) == "INSTALLS_UNAVAILABLE"
        resp = await one.call(TOOL_ID, "add", a=1, b=2)  # the installed server still serves
        assert not resp.is_error and struct_to_dict(resp.structured) == {"sum": 3}
        assert TOOL_ID in h1.discovery.runners
        await redis_server.start()


async def test_with_install_replicas_two_of_three_nodes_run_the_server_and_a_spare_takes_over_a_stopped_ones(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    c1, c2, c3 = (
        config_mod.replace(node_cfg(dcfg, root, redis_server, n), cluster={"install_replicas": 2})
        for n in ("hub1", "hub2", "hub3")
    )
    async with node(c1) as (h1, one), node(c3) as (h3, _):
        async with node(c2) as (h2, _):
            installed = await one.ts.InstallServer(pb.InstallServerRequest(name=name), timeout=240)
            assert [(n.node_id, n.ok) for n in installed.nodes] == [("hub2", True)]  # one more, by id
            await converged(h3, lambda: h3.discovery.cluster.rounds >= 2)
            await applied(h3, h2)
            assert where(h3) == ["hub1", "hub2"] and not h3.discovery.records
        # hub 2 stopped cleanly (its replica withdrawn): hub 3, spare, takes its place
        await converged(h3, lambda: TOOL_ID in h3.discovery.runners)
        await applied(h1, h3)
        assert where(h1) == ["hub1", "hub3"]


async def test_over_rest_an_install_reports_each_node_and_with_redis_down_is_a_503(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    name = _publish_echo(pkg_index, root)
    async with (
        node(node_cfg(dcfg, root, redis_server, "hub2")),
        contextlib.aclosing(_rest(node_cfg(dcfg, root, redis_server, "hub1"))) as rests,
    ):
        rest = await anext(rests)
        status, body = await rest.request("POST", "/mcp/install", {"name": name})
        assert status == 200 and body["nodes"] == [
            {"node_id": "hub2", "ok": True, "reason": "", "message": ""}
        ]
        redis_server.stop()
        status, body = await rest.request("DELETE", f"/api/v1/tools/servers/{name}")
        assert (status, body["reason"]) == (503, "INSTALLS_UNAVAILABLE")
        status, body = await rest.request("POST", "/mcp/install", {"name": name})
        assert (status, body["reason"]) == (503, "INSTALLS_UNAVAILABLE")
        await redis_server.start()


async def test_a_server_in_the_installed_set_that_calls_itself_curated_is_held_to_this_nodes_policy(
    dcfg: Config, pkg_index: PackageIndex, root: Path, redis_server: Any
) -> None:
    wheels = root / "wheels"
    wheels.mkdir()
    pkg_index.add_wheel(build_wheel(wheels, "evil-mcp", "1.0.0"), "evil-mcp")  # allowed: ts-* only
    doc = server_json(f"{NS}/evil", "Not in any catalog of this node", "pypi", "evil-mcp", "1.0.0")
    forged = InstallSpec(doc["name"], "", "", catalog_mod.parse_server(doc, catalog_mod.CURATED))
    redis_server.client().hset("toolscore:servers", forged.name, forged.to_json())
    async with node(node_cfg(dcfg, root, redis_server, "hub1")) as (h1, _):
        await converged(h1)
        assert not h1.discovery.records and not h1.discovery.runners

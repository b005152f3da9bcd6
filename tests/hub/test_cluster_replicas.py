"""Replicas as nodes come and go: two (or three) real hubs on one real Redis (docs/cluster.md).

A hub's `[[function_tools]]` list prunes only its own replicas; a hub that stops cleanly
withdraws its replicas of tools other nodes also serve; a hub started with the default node id
(`<hostname>-<pid>`) drops the replicas an earlier, gone process of this machine left behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from services.common.config import Config, FunctionToolConfig
from services.hub.app import Hub
from tests.helpers import grpc_tool
from tests.hub.test_cluster_routing import server_named
from tests.library.test_redis_registry import shared_cfg


def _with_functions(c: Config, *tool_ids: str) -> Config:
    tools = tuple(FunctionToolConfig(tool_id=t, functions=("tests.helpers:nap",)) for t in tool_ids)
    return dataclasses.replace(c, function_tools=tools)


def _where(hub: Hub, tool_id: str) -> list[str]:
    entry = hub.registry.entry(tool_id)
    assert entry is not None, tool_id
    return [entry.tool.node_id, *(r.node_id for r in entry.tool.replicas)]


async def test_hubs_with_different_function_tool_lists_keep_each_others_function_tools(
    cfg: Config, root: Path, redis_server: Any
) -> None:
    c1 = _with_functions(shared_cfg(cfg, root, redis_server.url, "hub1"), "only-one", "both")
    c2 = _with_functions(shared_cfg(cfg, root, redis_server.url, "hub2"), "only-two", "both")
    async with Hub(c1) as h1, Hub(c2) as h2:
        assert h1.redis_feed is not None
        await h1.redis_feed.wait_applied(h2.registry.revision)
        for hub in (h1, h2):
            assert _where(hub, "only-one") == ["hub1"]
            assert _where(hub, "only-two") == ["hub2"]
            assert _where(hub, "both") == ["hub1", "hub2"]


async def test_a_hub_that_stops_cleanly_withdraws_its_replicas_and_keeps_tools_only_it_serves(
    cfg: Config, root: Path, redis_server: Any, start_tool_server: Any
) -> None:
    _, ep_a = await start_tool_server({"rep": server_named("a", [])}, name="a")
    _, ep_b = await start_tool_server({"rep": server_named("b", [])}, name="b")
    _, ep_own = await start_tool_server({"own": server_named("o", [])}, name="o")
    async with Hub(shared_cfg(cfg, root, redis_server.url, "hub1")) as h1:
        async with Hub(shared_cfg(cfg, root, redis_server.url, "hub2")) as h2:
            await h1.registry.register(grpc_tool("rep", ep_a))
            await h2.registry.register(grpc_tool("rep", ep_b))
            _, _, _, revision = await h2.registry.register(grpc_tool("own", ep_own))
            assert h1.redis_feed is not None
            await h1.redis_feed.wait_applied(revision)
            assert _where(h1, "rep") == ["hub1", "hub2"]
        # hub 2 stopped: its replica of rep is gone from hub 1's view; own, only hub 2's, stays
        assert _where(h1, "rep") == ["hub1"]
        assert _where(h1, "own") == ["hub2"]


async def _dead_pid() -> int:
    proc = await asyncio.create_subprocess_exec("true")
    async with asyncio.timeout(10):
        await proc.wait()
    return proc.pid


async def test_a_gone_processs_replica_under_a_default_node_id_is_dropped_when_the_tool_registers_again(
    cfg: Config, root: Path, redis_server: Any, start_tool_server: Any
) -> None:
    host = socket.gethostname()
    before, now = f"{host}-{await _dead_pid()}", f"{host}-{os.getpid()}"  # as the default names them
    _, ep_old = await start_tool_server({"rep": server_named("old", [])}, name="old")
    _, ep_new = await start_tool_server({"rep": server_named("new", [])}, name="new")
    _, ep_kept = await start_tool_server({"rep": server_named("kept", [])}, name="kept")
    async with Hub(shared_cfg(cfg, root, redis_server.url, before)) as gone:
        await gone.registry.register(grpc_tool("rep", ep_old))
    async with (
        Hub(shared_cfg(cfg, root, redis_server.url, "elsewhere")) as other,
        Hub(shared_cfg(cfg, root, redis_server.url, now)) as hub,
    ):
        assert _where(hub, "rep") == [before]  # its only replica is kept while nothing replaces it
        await other.registry.register(grpc_tool("rep", ep_kept))
        await hub.registry.register(grpc_tool("rep", ep_new))
        # the process `before` named is gone: its replica goes; another machine's node stays
        assert sorted(_where(hub, "rep")) == sorted(["elsewhere", now])

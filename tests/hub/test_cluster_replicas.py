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

import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import config as config_mod
from services.common.config import Config, FunctionToolConfig
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.hub.app import Hub
from tests.helpers import deadline, grpc_tool
from tests.hub.test_cluster_routing import server_named
from tests.library.test_redis_registry import shared_cfg

UNHEALTHY = tool_pb2.HEALTH_STATUS_UNHEALTHY


def _with_functions(c: Config, *tool_ids: str) -> Config:
    tools = tuple(FunctionToolConfig(tool_id=t, functions=("tests.helpers:nap",)) for t in tool_ids)
    return dataclasses.replace(c, function_tools=tools)


def _schemas(tool: tool_pb2.Tool) -> list[tuple[str, str, dict[str, Any]]]:
    return [(c.name, c.description, struct_to_dict(c.input_schema)) for c in tool.capabilities]


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
        # the definition left is the whole one (an entry keeps only a head parsed: no schemas)
        kept = h1.registry.entry("rep")
        assert kept is not None and _schemas(kept.full()) == _schemas(grpc_tool("rep", ep_a))


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


async def test_a_replica_of_a_node_that_died_is_recorded_unhealthy_and_is_tried_last(
    cfg: Config, root: Path, redis_server: Any, start_tool_server: Any, monkeypatch: Any
) -> None:
    served: list[str] = []
    _, ep_a = await start_tool_server({"rep": server_named("a", served)}, name="a")
    _, ep_b = await start_tool_server({"rep": server_named("b", served)}, name="b")
    c1, c2 = (
        config_mod.replace(
            shared_cfg(cfg, root, redis_server.url, name, health_interval_s=0.1),
            cluster={"replicas": "round_robin", "node_ttl_s": 2.0},  # dead after 2s unannounced
        )
        for name in ("hub1", "ghost")
    )
    async with Hub(c1) as h1, grpc.aio.insecure_channel(h1.uds_target or "") as ch:
        down = asyncio.Event()

        def watch(event: Any) -> None:
            if any(r.node_id == "ghost" and r.health == UNHEALTHY for r in event.tool.replicas):
                down.set()

        h1.registry.listeners.append(watch)
        # it will die: its announcement goes, its replica stays listed (no clean withdrawal)
        monkeypatch.setattr(Hub, "_withdraw_replicas", _nothing)
        async with Hub(c2) as ghost:
            await h1.registry.register(grpc_tool("rep", ep_a))
            _, _, _, revision = await ghost.registry.register(grpc_tool("rep", ep_b))
            assert h1.redis_feed is not None
            await h1.redis_feed.wait_applied(revision)
            assert not down.is_set()
        async with deadline(10, "hub 1 to record the dead node's replica unhealthy"):
            await down.wait()
        stubs = lib_grpc.ToolLibraryServiceStub(ch)
        tool = (await stubs.GetTool(lib.GetToolRequest(tool_id="rep"), timeout=5)).tool
        assert [(r.node_id, r.health) for r in tool.replicas] == [("ghost", UNHEALTHY)]
        assert _schemas(tool) == _schemas(grpc_tool("rep", ep_a))  # the health change kept them

        asked: list[str] = []
        forward = h1.router._forward
        assert forward is not None

        async def spy(node: str, *args: Any) -> Any:
            asked.append(node)
            return await forward(node, *args)

        monkeypatch.setattr(h1.router, "_forward", spy)
        served.clear()
        toolscore = ts_grpc.ToolScoreServiceStub(ch)
        for i in range(4):  # round robin: without the health, every other call would try it first
            req = ts.ExecuteToolRequest(
                tool_id="rep", action="echo", arguments=dict_to_struct({"text": str(i)})
            )
            assert not (await toolscore.ExecuteTool(req, timeout=10)).is_error
        assert served == ["a"] * 4 and asked == []


async def _nothing(hub: Hub) -> None:
    return None

"""Across nodes: a change committed through one node's hub is seen through the other node's edge,
and calls, local or forwarded to the node that holds their tool, never reach Redis."""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
import redis
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common.jsonvalue import dict_to_struct
from services.toolkit import Action
from tests.cluster.conftest import RunningCluster
from tests.helpers import deadline, grpc_tool

# Redis quiet between calls: no heartbeat (a 300 s TTL beats every 100 s), no usage flush.
QUIET = {"TOOLSCORE_CLUSTER__NODE_TTL_S": "300", "TOOLSCORE_HUB__STATS_FLUSH_S": "3600"}


def commands_run(client: redis.Redis) -> int:
    """Every command Redis has run so far, but the INFO that asks."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


async def echo_server(text: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": text["text"]}


async def test_a_registration_on_hub_1_is_seen_on_edge_2_and_calls_through_either_node_never_reach_redis(
    cluster_factory: Any, start_tool_server: Any
) -> None:
    cluster: RunningCluster = await cluster_factory(extra_env=QUIET)
    edge2 = cluster.edges["node2"]
    _, socket_2 = await start_tool_server({"held-by-2": [Action("echo", "", echo_server)]})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        ws_url = edge2.replace("http", "ws", 1) + "/api/v1/events/tools?tool_ids=from-hub-1,held-by-2"
        async with http.ws_connect(ws_url) as ws:
            async with deadline(10, "the events WebSocket's welcome"):
                assert (await ws.receive_json())["type"] == "welcome"
            async with grpc.aio.insecure_channel(cluster.hubs["node1"]) as ch:
                reply = await lib_grpc.ToolLibraryServiceStub(ch).RegisterTool(
                    lib.RegisterToolRequest(tool=grpc_tool("from-hub-1", "127.0.0.1:1")), timeout=10
                )
            async with deadline(10, "the registration's event on edge 2"):
                event = await ws.receive_json()
            assert (event["type"], event["tool_id"], event["revision"]) == (
                "tool_installed",
                "from-hub-1",
                reply.revision,
            )
            async with http.get(f"{edge2}/api/v1/tools/from-hub-1") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["tool_id"] == "from-hub-1"

            # Settle the registry: both tools' first health checks committed (they write to Redis).
            async with grpc.aio.insecure_channel(cluster.hubs["node2"]) as ch:
                await lib_grpc.ToolLibraryServiceStub(ch).RegisterTool(
                    lib.RegisterToolRequest(tool=grpc_tool("held-by-2", socket_2)), timeout=10
                )
            health = {"from-hub-1": "unhealthy", "held-by-2": "healthy"}
            async with deadline(20, "both tools' first health checks"):
                while health:
                    event = await ws.receive_json()
                    if (
                        event["type"] == "tool_health_changed"
                        and health.get(event["tool_id"]) == event["health"]
                    ):
                        del health[event["tool_id"]]

        client = redis.Redis(unix_socket_path=str(cluster.root / "run" / "redis.sock"), socket_timeout=5)
        before = commands_run(client)
        body = {"action": "echo", "arguments": {"text": "hi"}}
        for edge in cluster.edges.values():  # the hub's function tool, each edge through its hub
            for _ in range(20):
                async with http.post(f"{edge}/api/v1/tools/builtin/call", json=body) as r:
                    assert r.status == 200 and not (await r.json())["is_error"]
        async with grpc.aio.insecure_channel(cluster.hubs["node1"]) as ch:
            call = ts.ExecuteToolRequest(
                tool_id="held-by-2", action="echo", arguments=dict_to_struct({"text": "x"})
            )
            for _ in range(20):  # forwarded from hub 1 to hub 2
                assert not (await ts_grpc.ToolScoreServiceStub(ch).ExecuteTool(call, timeout=10)).is_error
        # 60 calls; Redis heard at most one read of node 2's address (kept for a third of its TTL).
        assert commands_run(client) - before <= 1
        client.close()

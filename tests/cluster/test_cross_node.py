"""Across nodes: a change committed through one node's hub is seen through the other node's edge."""

from __future__ import annotations

import json

import aiohttp
import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

from tests.cluster.conftest import RunningCluster
from tests.helpers import deadline, grpc_tool


async def test_a_registration_on_hub_1_is_seen_through_edge_2_over_rest_and_the_events_websocket(
    cluster: RunningCluster,
) -> None:
    edge2 = cluster.edges["node2"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        ws_url = edge2.replace("http", "ws", 1) + "/api/v1/events/tools?tool_ids=from-hub-1"
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
            assert json.loads(await r.text())["tool_id"] == "from-hub-1"

"""Redis stopped and started again under a running cluster: no node restarts.

While Redis is away, registry writes are refused with a clear 503 (REGISTRY_STORE_UNAVAILABLE) on
every node and calls go on from each node's copy of the registry; once it is back, every hub
follows the stream again by itself and a change made through one node reaches the other's events
WebSocket, opened before the outage and never closed.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.hub.app import STORE_HEALTH
from tests.cluster.conftest import EDGE_HEADER, RunningCluster
from tests.helpers import deadline

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def store_health(hub: str, want: int, what: str) -> None:
    """Wait until `hub` reports its registry store `want` (grpc.health.v1 Watch: pushed, not polled)."""
    async with grpc.aio.insecure_channel(hub) as ch, deadline(30, what):
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=STORE_HEALTH))
        try:
            async for reply in watch:
                if reply.status == want:
                    return
        finally:
            watch.cancel()


def tool(tool_id: str) -> dict[str, Any]:
    return {"tool_id": tool_id, "endpoint": "127.0.0.1:9", "capabilities": [{"name": "x"}]}


async def post(http: aiohttp.ClientSession, cluster: RunningCluster, node: str, path: str, body: Any) -> Any:
    async with http.post(cluster.lb + path, json=body, headers={EDGE_HEADER: node}) as r:
        assert r.headers[EDGE_HEADER] == node
        return r.status, await r.json()


async def test_with_redis_away_writes_are_refused_calls_flow_and_the_nodes_resync_once_it_is_back(
    cluster_factory: Any, redis_server: Any
) -> None:
    cluster: RunningCluster = await cluster_factory(redis_url=redis_server.url)
    echo = {"action": "echo", "arguments": {"text": "still here"}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        events = cluster.edges["node2"].replace("http", "ws", 1) + "/api/v1/events/tools?tool_ids=after"
        async with http.ws_connect(events) as ws:
            async with deadline(10, "the events WebSocket's welcome"):
                assert (await ws.receive_json())["type"] == "welcome"

            redis_server.stop(save=True)  # its data kept, as a Redis with persistence
            for node, hub in cluster.hubs.items():
                await store_health(hub, NOT_SERVING, f"hub of {node} to notice Redis went away")
            for node in cluster.edges:
                status, body = await post(http, cluster, node, "/api/v1/tools", tool(f"during-{node}"))
                assert (status, body["reason"]) == (503, "REGISTRY_STORE_UNAVAILABLE"), body
                status, body = await post(http, cluster, node, "/api/v1/tools/builtin/call", echo)
                assert status == 200 and body["structured"] == {"text": "still here"}, body

            await redis_server.start()
            for node, hub in cluster.hubs.items():
                await store_health(hub, SERVING, f"hub of {node} to follow Redis again")
            status, body = await post(http, cluster, "node1", "/api/v1/tools", tool("after"))
            assert status == 201, body
            async with deadline(10, "the change made through node 1 on node 2's events WebSocket"):
                event = await ws.receive_json()
            assert (event["type"], event["tool_id"], event["revision"]) == (
                "tool_installed",
                "after",
                body["revision"],
            )
    assert "exited with" not in cluster.log()  # no node restarted

"""`make cluster` (`python -m services.mesh --cluster`): Redis, two nodes and HAProxy as one process tree.

One cluster, end to end: HAProxy alternates between the edges; each node runs Python on its own
executor; an MCP session whose requests HAProxy alternates between the edges is served throughout;
clients behind HAProxy each have their own per-client bounds (HAProxy forwards their address); a
registration through hub 1 reaches edge 2 (its events WebSocket, REST); calls through
either edge, and calls hub 1 forwards to a tool held by node 2, send nothing to Redis; Ctrl-C stops
every process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx2
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common.jsonvalue import dict_to_struct
from services.toolkit import Action
from tests.cluster.conftest import EDGE_HEADER, RunningCluster, cluster_env
from tests.conftest import REPO, stop_process
from tests.edge.test_client_address import INIT as MCP_INIT
from tests.helpers import deadline, descendants, grpc_tool
from tests.mesh.test_run import alive

EXECUTOR = "python-executor-mcp-server"
EXECUTOR_MCP = "python-executor-mcp-server__python_execute"  # its MCP name (docs/mcp.md, "Tool names")


# Redis quiet between calls: no heartbeat (a 300 s TTL beats every 100 s), no follower asking
# again (an XREAD BLOCK returns on an event only), no usage flush. (A health check writes only a
# change of health: the test waits for the tools' first ones.)
QUIET = {
    "TOOLSCORE_CLUSTER__NODE_TTL_S": "300",
    "TOOLSCORE_CLUSTER__FOLLOW_BLOCK_S": "60",
    "TOOLSCORE_HUB__STATS_FLUSH_S": "3600",
    # A health round reads which nodes are alive (SMEMBERS + MGET); checks still run on a registration.
    "TOOLSCORE_HUB__HEALTH_INTERVAL_S": "3600",
}
SESSIONS_PER_CLIENT = 3  # small, for the step that fills one client's share through HAProxy


def commands_run(client: redis.Redis) -> dict[str, int]:
    """How many times Redis has run each command so far, but the INFO that asks."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"}


async def echo_server(text: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": text["text"]}


async def test_make_cluster_balances_nodes_that_share_one_registry_and_stops_every_process_on_ctrl_c(
    cluster_factory: Any, start_tool_server: Any
) -> None:
    env = {**QUIET, "TOOLSCORE_EDGE__MCP_SESSIONS_PER_CLIENT": str(SESSIONS_PER_CLIENT)}
    cluster: RunningCluster = await cluster_factory(extra_env=env)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        served = []
        for _ in range(4):  # one keep-alive connection: each request balanced on its own, no stickiness
            async with http.get(cluster.lb + "/api/v1/health") as r:
                assert r.status == 200, await r.text()
                served.append(r.headers[EDGE_HEADER])
        assert served[0] != served[1] and served[:2] == served[2:] and set(served) == {"node1", "node2"}
        for node in ("node1", "node2"):  # an executor on each node, each edge using its own
            async with http.post(
                f"{cluster.lb}/api/v1/tools/{EXECUTOR}/call",
                json={"action": "python_execute", "arguments": {"code": "print(6 * 7)"}},
                headers={EDGE_HEADER: node},
            ) as r:
                body = await r.json()
                assert r.headers[EDGE_HEADER] == node
                assert r.status == 200 and body["structured"]["stdout"] == "42\n", body
        await an_mcp_session_whose_requests_alternate_between_the_edges_never_loses_its_session(cluster)
        await clients_behind_haproxy_each_have_their_own_mcp_session_cap(cluster)
        await a_registration_on_hub_1_reaches_edge_2_and_calls_never_reach_redis(
            cluster, http, start_tool_server
        )
    children = descendants(cluster.proc.pid)
    names = ("redis-server", "haproxy", "services.hub", "services.executor", "-m\0edge")
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in children if alive(p)]
    for name in names:
        assert any(name.encode() in c for c in cmdlines), name
    assert stop_process(cluster.proc, timeout=60) == 0  # SIGINT, as Ctrl-C
    assert not [p for p in children if alive(p)]
    assert "cluster stopped" in cluster.log()
    assert not list((cluster.root / "run").rglob("*.sock"))


async def an_mcp_session_whose_requests_alternate_between_the_edges_never_loses_its_session(
    cluster: RunningCluster,
) -> None:
    """A handshake-era session through HAProxy with the official SDK client: HAProxy sends each
    request to the next edge, and the session opened on one is served by both (never a 404)."""
    served: list[str] = []

    async def note(response: httpx2.Response) -> None:
        served.append(response.headers.get(EDGE_HEADER, ""))
        assert response.status_code != 404, "session not found"

    async with httpx2.AsyncClient(timeout=30, event_hooks={"response": [note]}) as http:
        async with Client(
            streamable_http_client(cluster.lb + "/mcp", http_client=http), mode="legacy"
        ) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            calls = [await client.call_tool("builtin__echo", {"text": f"call {i}"}) for i in range(4)]
            ran = await client.call_tool(EXECUTOR_MCP, {"code": "print(6 * 7)"})
            listed_again = {t.name for t in (await client.list_tools()).tools}
    assert {"builtin__echo", EXECUTOR_MCP} <= names == listed_again
    assert [c.is_error for c in calls] == [False] * 4 and "call 3" in str(calls[3].content)
    assert not ran.is_error and "42" in str(ran.content)
    assert {"node1", "node2"} <= set(served), served  # both edges served the one session


async def clients_behind_haproxy_each_have_their_own_mcp_session_cap(cluster: RunningCluster) -> None:
    """Clients on other loopback addresses, through HAProxy: one past its sessions cap refuses no
    other, not even one that claims the first one's address in X-Forwarded-For (the edges believe
    only the entry HAProxy appended)."""

    async def initialize(source: str, headers: dict[str, str] | None = None) -> int:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        accept = {"Accept": "application/json, text/event-stream", **(headers or {})}
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as h:
            async with h.post(cluster.lb + "/mcp", json=MCP_INIT, headers=accept) as r:
                return r.status

    first = [await initialize("127.0.0.2") for _ in range(SESSIONS_PER_CLIENT + 1)]
    other = await initialize("127.0.0.3")
    spoofing = await initialize("127.0.0.4", {"X-Forwarded-For": "127.0.0.2"})
    assert first == [200] * SESSIONS_PER_CLIENT + [429], first
    assert other == 200, "a client behind HAProxy was refused for another client's sessions"
    assert spoofing == 200, "a client was keyed by the address it claimed, not the one HAProxy added"


async def a_registration_on_hub_1_reaches_edge_2_and_calls_never_reach_redis(
    cluster: RunningCluster, http: aiohttp.ClientSession, start_tool_server: Any
) -> None:
    edge2 = cluster.edges["node2"]
    _, socket_2 = await start_tool_server({"held-by-2": [Action("echo", "", echo_server)]})
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
                if event["type"] == "tool_health_changed" and health.get(event["tool_id"]) == event["health"]:
                    del health[event["tool_id"]]

    client = redis.Redis(unix_socket_path=str(cluster.root / "run" / "redis.sock"), socket_timeout=5)
    revision, before = client.get("toolscore:revision"), commands_run(client)
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
    # 60 calls; nothing else changed the registry meanwhile, and Redis heard at most one read of
    # node 2's address (kept for a third of its TTL).
    after = commands_run(client)
    ran = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    assert client.get("toolscore:revision") == revision and sum(ran.values()) <= 1, ran
    client.close()


async def test_make_cluster_says_how_to_install_a_missing_program_and_starts_nothing(root: Path) -> None:
    argv = [sys.executable, "-m", "services.mesh", "--cluster", "--lb-port", "0", "--edge-ports", "0,0"]
    argv += ["--hub-ports", "0,0", "--haproxy", str(root / "no-haproxy-here")]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=cluster_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode != 0
    assert "apt-get install haproxy" in out.decode(), out.decode()
    assert not (root / "data" / "redis").exists()  # nothing was started

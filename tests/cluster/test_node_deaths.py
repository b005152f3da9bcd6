"""A hub, an edge and an executor killed (SIGKILL) under a bounded load through HAProxy.

Four callers register tools and call the hub's `builtin` echo through the balancer the whole time.
Each kill is made while a call of its own is inside the process killed: that call is answered with
a clear error (a tool result with is_error, or the balancer's JSON 502), every load call is answered
(a success or a JSON error, never a hang or a cut connection), new calls flow through the node
left, the supervisor brings the process back, and no registration that was acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc

from services.toolkit import Action
from tests.cluster.conftest import EDGE_HEADER, RunningCluster
from tests.helpers import Blocker, deadline, grpc_tool

CALLERS = 4
EXECUTOR = "python-executor-mcp-server"


@dataclass
class Load:
    """CALLERS callers through the balancer, each in turn registering a tool and calling builtin echo."""

    http: aiohttp.ClientSession
    lb: str
    registered: list[str] = field(default_factory=list)  # acknowledged registrations
    revision: int = 0  # the highest registry revision an acknowledged registration reported
    successes: list[str] = field(default_factory=list)  # the edge that served each successful call
    errors: list[tuple[str, int, str]] = field(default_factory=list)  # (phase, HTTP status, reason)
    unclear: list[str] = field(default_factory=list)  # answers that are neither
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    phase: str = "start"  # what the test is doing, named in `unclear`

    async def caller(self, n: int, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tool = {"tool_id": f"load-{n}-{i}", "endpoint": "127.0.0.1:9", "capabilities": [{"name": "x"}]}
            answer = await self._send("/api/v1/tools", tool, ok=(200, 201))
            if answer is not None:
                self.registered.append(tool["tool_id"])
                self.revision = max(self.revision, answer["revision"])
            await self._send("/api/v1/tools/builtin/call", {"action": "echo", "arguments": {"text": "hi"}})

    async def _send(
        self, path: str, body: dict[str, Any], ok: tuple[int, ...] = (200,)
    ) -> dict[str, Any] | None:
        """The answer of a success; None for anything else, which is recorded."""
        try:
            async with self.http.post(self.lb + path, json=body) as r:
                answer = await r.json(content_type=None)
                edge = r.headers.get(EDGE_HEADER, "")
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.unclear.append(f"{self.phase}: {path}: {type(exc).__name__}: {exc}")
            return None
        finally:
            self.changed.set()
        if status in ok and not answer.get("is_error"):
            self.successes.append(edge)
            return answer
        if status in ok and answer.get("error", {}).get("type"):  # a tool result with is_error
            self.errors.append((self.phase, status, answer["error"]["type"]))
        elif status >= 400 and answer.get("reason"):
            self.errors.append((self.phase, status, answer["reason"]))
        else:
            self.unclear.append(f"{self.phase}: {path}: {status} {answer}")
        return None

    async def served(self, count: int, via: str, what: str, within_s: float = 30.0) -> None:
        """Wait until `count` more calls succeeded through the edge of node `via`."""
        start = self.successes.count(via)
        async with deadline(within_s, what):
            while self.successes.count(via) < start + count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def load_on(cluster: RunningCluster) -> AsyncIterator[Load]:
    timeout = aiohttp.ClientTimeout(total=20)  # every load call's deadline
    async with fresh_connections(timeout) as http:
        load, stop = Load(http, cluster.lb), asyncio.Event()
        callers = [asyncio.create_task(load.caller(n, stop)) for n in range(CALLERS)]
        try:
            yield load
        finally:
            stop.set()
            async with deadline(30, "the load's callers to finish their last call"):
                await asyncio.gather(*callers)


def fresh_connections(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A client opening a connection per request. On a kept-alive one, HAProxy answers a request
    whose edge died before answering by closing the connection without a word (for the client to
    retry, as after any keep-alive race); on a fresh one it answers its JSON 502 (docs/cluster.md)."""
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True))


async def call_pinned(
    http: aiohttp.ClientSession, cluster: RunningCluster, node: str, tool: str, body: Any
) -> Any:
    """A call through the balancer, asked of `node`'s edge: (HTTP status, JSON answer)."""
    async with http.post(
        f"{cluster.lb}/api/v1/tools/{tool}/call", json=body, headers={EDGE_HEADER: node}
    ) as r:
        return r.status, await r.json(content_type=None)


async def caught_up(http: aiohttp.ClientSession, edge: str, revision: int) -> None:
    """Wait until `edge`'s registry view has reached `revision` (its events WebSocket: the welcome
    names the revision it shows, each event its own)."""
    async with (
        http.ws_connect(edge.replace("http", "ws", 1) + "/api/v1/events/tools") as ws,
        deadline(20, f"{edge} to reach registry revision {revision}"),
    ):
        seen = (await ws.receive_json())["revision"]
        while seen < revision:
            seen = max(seen, (await ws.receive_json()).get("revision", 0))


async def register_through(hub: str, tool: Any) -> None:
    async with grpc.aio.insecure_channel(hub) as ch:
        await lib_grpc.ToolLibraryServiceStub(ch).RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=10)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def executor_running(http: aiohttp.ClientSession, cluster: RunningCluster, node: str) -> None:
    """Return once `node`'s executor reports a run in progress (asked through its edge)."""
    body = {"action": "python_status", "arguments": {}}
    while True:  # each turn is one real call, answered only after the executor looked at its state
        status, answer = await call_pinned(http, cluster, node, EXECUTOR, body)
        assert status == 200 and not answer["is_error"], answer
        if answer["structured"]["running"] >= 1:
            return


@pytest.mark.timeout(240)
async def test_kill_9_of_a_hub_an_edge_and_an_executor_under_load_answers_every_call_and_loses_no_tool(
    cluster: RunningCluster, start_tool_server: Any
) -> None:
    async with fresh_connections(aiohttp.ClientTimeout(total=60)) as http, load_on(cluster) as load:
        await load.served(5, "node1", "the load to flow through node 1")
        await load.served(5, "node2", "the load to flow through node 2")

        # A hub: a call forwarded from node 1 to a tool only node 2 holds is inside hub 2's call.
        held_by_2 = Blocker()
        _, socket_2 = await start_tool_server({"held-by-2": [Action("wait", "", held_by_2)]})
        await register_through(cluster.hubs["node2"], grpc_tool("held-by-2", socket_2, actions={"wait": {}}))
        pending = asyncio.create_task(
            call_pinned(http, cluster, "node1", "held-by-2", {"action": "wait", "arguments": {}})
        )
        async with deadline(15, "the forwarded call to reach node 2's tool"):
            await held_by_2.started.wait()
        hub_2 = cluster.pid("node2-hub")
        load.phase = "hub 2 killed"
        kill(hub_2)
        async with deadline(20, "the in-flight call's answer after its hub died"):
            status, answer = await pending
        assert status == 200 and answer["is_error"] and answer["error"]["type"] == "NetworkError", answer
        await load.served(10, "node1", "new calls through node 1 while hub 2 is dead")
        await cluster.restarted("node2-hub", hub_2)
        await load.served(5, "node2", "calls through node 2 again once its hub is back")

        # An edge: a call inside edge 1 (to a TCP tool it calls directly) when edge 1 dies.
        in_edge_1 = Blocker()
        _, tcp = await start_tool_server({"anywhere": [Action("wait", "", in_edge_1)]}, tcp=True)
        await register_through(cluster.hubs["node1"], grpc_tool("anywhere", tcp, actions={"wait": {}}))
        pending = asyncio.create_task(
            call_pinned(http, cluster, "node1", "anywhere", {"action": "wait", "arguments": {}})
        )
        async with deadline(15, "the call to reach the tool through edge 1"):
            await in_edge_1.started.wait()
        edge_1 = cluster.pid("node1-edge")
        load.phase = "edge 1 killed"
        kill(edge_1)
        async with deadline(20, "the in-flight call's answer after its edge died"):
            status, answer = await pending
        assert (status, answer["reason"]) == (502, "EDGE_UNAVAILABLE"), answer
        await load.served(10, "node2", "new calls through node 2 while edge 1 is dead")
        await cluster.restarted("node1-edge", edge_1)
        await load.served(5, "node1", "calls through node 1 again once its edge is back")

        # An executor: a run inside node 1's executor when it dies; the next run goes to node 2's.
        run = {"action": "python_execute", "arguments": {"code": "import time; time.sleep(60)"}}
        pending = asyncio.create_task(call_pinned(http, cluster, "node1", EXECUTOR, run))
        async with deadline(30, "node 1's executor to be running the code"):
            await executor_running(http, cluster, "node1")
        executor_1 = cluster.pid("node1-executor")
        load.phase = "executor 1 killed"
        kill(executor_1)
        async with deadline(20, "the in-flight run's answer after its executor died"):
            status, answer = await pending
        assert status == 200 and answer["is_error"] and answer["error"]["type"] == "NetworkError", answer
        status, answer = await call_pinned(
            http, cluster, "node1", EXECUTOR, {"action": "python_execute", "arguments": {"code": "print(1)"}}
        )
        assert status == 200 and answer["structured"]["stdout"] == "1\n", answer
        await cluster.restarted("node1-executor", executor_1)

    assert not load.unclear, load.unclear[:5]
    assert load.registered
    reasons = {reason for _, _, reason in load.errors}
    assert reasons <= {"HUB_UNAVAILABLE", "EDGE_UNAVAILABLE", "NetworkError"}, sorted(set(load.errors))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for node, edge in cluster.edges.items():
            # Each edge follows the registry's stream: the last registrations acknowledged through
            # the other edge reach it a moment later. Listed once it has caught up with them.
            await caught_up(http, edge, load.revision)
            async with http.get(edge + "/api/v1/tools") as r:
                listed = {t["tool_id"] for t in (await r.json())["tools"]}
            assert not set(load.registered) - listed, (node, sorted(set(load.registered) - listed)[:5])

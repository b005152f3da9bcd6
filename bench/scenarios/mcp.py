"""Section edge, MCP paths (issue 4): the same echo tool called through the edge's MCP transports.

mcp-http  client -> edge /mcp (Streamable HTTP, a 2025-11-25 session, JSON answers) -> tool server over UDS
mcp-ws    client -> edge /ws/mcp (one WebSocket, calls multiplexed by JSON-RPC id) -> tool server over UDS

Target: each within 1.2x the REST path's p50.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from bench.env import Env
from bench.registry import Call, scenario, target
from bench.scenarios.core import ARGUMENTS, start_echo_tools
from bench.scenarios.edge import _http, start_edge
from services.common.streams import Correlator

MCP_NAME = "bench-echo-uds__echo"  # <tool_id>__<action>, see docs/mcp.md
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

target("mcp-http", "p50_ms", 1, "rest", 1.2)
target("mcp-ws", "p50_ms", 1, "rest", 1.2)


class _WsPeer:
    """One multiplexed MCP WebSocket connection: answers matched to calls by JSON-RPC id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.waiting: Correlator[int, dict[str, Any]] = Correlator(limit=10_000)
        self.ids = itertools.count(1)

    async def reader(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                self.waiting.resolve(msg.get("id"), msg)
        finally:
            self.waiting.fail_all(ConnectionError("the MCP WebSocket closed"))

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = next(self.ids)
        fut = self.waiting.open(rid, 10.0)
        try:
            await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
            return await fut
        finally:
            self.waiting.finish(rid)


def _check(msg: dict[str, Any]) -> None:
    result = msg.get("result") or {}
    if result.get("isError") or result.get("structuredContent") != ARGUMENTS:
        raise RuntimeError(f"mcp call failed: {msg}")


async def open_session(http: Any, url: str) -> dict[str, str]:
    """A handshake-era session on `url` (initialize, then initialized): the headers of its requests."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    async with http.post(url, data=json.dumps(init), headers=HEADERS) as r:
        session = {
            **HEADERS,
            "Mcp-Session-Id": r.headers["Mcp-Session-Id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, data=json.dumps(note), headers=session) as r:
        await r.read()
    return session


@scenario("mcp-http", "MCP Streamable HTTP /mcp -> edge -> Python tool server, UDS", "edge", baseline="rest")
async def mcp_http(env: Env) -> Call:
    url = await env.shared("edge", start_edge) + "/mcp"
    await env.shared("echo-tools", start_echo_tools)
    env.use("edge", "tool-server", "hub")
    http = await _http(env)
    session = await open_session(http, url)
    params = json.dumps({"name": MCP_NAME, "arguments": ARGUMENTS})
    ids = itertools.count(1)  # ids must be unique among a session's calls in flight

    async def call() -> None:
        body = f'{{"jsonrpc":"2.0","id":{next(ids)},"method":"tools/call","params":{params}}}'
        async with http.post(url, data=body, headers=session) as r:
            _check(await r.json())

    return call


@scenario("mcp-ws", "MCP WebSocket /ws/mcp -> edge -> Python tool server, UDS", "edge", baseline="rest")
async def mcp_ws(env: Env) -> Call:
    import websockets

    url = (await env.shared("edge", start_edge)).replace("http", "ws", 1) + "/ws/mcp"
    await env.shared("echo-tools", start_echo_tools)
    env.use("edge", "tool-server", "hub")
    ws = await websockets.connect(
        url, subprotocols=[websockets.Subprotocol("mcp")], compression=None, max_size=None, open_timeout=30
    )
    peer = _WsPeer(ws)
    reader = asyncio.create_task(peer.reader())

    async def close() -> None:
        reader.cancel()
        await ws.close()

    env.stack.push_async_callback(close)
    await peer.call(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    )
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))

    async def call() -> None:
        _check(await peer.call("tools/call", {"name": MCP_NAME, "arguments": ARGUMENTS}))

    return call

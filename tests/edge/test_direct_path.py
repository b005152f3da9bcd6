"""The edge's direct path (the edge calls a gRPC tool server itself, no hop through the hub) makes
the same checks as the hub: every entry point of the edge refuses what the hub would refuse."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import websockets

from services.common import config as config_mod
from services.common.config import Config
from services.hub.app import Hub
from services.toolkit import Action
from tests.edge.conftest import EdgeHandle, edge_config, grpc_tool
from tests.helpers import Blocker, deadline, served_tool

LIMIT = 4096
# 2,000 euro signs: 2,000 characters (the edge's pre-Struct bound counts characters, a lower bound,
# so they pass it) but 6,000 bytes of UTF-8 in the Struct, over LIMIT: only the router's measure of
# the built arguments refuses them. 1,000 of them (3,000 bytes) are under it.
OVER = "\u20ac" * 2000
UNDER = "\u20ac" * 1000
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def edge_reaching_echo_directly(
    cfg: Config, hub: Hub, start_edge: Callable[..., Any], echo_server: str, **tool: Any
) -> EdgeHandle:
    """An edge whose argument limit is LIMIT while the hub's stays at its default (1 MiB): a call
    the edge relayed would be accepted by the hub, so a refusal can only come from the edge."""
    assert cfg.hub.max_argument_bytes > 100 * LIMIT
    edge = await start_edge(edge_config(config_mod.replace(cfg, hub={"max_argument_bytes": LIMIT}), hub))
    definition = grpc_tool("echo", echo_server)
    for key, value in tool.items():
        setattr(definition, key, value)
    await edge.gateway.register(definition)
    entry = edge.registry.entries["echo"]
    assert edge.gateway.opts.direct and edge.gateway.router.reaches(entry)  # the direct path
    return edge


async def call_everywhere(edge: EdgeHandle, text: str) -> tuple[Any, Any, Any]:
    """The same echo call through REST, the ToolScore WebSocket and MCP: the three answers."""
    _, rest = await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": text}})
    call = {"type": "execute_tool", "request_id": "r1", "tool_id": "echo", "action": "echo"}
    async with websockets.connect(edge.ws_url("/websocket"), open_timeout=5, close_timeout=2) as ws:
        await ws.send(json.dumps({**call, "parameters": {"text": text}}))
        async with deadline(10, "the ToolScore WebSocket's answer"):
            reply = json.loads(await ws.recv())
    rpc = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": text}},
    }
    _, mcp = await edge.post("/mcp", rpc, headers=MCP_HEADERS)
    return rest, reply, mcp


async def test_arguments_over_the_edges_limit_are_refused_on_the_direct_path_of_every_entry_point(
    cfg: Config, hub: Hub, start_edge: Callable[..., Any], echo_server: str
):
    edge = await edge_reaching_echo_directly(cfg, hub, start_edge, echo_server)
    status, body = await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": OVER}})
    answer = (status, body.get("code"), body.get("reason"))
    assert answer == (413, "RESOURCE_EXHAUSTED", "ARGUMENTS_TOO_LARGE"), body
    assert body["metadata"] == {"limit_bytes": str(LIMIT)}
    _, reply, mcp = await call_everywhere(edge, OVER)
    assert reply["type"] == "error" and reply["reason"] == "ARGUMENTS_TOO_LARGE", reply
    result = mcp["result"]
    assert result["isError"] is True and f"the limit is {LIMIT}" in result["content"][0]["text"], mcp
    rest, reply, mcp = await call_everywhere(edge, UNDER)  # under the limit: served on every path
    assert rest["structured"] == {"text": UNDER}, rest
    assert reply["type"] == "execute_tool_response" and reply["result"] == {"text": UNDER}, reply
    assert mcp["result"]["structuredContent"] == {"text": UNDER}, mcp


async def test_a_disabled_tool_is_refused_on_the_direct_path_of_every_entry_point(
    cfg: Config, hub: Hub, start_edge: Callable[..., Any], echo_server: str
):
    edge = await edge_reaching_echo_directly(cfg, hub, start_edge, echo_server, enabled=False)
    status, body = await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": "hi"}})
    answer = (status, body.get("code"), body.get("reason"))
    assert answer == (409, "FAILED_PRECONDITION", "TOOL_DISABLED"), body
    assert body["metadata"] == {"tool_id": "echo"}
    _, reply, mcp = await call_everywhere(edge, "hi")
    assert reply["type"] == "error" and reply["reason"] == "TOOL_DISABLED", reply
    # MCP lists enabled tools only: a disabled one is an unknown tool (docs/mcp.md).
    assert mcp["error"]["code"] == -32602 and "Unknown tool" in mcp["error"]["message"], mcp


async def test_a_call_asking_for_an_hour_is_cut_at_max_timeout_on_the_direct_path(
    cfg: Config, hub: Hub, start_edge: Callable[..., Any], echo_server: str
):
    # The edge's cap (hub.max_timeout_s of its config) is 0.5 s; the hub's stays at its default.
    capped = config_mod.replace(cfg, hub={"max_timeout_s": 0.5})
    edge = await start_edge(edge_config(capped, hub))
    await edge.gateway.register(grpc_tool("echo", echo_server))
    assert edge.gateway.router.reaches(edge.registry.entries["echo"])
    async with deadline(10, "the call to end at the 0.5 s cap"):
        status, body = await edge.post(
            "/api/v1/tools/echo/call", {"action": "slow", "arguments": {"seconds": 3600}, "timeout_s": 3600}
        )
    assert status == 200 and body["is_error"] is True, body
    assert body["error"] == {"type": "TimeoutError", "message": "tool did not answer within 0.5s"}, body


async def test_a_rest_caller_that_goes_away_mid_call_has_its_call_cancelled_on_the_tool_server(
    edge: EdgeHandle, start_tool_server: Callable[..., Any]
):
    # edge/__main__ runs the app with handler_cancellation: a REST client that leaves cancels its call.
    block = Blocker()
    started, cancelled = block.started, block.cancelled

    actions = [Action("block", "blocks", block)]
    _, endpoint = await start_tool_server({"blocker": actions}, name="blocker")
    await edge.gateway.register(served_tool("blocker", endpoint, actions))
    assert edge.gateway.router.reaches(edge.registry.entries["blocker"])
    call = asyncio.create_task(edge.post("/api/v1/tools/blocker/call", {"action": "block", "timeout_s": 60}))
    async with deadline(10, "the call to reach the tool server"):
        await started.wait()
    call.cancel()  # aiohttp closes the connection of a request cancelled mid-flight
    async with deadline(10, "the tool server to see its call cancelled"):
        await cancelled.wait()

"""What `tools/call` answers when the call cannot be served, on both transports: the official SDK
client over Streamable HTTP (both eras) and a WebSocket peer. A protocol fault is a JSON-RPC error
carrying the mesh's ErrorInfo in `data`; a tool-side failure is an isError result (docs/mcp.md).
Real hub, real gateway, real MCP routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
import pytest
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError

from edge.gateway import GatewayOptions, HubGateway
from edge.mcp import MCP_SERVICE, add_routes
from edge.usage import UsageReporter
from services.common.config import Config
from services.hub.app import Hub

from .conftest import Edge, serve
from .test_websocket import Peer, connect

ERAS = ["legacy", "auto"]
PYTHON = "python-executor-mcp-server__python_execute"


@contextlib.asynccontextmanager
async def mcp_edge(cfg: Config, hub_target: str, *, direct: bool = True) -> AsyncIterator[Edge]:
    """The MCP routes over a gateway of their own to `hub_target` (`direct=False`: every call is
    relayed through the hub)."""
    opts = GatewayOptions(hub_target=hub_target, direct=direct)
    async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
        async with asyncio.timeout(10):
            await gw.cache.synced.wait()
        app = web.Application()
        add_routes(app, gw, cfg)
        runner, port = await serve(app)
        try:
            yield Edge(port, app[MCP_SERVICE], app)
        finally:
            await runner.cleanup()


async def ws_call(edge: Edge, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """tools/call over a handshake-era /ws/mcp connection: the response."""
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        return await peer.call("tools/call", {"name": name, "arguments": arguments})


async def test_the_hub_unreachable_is_internal_error_naming_it_on_both_transports(cfg: Config):
    hub: Hub | None = Hub(cfg)
    await hub.__aenter__()
    try:
        assert hub.uds_target is not None
        async with mcp_edge(cfg, hub.uds_target, direct=False) as edge:
            await hub.__aexit__(None, None, None)  # the edge keeps its cache; every call relays
            hub = None
            for mode in ERAS:
                async with Client(edge.url, mode=mode) as client:
                    with pytest.raises(MCPError) as info:
                        await client.call_tool(PYTHON, {"code": "1"})
                error = info.value.error
                assert error.code == types.INTERNAL_ERROR, (mode, error)
                assert isinstance(error.data, dict) and error.data["reason"] == "HUB_UNAVAILABLE", error
            ws = await ws_call(edge, PYTHON, {"code": "1"})
    finally:
        if hub is not None:
            await hub.__aexit__(None, None, None)
    assert ws["error"]["code"] == types.INTERNAL_ERROR and ws["error"]["data"]["reason"] == "HUB_UNAVAILABLE"
    assert ws["error"]["data"]["code"] == "UNAVAILABLE", ws

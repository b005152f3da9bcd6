"""What `tools/call` answers when the call cannot be served, on both transports: the official SDK
client over Streamable HTTP (both eras) and a WebSocket peer. A protocol fault is a JSON-RPC error
carrying the mesh's ErrorInfo in `data`; a tool-side failure is an isError result (docs/mcp.md).
Real hub, real gateway, real MCP routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError

from edge.gateway import GatewayOptions, HubGateway
from edge.mcp import MCP_SERVICE, add_routes
from edge.mcp._protocol import UNAUTHENTICATED
from edge.usage import UsageReporter
from services.common.config import Config
from services.hub.app import Hub
from services.toolkit import Action
from tests.edge.hub_proxy import HubProxy

from .conftest import Edge, Probe, Register, actions, serve, tool_def
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
        add_routes(app, gw, gw.cache, cfg)
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


async def test_an_admin_only_action_without_the_admin_token_is_a_json_rpc_error_naming_the_token(
    edge: Edge, register: Register, start_tool_server: Any
):
    # A protocol fault (the caller's rights), not something the model can correct by itself: -32003,
    # the mesh error in `data`, over both transports; the tool never runs.
    ran = asyncio.Event()

    async def wipe(args: dict[str, Any], ctx: Any) -> str:
        ran.set()
        return "wiped"

    acts = [Action("wipe", "An admin-only action", wipe, requires_admin=True)]
    _, endpoint = await start_tool_server({"guarded": acts}, name="guarded")
    await register(tool_def("guarded", endpoint, acts))
    errors = []
    for mode in ERAS:
        async with Client(edge.url, mode=mode) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("guarded__wipe", {})
        errors.append(info.value.error)
    ws = await ws_call(edge, "guarded__wipe", {})
    for error in [*errors, types.ErrorData.model_validate(ws["error"])]:
        assert error.code == UNAUTHENTICATED == -32003, error
        assert isinstance(error.data, dict) and error.data["reason"] == "ADMIN_TOKEN_REQUIRED", error
        assert error.data["code"] == "UNAUTHENTICATED" and "needs the admin token" in error.message, error
    assert not ran.is_set()


async def test_a_tool_disabled_on_the_hub_before_the_edge_heard_is_invalid_params_like_an_unknown_tool(
    cfg: Config, hub: Hub, root: Path, start_tool_server: Any
):
    # The edge lists the tool enabled and hears nothing after (its watch is held at a proxy); the hub
    # has it disabled and refuses the relayed call with TOOL_DISABLED: -32602, as a tool the edge
    # already knew to be disabled (not listed, so unknown) is.
    probe = Probe()
    acts = actions(probe)
    _, endpoint = await start_tool_server({"kit": acts}, name="kit")
    await hub.registry.register(tool_def("kit", endpoint, acts))
    assert hub.uds_target is not None
    async with HubProxy(hub.uds_target, root / "run" / "mcp-hub-proxy.sock") as proxy:
        proxy.hold_watches()
        async with mcp_edge(cfg, proxy.target, direct=False) as edge:
            disabled = tool_def("kit", endpoint, acts)
            disabled.enabled = False
            await hub.registry.register(disabled)
            assert edge.svc.registry.entries["kit"].tool.enabled  # the edge has not heard
            errors = []
            for mode in ERAS:
                async with Client(edge.url, mode=mode) as client:
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("kit__echo", {"text": "hi"})
                errors.append(info.value.error)
            ws = await ws_call(edge, "kit__echo", {"text": "hi"})
    for error in [*errors, types.ErrorData.model_validate(ws["error"])]:
        assert error.code == types.INVALID_PARAMS, error
        assert isinstance(error.data, dict) and error.data["reason"] == "TOOL_DISABLED", error
        assert error.data["metadata"] == {"tool_id": "kit"}, error

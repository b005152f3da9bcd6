"""MCP fixtures: a real hub (with the in-process Python executor), a real gateway, the MCP routes on a
real aiohttp server on a free port, and a toolkit server with echo / progress / blocking / failing tools."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_pb2

from edge.gateway import GatewayOptions, HubGateway
from edge.mcp import MCP_SERVICE, McpService, add_routes
from edge.usage import UsageReporter
from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct
from services.toolkit import Action
from services.toolkit.server import CallContext
from tests.helpers import served_tool

ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


@pytest.fixture
def cfg(cfg: Config) -> Config:
    return config_mod.replace(cfg, executor={"use_inprocess_python_executor": True})


@pytest.fixture
async def gateway(hub: Any) -> AsyncIterator[HubGateway]:
    opts = GatewayOptions(hub_target=hub.uds_target)
    async with HubGateway(opts, usage=UsageReporter(flush_s=3600)) as gw:
        async with asyncio.timeout(10):
            await gw.cache.synced.wait()
        yield gw


@dataclass
class Edge:
    port: int
    svc: McpService
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/mcp"


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture
async def edge(gateway: HubGateway, cfg: Config) -> AsyncIterator[Edge]:
    app = web.Application()
    add_routes(app, gateway, gateway.cache, cfg)
    runner, port = await serve(app)
    yield Edge(port, app[MCP_SERVICE], app)
    await runner.cleanup()


@contextlib.asynccontextmanager
async def edge_with(gateway: HubGateway, cfg: Config, **edge: Any) -> AsyncIterator[Edge]:
    """The MCP routes on their own server, with some `[edge]` keys changed."""
    app = web.Application()
    add_routes(app, gateway, gateway.cache, config_mod.replace(cfg, edge=edge))
    runner, port = await serve(app)
    try:
        yield Edge(port, app[MCP_SERVICE], app)
    finally:
        await runner.cleanup()


@dataclass
class Probe:
    """What the in-process tool server saw, for assertions."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def actions(probe: Probe) -> list[Action]:
    async def echo(args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return {"text": args["text"]}

    async def count(args: dict[str, Any], ctx: CallContext) -> str:
        n = int(args.get("n", 3))
        for i in range(1, n + 1):
            ctx.progress(i, n, f"step {i}")
        return f"counted to {n}"

    async def block(args: dict[str, Any], ctx: CallContext) -> str:
        probe.started.set()
        try:
            await probe.release.wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return "released"

    async def fail(args: dict[str, Any], ctx: CallContext) -> str:
        raise RuntimeError("the tool broke on purpose")

    return [
        Action(
            "echo",
            "Echo the text back",
            echo,
            ECHO_SCHEMA,
            {"type": "object", "properties": {"text": {"type": "string"}}},
        ),
        Action(
            "count",
            "Count to n, reporting progress",
            count,
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
        ),
        Action("block", "Wait until released or cancelled", block),
        Action("fail", "Always fails", fail),
    ]


tool_def = served_tool


Register = Callable[..., Any]


@pytest.fixture
async def register(hub_stubs: Any, gateway: HubGateway) -> Register:
    """`await register(tool)`: RegisterTool on the hub, returning once the gateway has seen it."""

    async def reg(tool: tool_pb2.Tool) -> None:
        seen = asyncio.Event()

        def on_event(ev: tool_pb2.ToolEvent) -> None:
            if ev.tool.tool_id == tool.tool_id:
                seen.set()

        unsubscribe = gateway.cache.subscribe(on_event)
        try:
            await hub_stubs.library.RegisterTool(lib.RegisterToolRequest(tool=tool), timeout=5)
            async with asyncio.timeout(5):
                await seen.wait()
        finally:
            unsubscribe()

    return reg


@pytest.fixture
async def kit(start_tool_server: Any, register: Register) -> Probe:
    """The `kit` toolkit server (echo, count, block, fail) registered with the hub."""
    probe = Probe()
    acts = actions(probe)
    _, endpoint = await start_tool_server({"kit": acts}, name="kit")
    await register(tool_def("kit", endpoint, acts))
    return probe


__all__ = ["ECHO_SCHEMA", "Edge", "Probe", "actions", "dict_to_struct", "edge_with", "serve", "tool_def"]

"""Edge fixtures: a real hub, the real edge app on a free port, real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from toolscore.v1 import tool_pb2

from edge.app import build_app
from edge.gateway import HubGateway
from edge.hub_link import GATEWAY, REGISTRY
from edge.metrics import METRICS
from edge.registry_cache import RegistryCache
from services.common import config as config_mod
from services.common.config import Config
from services.common.jsonvalue import dict_to_struct
from services.hub.app import Hub
from services.toolkit import Action
from tests.helpers import served_tool

TOKEN = "s3cret-admin-token"
ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


async def echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": args["text"]}


async def fail(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    raise RuntimeError("it broke on purpose")


async def slow(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(args.get("seconds", 30))
    return {"slept": True}


ECHO_ACTIONS = [
    Action("echo", "Echo text back", echo, ECHO_SCHEMA),
    Action("fail", "Always fails", fail),
    Action("slow", "Sleeps", slow),
]


def grpc_tool(tool_id: str, endpoint: str) -> tool_pb2.Tool:
    return served_tool(tool_id, endpoint, ECHO_ACTIONS)


def echo_spec(tool_id: str, endpoint: str) -> dict[str, Any]:
    """An original-style tool_spec for the echo server."""
    return {
        "tool_id": tool_id,
        "name": f"{tool_id} tool",
        "description": "echoes",
        "endpoint": endpoint,
        "tags": ["test"],
        "capabilities": [
            {
                "name": "echo",
                "description": "Echo",
                "parameters": {"text": {"type": "string", "description": "what to echo", "required": True}},
            },
            {"name": "fail", "description": "Fails"},
            {"name": "slow", "description": "Sleeps", "input_schema": {"type": "object"}},
        ],
    }


@dataclass
class EdgeHandle:
    app: web.Application
    url: str
    http: aiohttp.ClientSession
    runner: web.AppRunner

    @property
    def gateway(self) -> HubGateway:
        return self.app[GATEWAY]

    @property
    def registry(self) -> RegistryCache:
        return self.app[REGISTRY]

    @property
    def metrics(self) -> Any:
        return self.app[METRICS]

    def ws_url(self, path: str) -> str:
        return "ws" + self.url.removeprefix("http") + path

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with asyncio.timeout(10):
            async with self.http.get(self.url + path, **kw) as r:
                return r.status, await r.json(content_type=None)

    async def post(self, path: str, body: Any = None, *, data: Any = None, **kw: Any) -> tuple[int, Any]:
        async with asyncio.timeout(30):
            async with self.http.post(
                self.url + path, json=body if data is None else None, data=data, **kw
            ) as r:
                return r.status, await r.json(content_type=None)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with asyncio.timeout(10):
            async with self.http.delete(self.url + path, **kw) as r:
                return r.status, await r.json(content_type=None)


def edge_config(cfg: Config, hub: Hub, **edge: Any) -> Config:
    return config_mod.replace(
        cfg,
        edge={
            "hub": hub.uds_target,
            "port": 0,
            "usage_flush_s": 0.1,
            "relay_uds": "run/edge.sock",
            "uvloop": False,
            **edge,
        },
    )


@pytest.fixture
async def start_edge() -> AsyncIterator[Callable[..., Any]]:
    """`await start_edge(cfg)` -> EdgeHandle, with the gateway caught up with the hub (`caught_up=False`:
    once it has listed the registry, whether or not its watch has caught up).

    `on_app(app)` runs before the app is frozen (to connect a test to its signals).
    `handler_cancellation=False` runs the app as an embedding application might (edge/__main__ runs
    it with True: aiohttp then cancels a handler whose client went away)."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        cfg: Config,
        on_app: Callable[[web.Application], None] | None = None,
        handler_cancellation: bool = True,
        caught_up: bool = True,
    ) -> EdgeHandle:
        app = build_app(cfg)
        if on_app is not None:
            on_app(app)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, handler_cancellation=handler_cancellation
        )
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with asyncio.timeout(10):
            await (app[REGISTRY].following if caught_up else app[REGISTRY].synced).wait()
        http = aiohttp.ClientSession()
        sessions.append(http)
        return EdgeHandle(app, f"http://{host}:{port}", http, runner)

    yield start
    for s in sessions:
        await s.close()
    for r in reversed(runners):
        await r.cleanup()


@pytest.fixture
async def edge(cfg: Config, hub: Hub, start_edge: Callable[..., Any]) -> EdgeHandle:
    return await start_edge(edge_config(cfg, hub))


@pytest.fixture
async def echo_server(start_tool_server: Callable[..., Any]) -> str:
    """A gRPC tool server on a temp socket serving the echo actions as tools echo, echo2... (unregistered)."""
    _, endpoint = await start_tool_server({f"echo{s}": ECHO_ACTIONS for s in ("", "2", "3", "4")})
    return endpoint


@pytest.fixture
async def registered_echo(edge: EdgeHandle, hub: Hub, echo_server: str) -> str:
    """Tool `echo` registered with the hub and visible in the edge's cache."""
    await edge.gateway.register(grpc_tool("echo", echo_server))
    assert "echo" in edge.registry
    return "echo"


def args(d: dict[str, Any]) -> Any:
    return dict_to_struct(d)


def unread_socket(url: str) -> socket.socket:
    """A TCP connection to `url`'s host and port with a tiny receive buffer: a client that never reads
    (pass it to `websockets.connect(..., sock=..., max_queue=1)`) backs the edge's writes up at once."""
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def read_until_closed(ws: Any, most: int, within_s: float = 30.0) -> int | None:
    """Read up to `most` messages: the close code the edge sent if it closed first, else None."""
    try:
        async with asyncio.timeout(within_s):
            for _ in range(most):
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else -1
    return None

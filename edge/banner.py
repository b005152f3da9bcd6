"""The one banner `make run` prints when the mesh is ready: where everything is.

The edge prints it once, the first time it has caught up with the hub (so the hub serves, and
the tools it lists are the hub's): the console, REST, MCP over HTTP and WebSocket, the events
WebSocket, the hub's gRPC over TCP and its Unix socket, and whether an admin token is set (never
the token).
"""

from __future__ import annotations

import sys
from typing import TextIO

from aiohttp import web

from edge.hub_link import REGISTRY
from services.common.config import Config


def text(cfg: Config, port: int, tools: int) -> str:
    """The banner for an edge listening on `port` with `tools` tools registered."""
    host = cfg.edge.host if ":" not in cfg.edge.host else f"[{cfg.edge.host}]"
    http, ws = f"http://{host}:{port}", f"ws://{host}:{port}"
    token = (
        "set: admin actions need it (Authorization: Bearer ...)"
        if cfg.auth.admin_token
        else "not set: loopback only, everything open"
    )
    # Each of the hub's listeners may be switched off (an empty address): name only those it has.
    grpc = [f"{cfg.hub.tcp}  (TCP)"] if cfg.hub.tcp else []
    grpc += [f"unix://{cfg.path(cfg.hub.uds)}  (socket)"] if cfg.hub.uds else []
    rows = [
        ("console", f"{http}/ui/"),
        ("REST", f"{http}/api/v1  (OpenAPI: {http}/openapi.json)"),
        ("MCP", f"{http}/mcp  (Streamable HTTP), {ws}/ws/mcp  (WebSocket)"),
        ("events", f"{ws}/api/v1/events/tools"),
        ("gRPC", ", ".join(grpc) or "none"),
        ("admin token", token),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"ToolScore Mesh is ready ({tools} tools registered)"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


async def announce_when_ready(app: web.Application, cfg: Config, port: int, out: TextIO = sys.stdout) -> None:
    """Print the banner once the edge has first caught up with the hub (cancel to give up)."""
    registry = app[REGISTRY]
    await registry.following.wait()
    out.write(text(cfg, port, len(registry.entries)))
    out.flush()

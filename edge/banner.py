"""The one banner `make run` prints when the mesh is ready: where everything is.

The edge prints it once, the first time it has caught up with the hub (so the hub serves, and
the tools it lists are the hub's): the console, REST, MCP over HTTP and WebSocket, the events
WebSocket, the hub's gRPC over TCP and its Unix socket, and whether an admin token is set (never
the token). Every address is one bound: the edge's port as it got it, the hub's as the hub recorded
them (services/common/listening.py: a port 0 in the config is the one the system chose), when the
hub the edge follows is that local hub; otherwise the hub's configured addresses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from aiohttp import web

from edge.hub_link import GATEWAY, REGISTRY
from services.common import listening
from services.common.config import Config


def text(cfg: Config, port: int, tools: int, hub: Sequence[str] | None = None) -> str:
    """The banner for an edge listening on `port` with `tools` tools registered, its hub listening on
    `hub` (the addresses it bound; None: those configured)."""
    host = cfg.edge.host if ":" not in cfg.edge.host else f"[{cfg.edge.host}]"
    http, ws = f"http://{host}:{port}", f"ws://{host}:{port}"
    token = (
        "set: admin actions need it (Authorization: Bearer ...)"
        if cfg.auth.admin_token
        else "not set: loopback only, everything open"
    )
    # Each of the hub's listeners may be switched off (an empty address): name only those it has.
    if hub is None:
        hub = [cfg.hub.tcp] if cfg.hub.tcp else []
        hub += [f"unix://{cfg.path(cfg.hub.uds)}"] if cfg.hub.uds else []
    grpc = [f"{a}  (TCP)" for a in hub if not a.startswith("unix:")]
    grpc += [f"{a}  (socket)" for a in hub if a.startswith("unix:")]
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
    out.write(text(cfg, port, len(registry.entries), bound_hub(cfg, app[GATEWAY].opts.hub_target)))
    out.flush()


def bound_hub(cfg: Config, hub_target: str) -> list[str] | None:
    """The addresses the local hub recorded, if the edge follows that hub (`hub_target` is one)."""
    addresses = listening.read(cfg.path(cfg.paths.run_dir) / listening.FILE)
    return addresses if addresses is not None and hub_target in addresses else None

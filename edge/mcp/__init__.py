"""Standard MCP for the edge: Streamable HTTP at `/mcp` and WebSocket at `/ws/mcp`.

Both transports share one transport-independent dispatcher (`dispatcher.py`);
every capability of every registered tool is an MCP tool (`catalog.py`), and
calls go through the gateway's data path. See docs/mcp.md.

    add_routes(app, gateway, cfg)   # the edge app calls this once, before it starts
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from edge.gateway import HubGateway
from services.common.config import Config

from .catalog import Catalog, McpTool, tool_name
from .dispatcher import Dispatcher, ServerOptions, Session
from .http import StreamableHttp, refusal
from .service import McpOptions, McpService
from .websocket import McpWebSocket

MCP_SERVICE = web.AppKey("mcp_service", McpService)


def add_routes(
    app: web.Application, gateway: HubGateway, cfg: Config, opts: McpOptions | None = None
) -> None:
    """Register `/mcp` (Streamable HTTP) and `/ws/mcp` (WebSocket) and tie their lifetime to the app's.

    Client disconnects cancel in-flight calls only when the app's runner has
    `handler_cancellation=True` (SSE responses also notice at the next keepalive).
    """
    svc = McpService(gateway, cfg, opts)
    http = StreamableHttp(svc)
    ws = McpWebSocket(svc)
    app[MCP_SERVICE] = svc
    app.router.add_route("*", "/mcp", http.handle)
    app.router.add_get("/ws/mcp", ws.handle)

    async def serving(_: web.Application) -> AsyncIterator[None]:
        svc.start()
        yield

    # Streams and sockets end before aiohttp awaits the handlers, so in on_shutdown (as edge.open_sockets).
    async def on_shutdown(_: web.Application) -> None:
        await svc.stop()
        http.close()
        await ws.close()
        await svc.dispatcher.tool_sessions.close()  # the end calls of the sessions just forgotten

    app.cleanup_ctx.append(serving)
    app.on_shutdown.append(on_shutdown)


__all__ = [
    "MCP_SERVICE",
    "Catalog",
    "Dispatcher",
    "McpOptions",
    "McpService",
    "McpTool",
    "ServerOptions",
    "Session",
    "add_routes",
    "refusal",
    "tool_name",
]

"""Standard MCP for the edge: Streamable HTTP at `/mcp` and WebSocket at `/ws/mcp`, and the same for
each virtual server at `/mcp/servers/<name>` and `/ws/mcp/servers/<name>`. See docs/mcp.md.

    add_routes(app, gateway, registry, cfg)   # the edge app calls this once, before it starts

_protocol.py      JSON-RPC framing, the MCP constants and error codes both eras share
_sse.py           SSE framing and the resumable request streams of Streamable HTTP
dispatcher.py     the transport-independent dispatcher: per-era method -> handler tables, one error catch
envelope.py       the 2026-07-28 per-request envelope (`params._meta`) and the HTTP headers mirroring it
results.py        mesh call outcomes as `tools/call` results or JSON-RPC errors (the MCP failure policy)
tool_list.py      every capability of every enabled tool as a named MCP tool; the pages of `tools/list`
views.py          what one endpoint lists: the catalog through a filter and renames; virtual servers
tool_search.py    tool search: a view listed as find_tools and call_tool, over the registry's search index
tool_sessions.py  the tool sessions an MCP session opened, ended with it
federation.py     installed servers' prompts, resources and completion: their union, routed by name/URI
server_notices.py installed servers' log messages and resource updates, followed from the hub's stream
resource_subscriptions.py  the sessions' resource subscriptions, held at the hub once per (server, URI)
client_requests.py installed servers' requests to a session's client (sampling, elicitation, roots)
input_required.py 2026-07-28 calls waiting for their client's input: InputRequiredResult, sealed state
redis_sessions.py the session store shared by every edge of a cluster (sessions, tool sessions, streams)
mcp_service.py    the MCP service: options, stats, the live tool list and its announcements, lifetime
http.py           the Streamable HTTP transport (`/mcp`): sessions, SSE, resumption, bounds
http_cluster.py   the same transport with its sessions on Redis, served by every edge of a cluster
websocket.py      the WebSocket transport (`/ws/mcp`): one session per connection, bounded outbox
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from edge.gateway import HubGateway
from edge.registry_cache import RegistryCache
from services.common.config import Config
from services.common.errors import NotFound

from ._protocol import INVALID_REQUEST, error_response
from .dispatcher import Dispatcher, ServerOptions, Session
from .http import VIEW, StreamableHttp, refusal
from .http_cluster import ClusterHttp
from .mcp_service import McpOptions, McpService
from .redis_sessions import RedisSessions
from .tool_list import Catalog, McpTool, tool_name
from .websocket import McpWebSocket

MCP_SERVICE = web.AppKey("mcp_service", McpService)
MCP_HTTP = web.AppKey("mcp_http", StreamableHttp)


def add_routes(
    app: web.Application,
    gateway: HubGateway,
    registry: RegistryCache,
    cfg: Config,
    opts: McpOptions | None = None,
) -> None:
    """Register `/mcp` (Streamable HTTP) and `/ws/mcp` (WebSocket) and tie their lifetime to the app's.

    Client disconnects cancel in-flight calls only when the app's runner has
    `handler_cancellation=True` (SSE responses also notice at the next keepalive).
    """
    svc = McpService(gateway, registry, cfg, opts)
    shared = None
    if cfg.edge.mcp_session_store == "redis":
        c = cfg.cluster
        shared = RedisSessions(
            c.redis_url,
            node=c.node(),
            ttl_s=svc.opts.session_ttl_s,
            key_prefix=c.key_prefix,
            timeout_s=c.redis_timeout_s,
            max_connections=c.redis_max_connections,
        )
    http = StreamableHttp(svc) if shared is None else ClusterHttp(svc, shared)
    cluster = http if isinstance(http, ClusterHttp) else None
    ws = McpWebSocket(svc)
    app[MCP_SERVICE] = svc
    app[MCP_HTTP] = http
    app.router.add_route("*", "/mcp", http.handle)
    app.router.add_get("/ws/mcp", ws.handle)
    app.router.add_route("*", "/mcp/servers/{server}", _virtual(svc, http.handle))
    app.router.add_get("/ws/mcp/servers/{server}", _virtual(svc, ws.handle))

    async def serving(_: web.Application) -> AsyncIterator[None]:
        svc.start()
        if cluster is not None:
            cluster.start()
        yield
        if cluster is not None:
            await cluster.stop()
            await cluster.store.close()

    # Streams and sockets end before aiohttp awaits the handlers, so in on_shutdown (as edge.open_sockets).
    async def on_shutdown(_: web.Application) -> None:
        await svc.stop()
        http.close()
        await ws.close()
        await svc.dispatcher.tool_sessions.close()  # the end calls of the sessions just forgotten

    app.cleanup_ctx.append(serving)
    app.on_shutdown.append(on_shutdown)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _virtual(svc: McpService, handler: Handler) -> Handler:
    """`handler` serving the view of `/mcp/servers/<server>`; an unknown server is 404 (JSON)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["server"]
        view = svc.view(name)
        if view is None:
            err = NotFound(
                f"no MCP server {name[:128]!r}: a virtual server of the config, `search`, or the id "
                "of a registered tool (GET /api/v1/tools lists them)",
                reason="MCP_SERVER_NOT_FOUND",
                metadata={"server": name[:128]},
            )
            body = error_response(None, INVALID_REQUEST, err.message, err.to_json())
            return web.json_response(body, status=404)
        request[VIEW] = view
        return await handler(request)

    return serve


__all__ = [
    "MCP_HTTP",
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

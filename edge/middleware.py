"""The edge's one middleware: per-client HTTP bounds, the browser guard, the caller's authority,
the one error mapping, metrics, and the bounded write of the answer.

    middleware.mount(app, cfg.edge)   # app[ORIGIN], app[HTTP_BOUNDS]; needs app[AUTH] and app[METRICS]

Every error leaves through here and is answered by edge.errors_http (the one mapping of the
mesh's errors to HTTP status and JSON bodies); the MCP endpoint answers its own in JSON-RPC.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from edge import errors_http
from edge import mcp as edge_mcp
from edge.auth import AUTH
from edge.http_bounds import HttpBounds
from edge.metrics import METRICS
from edge.origin import OriginGuard
from services.common import authority
from services.common.config import EdgeConfig
from services.common.errors import ResourceExhausted

# Exact paths whose handlers apply the guard themselves, to answer with a JSON-RPC error (the MCP
# transports). Exact: other routes under /mcp (search, install) go through the middleware's check.
_OWN_GUARDS = frozenset({"/mcp", "/ws/mcp"})
ORIGIN = web.AppKey("origin", OriginGuard)
HTTP_BOUNDS = web.AppKey("http_bounds", HttpBounds)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mount(app: web.Application, edge: EdgeConfig) -> None:
    """Guard and bound every request of `app` (which must not be frozen yet)."""
    app[ORIGIN] = OriginGuard.from_config(edge)
    app[HTTP_BOUNDS] = HttpBounds.from_config(edge)
    app.middlewares.append(_edge_middleware)


def _streams(request: web.Request) -> bool:
    """A request that opens a long-lived stream bounded on its own (WebSockets, MCP's GET stream)."""
    if request.method != "GET":
        return False
    return request.path == "/mcp" or request.headers.get("Upgrade", "").lower() == "websocket"


@web.middleware
async def _edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bounds per client address, the browser guard, one error mapping, metrics, and the write."""
    if _streams(request):
        return await _handle(request, handler)
    bounds, client = request.app[HTTP_BOUNDS], request.remote or ""
    # The MCP transport answers in JSON-RPC; every other route in the one REST error shape.
    refuse = edge_mcp.refusal if request.path in _OWN_GUARDS else errors_http.error_response
    try:
        bounds.admit(client)
    except ResourceExhausted as err:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_http(request.method, route, 429, None)
        return refuse(err)
    try:
        return await bounds.send(request, await _handle(request, handler), client, refuse)
    finally:
        bounds.release(client)


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    # Calls made for this request (a WebSocket's, for its whole life) act with its rights; the
    # router asks only for an admin-only capability.
    acting = authority.act_as(functools.partial(request.app[AUTH].allows, request.headers))
    try:
        if request.path not in _OWN_GUARDS:
            request.app[ORIGIN].check(request.headers)
        resp = await handler(request)
    except Exception as exc:
        resp = errors_http.response_for(exc, request)
    finally:
        authority.reset(acting)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    ws = isinstance(resp, web.WebSocketResponse)
    request.app[METRICS].observe_http(
        request.method, route, resp.status, None if ws else time.perf_counter() - start
    )
    return resp

"""The edge as one aiohttp application: state, lifetime, middleware and routes.

`build_app(cfg)` wires everything; `cleanup_ctx` owns the gateway (the hub
connection, with the registry cache following the hub and the usage reporter),
the relay gRPC server for dialled-in servers and the events fan-out. Every
error leaves through `_edge_middleware`, which answers it with edge.errors_http
(the one mapping of the mesh's errors to HTTP status and JSON bodies).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import WSCloseCode, web
from toolscore.v1.tool_library_pb2_grpc import ToolLibraryServiceStub
from toolscore.v1.toolscore_pb2_grpc import ToolScoreServiceStub

from edge import discovery_routes, errors_http, events, openapi, tasks_routes
from edge import mcp as edge_mcp
from edge.auth import AdminAuth
from edge.gateway import GatewayOptions, HubGateway
from edge.http_bounds import HttpBounds
from edge.legacy import openapi as legacy_openapi
from edge.legacy import routes as legacy_routes
from edge.legacy import toolscore_ws
from edge.metrics import EdgeMetrics
from edge.origin import OriginGuard
from edge.registry_cache import RegistryCache
from edge.relay import RelayServer
from edge.rest import routes as rest_routes
from edge.state import AUTH, CONFIG, EVENTS, GATEWAY, METRICS, REGISTRY, RELAY, STARTED, WEBSOCKETS
from edge.usage import UsageReporter
from services.common import authority
from services.common.config import Config
from services.common.errors import MeshError, ResourceExhausted, Unavailable
from services.discovery.client import DiscoveryClient
from services.runtime.service import service_from_config

log = logging.getLogger(__name__)

# Exact paths whose handlers apply the guard themselves, to answer with a JSON-RPC error (the MCP
# transports). Exact: other routes under /mcp (search, install) go through the middleware's check.
_OWN_GUARDS = frozenset({"/mcp", "/ws/mcp"})
ORIGIN = web.AppKey("origin", OriginGuard)
HTTP_BOUNDS = web.AppKey("http_bounds", HttpBounds)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gateway_options(cfg: Config) -> GatewayOptions:
    hub_target = cfg.edge.hub or cfg.hub_target(tcp=cfg.mesh.mode == "tcp")
    if cfg.edge.data_path not in ("direct", "hub"):
        raise MeshError(
            f"edge.data_path must be 'direct' or 'hub', not {cfg.edge.data_path!r}", reason="INVALID_CONFIG"
        )
    return GatewayOptions(
        hub_target=hub_target,
        direct=cfg.edge.data_path == "direct",
        default_timeout_s=cfg.hub.default_timeout_s,
        max_timeout_s=cfg.hub.max_timeout_s,
        max_argument_bytes=cfg.hub.max_argument_bytes,
        max_message_bytes=cfg.hub.max_message_bytes,
        admin_token=cfg.auth.admin_token,
        service_credential_path=str(cfg.path(cfg.auth.service_credential_path)),
    )


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


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    gateway = app[GATEWAY]
    async with gateway:
        gateway.observe_calls(app[METRICS].observe_call)
        app[EVENTS].attach()
        relay = app[RELAY]
        async with relay:
            log.info("edge following the hub at %s", gateway.opts.hub_target)
            yield
        app[EVENTS].detach()
    log.info("edge stopped (%s:%d)", cfg.edge.host, cfg.edge.port)


async def _close_websockets(app: web.Application) -> None:
    open_sockets = app[WEBSOCKETS]
    sockets = list(open_sockets)
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"edge shutting down") for ws in sockets),
        return_exceptions=True,
    )


def build_app(cfg: Config, llm: tuple[str, str] | None = None) -> web.Application:
    """The whole edge, ready for `web.AppRunner`.

    `llm` is (base_url, api_key) of the runtime's OpenAI-compatible endpoint, read
    by `__main__`; without it the task routes answer 503 with a clear reason.
    """
    app = web.Application(middlewares=[_edge_middleware], client_max_size=cfg.edge.max_frame_bytes)
    registry = RegistryCache(event_buffer=cfg.edge.event_buffer)
    gateway = HubGateway(gateway_options(cfg), registry, UsageReporter(flush_s=cfg.edge.usage_flush_s))
    metrics = EdgeMetrics()
    app[CONFIG] = cfg
    app[GATEWAY] = gateway
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[AUTH] = AdminAuth(cfg.auth.admin_token)
    app[ORIGIN] = OriginGuard.from_config(cfg.edge)
    app[HTTP_BOUNDS] = HttpBounds.from_config(cfg.edge)
    app[WEBSOCKETS] = set()
    app[STARTED] = time.time()
    app[EVENTS] = events.EventHub(registry, metrics, cfg.edge.subscriber_queue)
    app[RELAY] = RelayServer(cfg, gateway, registry)
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_close_websockets)
    legacy_routes.add_routes(app)  # first: its literal paths under /api/v1/tools
    rest_routes.add_routes(app)
    openapi.mount(app, legacy_openapi.FRAGMENT)
    events.add_routes(app)
    toolscore_ws.add_routes(app)
    edge_mcp.add_routes(app, gateway, cfg)
    if cfg.discovery.enabled:  # a mesh without discovery has no such routes (clients see 404)
        discovery_routes.add_routes(app, _GatewayDiscoveryClient(gateway))
    _task_routes(app, cfg, llm)
    return app


class _GatewayDiscoveryClient(DiscoveryClient):
    """The discovery client over the gateway's channel to the hub (which exists once the app starts)."""

    def __init__(self, gateway: HubGateway) -> None:
        self._gateway = gateway
        self.timeout_s, self.install_timeout_s = 30.0, 600.0

    @property  # type: ignore[override]
    def _stub(self) -> ToolScoreServiceStub:
        return self._gateway.toolscore

    @property  # type: ignore[override]
    def _library(self) -> ToolLibraryServiceStub:
        return self._gateway.library


def _task_routes(app: web.Application, cfg: Config, llm: tuple[str, str] | None) -> None:
    if llm is not None and (llm[0] or llm[1]):
        tasks_routes.add_routes(app, service_from_config(cfg, *llm), app[AUTH])
        return

    async def no_llm(request: web.Request) -> web.Response:
        raise Unavailable(
            "no LLM endpoint is configured for the task service: set OPENAI_BASE_URL "
            "(and OPENAI_API_KEY) for the edge, or [runtime] llm_base_url",
            reason="NO_LLM_CONFIGURED",
        )

    app.router.add_post("/api/v1/tasks", no_llm)
    app.router.add_get("/api/v1/tasks/{task_id}", no_llm)

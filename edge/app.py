"""The edge as one aiohttp application: the list of its components, each mounting itself.

Each component defines its own `web.AppKey`s and ties its lifetime to the app's through
`cleanup_ctx` (entered in the order mounted, left in reverse): the hub link (gateway, registry
cache, usage reporter), the events fan-out, the relay for dialled-in servers, MCP, the task
service. The exceptions are the open WebSockets and MCP's streams, closed in `on_shutdown`
(edge.open_sockets says why). Every error leaves through edge.middleware, which answers it with
edge.errors_http.
"""

from __future__ import annotations

from aiohttp import web

from edge import (
    auth,
    console,
    dialled_in,
    discovery_routes,
    events_ws,
    hub_link,
    install_feed,
    metrics,
    middleware,
    open_sockets,
    openapi,
    tasks_routes,
)
from edge import mcp as edge_mcp
from edge.legacy import openapi as legacy_openapi
from edge.legacy import routes as legacy_routes
from edge.legacy import toolscore_ws
from edge.rest import routes as rest_routes
from services.common.config import Config
from services.common.errors import Unavailable
from services.runtime.task_workers import service_from_config


def build_app(cfg: Config, llm: tuple[str, str] | None = None) -> web.Application:
    """The whole edge, ready for `web.AppRunner`.

    `llm` is (base_url, api_key) of the runtime's OpenAI-compatible endpoint, read
    by `__main__`; without it the task routes answer 503 with a clear reason.
    """
    app = web.Application(client_max_size=cfg.edge.max_frame_bytes)
    figures = metrics.mount(app)
    admin = auth.mount(app, cfg.auth.admin_token)
    middleware.mount(app, cfg.edge)
    open_sockets.mount(app)
    gateway = hub_link.mount(app, cfg)
    gateway.observe_calls(figures.observe_call)
    events = events_ws.mount(app, gateway.cache, figures, cfg.edge)
    dialled_in.mount(app, cfg, gateway, gateway.cache)
    legacy_routes.mount(app)  # first: its literal paths under /api/v1/tools
    rest_routes.mount(app)
    toolscore_ws.mount(app, cfg.edge)
    console.mount(app, gateway)  # /ui and the calls feed it reads
    openapi.mount(app, legacy_openapi.FRAGMENT, console.FRAGMENT)
    edge_mcp.add_routes(app, gateway, gateway.cache, cfg)
    if cfg.discovery.enabled:  # a mesh without discovery has no such routes (clients see 404)
        discovery = discovery_routes.GatewayDiscoveryClient(gateway)
        discovery_routes.add_routes(app, discovery)
        events.installs = install_feed.InstallFeed(discovery, events.publish_install)
        install_feed.mount(app, events.installs)
    if llm is not None and (llm[0] or llm[1]):
        tasks_routes.add_routes(app, service_from_config(cfg, *llm), admin)
    else:
        _no_task_service(app)
    return app


def _no_task_service(app: web.Application) -> None:
    async def no_llm(request: web.Request) -> web.Response:
        raise Unavailable(
            "no LLM endpoint is configured for the task service: set OPENAI_BASE_URL "
            "(and OPENAI_API_KEY) for the edge, or [runtime] llm_base_url",
            reason="NO_LLM_CONFIGURED",
        )

    app.router.add_post("/api/v1/tasks", no_llm)
    app.router.add_get("/api/v1/tasks/{task_id}", no_llm)
    app.router.add_get("/api/v1/tasks/{task_id}/steps", no_llm)

"""The original system's REST routes (docs/rest.md, "The original routes"), answered in its shapes.

    GET /health /status /tools /tools/{tool_id} /stats
    POST /admin/tools/register, DELETE /admin/tools/{tool_id}, POST /admin/mcp/register
    GET /api/v1/tools/available, POST /api/v1/tools/execute

They share the clean API's reads (edge.rest.routes: health, stats, the tool lookup) and the one
body reader (edge.json_body); only the JSON they answer differs (edge.legacy.shapes). A failing
tool is a 200 with `success: false`.
"""

from __future__ import annotations

from aiohttp import web
from toolscore.v1 import tool_pb2

from edge.auth import AUTH
from edge.hub_link import GATEWAY, REGISTRY
from edge.json_body import JsonBody, json_response
from edge.legacy import shapes
from edge.legacy.execute import execute
from edge.rest.routes import health, stats, tool_of
from edge.rest.shapes import now_iso, tool_from_json
from services.common.errors import InvalidRequest


async def status(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    synced = registry.synced.is_set()
    return json_response(
        {
            "status": "running" if synced and registry.following.is_set() else "degraded",
            "tool_library_initialized": synced,
            "stats": stats(request.app),
        }
    )


async def list_tools(request: web.Request) -> web.Response:
    tools = request.app[REGISTRY].tools()
    return json_response(
        {"status": "success", "tools": [shapes.summary(t) for t in tools], "total_count": len(tools)}
    )


async def get_tool(request: web.Request) -> web.Response:
    return json_response({"status": "success", "tool": shapes.detail(tool_of(request))})


async def stats_route(request: web.Request) -> web.Response:
    return json_response({"status": "success", "stats": stats(request.app)})


async def register(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    body = await JsonBody.read(request)
    tool = tool_from_json(body.require("tool_spec"), where="tool_spec")
    resp = await request.app[GATEWAY].register(tool)
    return json_response(shapes.registered(resp))


async def deregister(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    resp = await request.app[GATEWAY].deregister(request.match_info["tool_id"])
    return json_response(
        {"success": True, "message": f"tool {resp.tool.tool_id} deregistered", "revision": resp.revision}
    )


async def register_mcp_server(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    spec = (await JsonBody.read(request)).object("server_spec", required=True)
    endpoint = spec.text("endpoint")
    if endpoint.startswith(("http://", "https://")):
        raise InvalidRequest(
            "Streamable HTTP MCP servers cannot be registered here yet (they arrive with the discovery "
            "engine); register a gRPC endpoint (unix:///path.sock or host:port)",
            reason="MCP_HTTP_NOT_SUPPORTED",
            metadata={"endpoint": endpoint},
        )
    if endpoint.startswith(("ws://", "wss://")):
        raise InvalidRequest(
            "WebSocket servers dial in themselves: connect to /websocket and send register_tool "
            "with tool_type 'mcp_server'",
            reason="WS_ENDPOINT_NOT_SUPPORTED",
            metadata={"endpoint": endpoint},
        )
    tool = tool_from_json(spec.data, where="server_spec", kind=tool_pb2.TOOL_KIND_GRPC_SERVER)
    resp = await request.app[GATEWAY].register(tool)
    return json_response(shapes.registered(resp))


async def available_tools(request: web.Request) -> web.Response:
    tools = request.app[REGISTRY].tools()
    return json_response(
        {
            "status": "success",
            "available_tools": [shapes.available_tool(t) for t in tools],
            "total_count": len(tools),
            "timestamp": now_iso(),
        }
    )


def mount(app: web.Application) -> None:
    """Mount the original routes on `app`, before the clean API's (their literal paths come first).

    Needs the hub link, auth and what the clean API's stats read mounted on `app`.
    """
    app.router.add_routes(
        [
            web.get("/health", health),
            web.get("/status", status),
            web.get("/tools", list_tools),
            web.get("/tools/{tool_id}", get_tool),
            web.get("/stats", stats_route),
            web.post("/admin/tools/register", register),
            web.delete("/admin/tools/{tool_id}", deregister),
            web.post("/admin/mcp/register", register_mcp_server),
            web.get("/api/v1/tools/available", available_tools),
            web.post("/api/v1/tools/execute", execute),  # edge.legacy.execute
        ]
    )

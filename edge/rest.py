"""REST: the clean `/api/v1` API, the original system's routes, `/metrics` and `/openapi.json`.

Handlers only translate: JSON in (edge.views), one gateway call or registry cache read, JSON out.
Errors are raised as MeshError and mapped once, by the app's middleware.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from edge import openapi, views
from edge.json_body import JsonBody
from edge.state import AUTH, EVENTS, GATEWAY, METRICS, REGISTRY, RELAY, STARTED
from services.common.errors import InvalidRequest, NotFound

_JSON_TYPE = "application/json"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=views.dumps(body), status=status, content_type=_JSON_TYPE)


def _tool(request: web.Request) -> tool_pb2.Tool:
    tool_id = request.match_info["tool_id"]
    entry = request.app[REGISTRY].get(tool_id)
    if entry is None:
        raise NotFound(
            f"no tool {tool_id!r} is registered", reason="TOOL_NOT_FOUND", metadata={"tool_id": tool_id}
        )
    return entry.snapshot()


def stats(app: web.Application) -> dict[str, Any]:
    registry = app[REGISTRY]
    entries = list(registry.entries.values())  # counted in place: no snapshot copies per request
    by_kind: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: e.tool.tool_id):
        name = views.KIND_NAMES.get(e.tool.kind, "unspecified")
        by_kind[name] = by_kind.get(name, 0) + 1
    calls = sum(e.calls for e in entries)
    successes = sum(e.successes for e in entries)
    metrics = app[METRICS]
    return {
        "total_tools": len(entries),
        "enabled_tools": sum(e.tool.enabled for e in entries),
        "healthy_tools": sum(e.health == tool_pb2.HEALTH_STATUS_HEALTHY for e in entries),
        "unhealthy_tools": sum(e.health == tool_pb2.HEALTH_STATUS_UNHEALTHY for e in entries),
        "tools_by_kind": by_kind,
        "total_calls": calls,
        "total_successes": successes,
        "success_rate": successes / calls if calls else 0.0,
        "revision": registry.revision,
        "hub_connected": registry.synced.is_set(),
        "websocket_connections": dict(metrics.ws_open),
        "event_subscribers": len(app[EVENTS].subscribers),
        "dialled_in_servers": sum(1 for s in app[RELAY].sessions.values() if s.tools),
        "uptime_s": round(time.time() - app[STARTED], 3),
    }


# -- the original routes -------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if not registry.synced.is_set():
        return _json(
            {
                "status": "unhealthy",
                "message": "the edge cannot reach the hub",
                "hub_connected": False,
                **({"reason": registry.problem} if registry.problem else {}),
            },
            status=503,
        )
    if not registry.following.is_set():  # reachable, not caught up with its events: the cache may be stale
        return _json(
            {
                "status": "degraded",
                "message": "the edge is resyncing its tool cache with the hub",
                "hub_connected": True,
                "resyncing": True,
                "reason": registry.problem or "catching up with the hub's events",
                "revision": registry.revision,
            },
            status=503,
        )
    return _json(
        {
            "status": "healthy",
            "message": "ToolScore edge is running",
            "hub_connected": True,
            "revision": registry.revision,
        }
    )


async def status(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    synced = registry.synced.is_set()
    return _json(
        {
            "status": "running" if synced and registry.following.is_set() else "degraded",
            "tool_library_initialized": synced,
            "stats": stats(request.app),
        }
    )


async def list_tools_legacy(request: web.Request) -> web.Response:
    tools = request.app[REGISTRY].tools()
    return _json(
        {"status": "success", "tools": [views.legacy_summary(t) for t in tools], "total_count": len(tools)}
    )


async def get_tool_legacy(request: web.Request) -> web.Response:
    return _json({"status": "success", "tool": views.legacy_detail(_tool(request))})


async def stats_legacy(request: web.Request) -> web.Response:
    return _json({"status": "success", "stats": stats(request.app)})


async def register_legacy(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    body = await JsonBody.read(request)
    tool = views.tool_from_json(body.require("tool_spec"), where="tool_spec")
    resp = await request.app[GATEWAY].register(tool)
    return _json(views.registered_json(resp))


async def deregister_legacy(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    resp = await request.app[GATEWAY].deregister(request.match_info["tool_id"])
    return _json(
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
    tool = views.tool_from_json(spec.data, where="server_spec", kind=tool_pb2.TOOL_KIND_GRPC_SERVER)
    resp = await request.app[GATEWAY].register(tool)
    return _json(views.registered_json(resp))


async def available_tools(request: web.Request) -> web.Response:
    tools = request.app[REGISTRY].tools()
    return _json(
        {
            "status": "success",
            "available_tools": [views.available_tool(t) for t in tools],
            "total_count": len(tools),
            "timestamp": views.now_iso(),
        }
    )


async def execute_legacy(request: web.Request) -> web.Response:
    start = time.perf_counter()
    body = await JsonBody.read(request)
    call = ex.ExecuteRequest(
        tool_id=body.text("tool_id"),
        action=body.text("action"),
        arguments=views.arguments_struct(
            body.get("parameters"), request.app[GATEWAY].opts.max_argument_bytes
        ),
    )
    resp = await request.app[GATEWAY].execute(call)
    return _json(views.legacy_result(resp, time.perf_counter() - start))


# -- the clean API ---------------------------------------------------------------------


async def v1_list_tools(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    kind, tag = request.query.get("kind"), request.query.get("tag")
    tools = [
        t
        for t in registry.tools()
        if (not kind or views.KIND_NAMES.get(t.kind) == kind) and (not tag or tag in t.tags)
    ]
    return _json(
        {
            "tools": [views.tool_json(t) for t in tools],
            "total_count": len(tools),
            "revision": registry.revision,
        }
    )


async def v1_get_tool(request: web.Request) -> web.Response:
    return _json(views.tool_json(_tool(request)))


async def v1_register_tool(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    tool = views.tool_from_json((await JsonBody.read(request)).data)
    resp = await request.app[GATEWAY].register(tool)
    return _json(
        {
            "tool": views.tool_json(resp.tool),
            "created": resp.created,
            "updated": resp.updated,
            "revision": resp.revision,
        },
        status=201 if resp.created else 200,
    )


async def v1_deregister_tool(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    resp = await request.app[GATEWAY].deregister(request.match_info["tool_id"])
    return _json({"tool": views.tool_json(resp.tool), "revision": resp.revision})


async def v1_call_tool(request: web.Request) -> web.Response:
    body = await JsonBody.read(request)
    call = ex.ExecuteRequest(
        tool_id=request.match_info["tool_id"],
        action=body.text("action"),
        arguments=views.arguments_struct(
            body.get("arguments"), request.app[GATEWAY].opts.max_argument_bytes, "arguments"
        ),
        request_id=body.text("request_id", required=False),
        session_id=body.text("session_id", required=False),
    )
    timeout = body.seconds("timeout_s")
    if timeout is not None:
        call.timeout.FromNanoseconds(int(timeout * 1e9))
    resp = await request.app[GATEWAY].execute(call)
    return _json(views.response_json(resp))


async def v1_stats(request: web.Request) -> web.Response:
    return _json(stats(request.app))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
        charset="utf-8",
    )


async def openapi_document(request: web.Request) -> web.Response:
    return _json(openapi.document())


def add_routes(app: web.Application) -> None:
    # Literal paths before `{tool_id}` ones: a tool called `available` is reachable under /api/v1/tools only
    # through the listing (documented in docs/rest.md).
    app.router.add_routes(
        [
            web.get("/health", health),
            web.get("/status", status),
            web.get("/tools", list_tools_legacy),
            web.get("/tools/{tool_id}", get_tool_legacy),
            web.get("/stats", stats_legacy),
            web.post("/admin/tools/register", register_legacy),
            web.delete("/admin/tools/{tool_id}", deregister_legacy),
            web.post("/admin/mcp/register", register_mcp_server),
            web.get("/api/v1/tools/available", available_tools),
            web.post("/api/v1/tools/execute", execute_legacy),
            web.get("/api/v1/health", health),
            web.get("/api/v1/stats", v1_stats),
            web.get("/api/v1/tools", v1_list_tools),
            web.post("/api/v1/tools", v1_register_tool),
            web.get("/api/v1/tools/{tool_id}", v1_get_tool),
            web.delete("/api/v1/tools/{tool_id}", v1_deregister_tool),
            web.post("/api/v1/tools/{tool_id}/call", v1_call_tool),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi_document),
        ]
    )

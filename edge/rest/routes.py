"""The clean REST API, `/api/v1`: tools, calls, health, stats.

Handlers only translate: the body in (edge.json_body), one gateway call or registry cache read,
JSON out (edge.rest.shapes, written by edge.json_body). Errors are raised as MeshError and answered
once, by the app's middleware (edge.errors_http). The original system's routes are edge.legacy.routes.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from edge.auth import AUTH
from edge.dialled_in import RELAY
from edge.events_ws import EVENTS
from edge.hub_link import GATEWAY, REGISTRY
from edge.json_body import JSON_TYPE, JsonBody, fill_arguments
from edge.json_body import json_response as json_response  # also the console's (edge.console)
from edge.metrics import METRICS
from edge.rest import paging, shapes
from edge.rest.tool_text import tool_text
from services.common.errors import NotFound
from services.library.registry import Entry

STARTED = web.AppKey("started", float)  # when the app was built: uptime_s in the stats


def tool_of(request: web.Request) -> tool_pb2.Tool:
    """The registered tool named by the path's `{tool_id}`, or NotFound (404)."""
    tool_id = request.match_info["tool_id"]
    entry = request.app[REGISTRY].get(tool_id)
    if entry is None:
        raise NotFound(
            f"no tool {tool_id!r} is registered", reason="TOOL_NOT_FOUND", metadata={"tool_id": tool_id}
        )
    return entry.snapshot()


def stats(app: web.Application) -> dict[str, Any]:
    """Registry and edge figures (`/api/v1/stats`, and the original `/stats` and `/status`)."""
    registry = app[REGISTRY]
    entries = list(registry.entries.values())  # counted in place: no snapshot copies per request
    by_kind: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: e.tool.tool_id):
        name = shapes.KIND_NAMES.get(e.tool.kind, "unspecified")
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


async def health(request: web.Request) -> web.Response:
    """`/api/v1/health` and the original `/health`: 503 unless the hub is reachable and followed."""
    registry = request.app[REGISTRY]
    if not registry.synced.is_set():
        return json_response(
            {
                "status": "unhealthy",
                "message": "the edge cannot reach the hub",
                "hub_connected": False,
                **({"reason": registry.problem} if registry.problem else {}),
            },
            status=503,
        )
    if not registry.following.is_set():  # reachable, not caught up with its events: the cache may be stale
        return json_response(
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
    return json_response(
        {
            "status": "healthy",
            "message": "ToolScore edge is running",
            "hub_connected": True,
            "revision": registry.revision,
        }
    )


async def v1_list_tools(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    kind, tag = request.query.get("kind"), request.query.get("tag")

    def wanted(e: Entry) -> bool:
        return (not kind or shapes.KIND_NAMES.get(e.tool.kind) == kind) and (not tag or tag in e.tool.tags)

    if not paging.wants_pages(request):  # the whole listing, as before pages
        every = [e for e in registry.entries_after("") if wanted(e)]
        return _listing(every, {"total_count": len(every), "revision": registry.revision})
    size, after = paging.page_size(request), paging.after(request)
    rest: list[Entry] = []
    for e in registry.entries_after(after):  # no await in between: the cache stays still
        if wanted(e):
            rest.append(e)
            if len(rest) > size:
                break
    page = rest[:size]
    # Filtered, the count reads every entry's head (no definition is parsed or copied).
    total = sum(1 for e in registry.entries_after("") if wanted(e)) if kind or tag else len(registry.entries)
    more = paging.token(page[-1].tool.tool_id) if len(rest) > size else ""
    return _listing(page, {"total_count": total, "revision": registry.revision, "next_page_token": more})


def _listing(entries: list[Entry], fields: dict[str, Any]) -> web.Response:
    """`{"tools": [...], **fields}`, each tool's JSON from tool_text."""
    listed = ",".join(tool_text(e) for e in entries)
    return web.Response(text=f'{{"tools":[{listed}],{shapes.dumps(fields)[1:]}', content_type=JSON_TYPE)


async def v1_get_tool(request: web.Request) -> web.Response:
    return json_response(shapes.tool_json(tool_of(request)))


async def v1_register_tool(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    tool = shapes.tool_from_json((await JsonBody.read(request)).data)
    resp = await request.app[GATEWAY].register(tool)
    return json_response(
        {
            "tool": shapes.tool_json(resp.tool),
            "created": resp.created,
            "updated": resp.updated,
            "revision": resp.revision,
        },
        status=201 if resp.created else 200,
    )


async def v1_deregister_tool(request: web.Request) -> web.Response:
    request.app[AUTH].require(request.headers)
    resp = await request.app[GATEWAY].deregister(request.match_info["tool_id"])
    return json_response({"tool": shapes.tool_json(resp.tool), "revision": resp.revision})


async def v1_call_tool(request: web.Request) -> web.Response:
    body = await JsonBody.read(request)
    gateway = request.app[GATEWAY]
    call = ex.ExecuteRequest(tool_id=request.match_info["tool_id"], action=body.text("action"))
    arguments = fill_arguments(
        call.arguments, body.get("arguments"), gateway.opts.max_argument_bytes, "arguments"
    )
    call.request_id = body.text("request_id", required=False)
    call.session_id = body.text("session_id", required=False)
    timeout = body.seconds("timeout_s")
    if timeout is not None:
        call.timeout.FromNanoseconds(int(timeout * 1e9))
    resp = await gateway.execute(call, arguments=arguments)
    return json_response(shapes.response_json(resp))


async def v1_stats(request: web.Request) -> web.Response:
    return json_response(stats(request.app))


def mount(app: web.Application) -> None:
    """Mount `/api/v1` (but the original routes under it) on `app`.

    Needs the hub link, auth, metrics, events and the relay mounted on `app` (their AppKeys).
    """
    app[STARTED] = time.time()
    # Literal paths before `{tool_id}` ones: a tool called `available` is reachable under /api/v1/tools
    # only through the listing (docs/rest.md). The original routes, mounted first, hold those literals.
    app.router.add_routes(
        [
            web.get("/api/v1/health", health),
            web.get("/api/v1/stats", v1_stats),
            web.get("/api/v1/tools", v1_list_tools),
            web.post("/api/v1/tools", v1_register_tool),
            web.get("/api/v1/tools/{tool_id}", v1_get_tool),
            web.delete("/api/v1/tools/{tool_id}", v1_deregister_tool),
            web.post("/api/v1/tools/{tool_id}/call", v1_call_tool),
        ]
    )

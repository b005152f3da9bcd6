"""The ToolScore WebSocket `/websocket` (the original "MCP WebSocket" protocol).

JSON text frames with `type` and `request_id`. Clients call `register_tool`,
`list_tools` and `execute_tool` (answered by `*_response`); a server that
registered with `tool_type: "mcp_server"` is called back on the same
connection with `execute_tool_action` (see edge.dialled_in). Requests run
concurrently (at most `[edge] max_in_flight`; more get an error at once), so a
slow call never blocks the responses a dialled-in server sends on the same
socket. Replies go through the connection's bounded outbox (edge.outbox): a
client that does not read them is closed with 1013. Protocol faults are
`{type: "error", request_id, ...}`, made by edge.errors_ws; a failing tool is a result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web
from toolscore.v1 import executor_pb2 as ex

from edge import errors_ws, json_body
from edge.auth import AUTH
from edge.dialled_in import RELAY, RelayServer, ServerSession
from edge.hub_link import GATEWAY, REGISTRY
from edge.legacy import shapes
from edge.legacy.execute import execute_result
from edge.metrics import METRICS
from edge.open_sockets import OPEN_SOCKETS
from edge.outbox import Outbox, OutboxLimits, OutboxStats
from edge.rest.shapes import dumps, tool_from_json
from services.common import jsonvalue
from services.common.config import EdgeConfig
from services.common.errors import InvalidRequest, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

ROUTE = "/websocket"
OUTBOX_STATS: web.AppKey[OutboxStats] = web.AppKey("toolscore_ws_outbox_stats")
SETTINGS = web.AppKey("toolscore_ws_settings", EdgeConfig)


class Connection:
    """One /websocket client: its requests in flight and (maybe) its served tools."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, session: ServerSession) -> None:
        self.app = request.app
        self.ws = ws
        self.session = session
        self.authorized = request.app[AUTH].allows(request.headers)
        self.tasks: set[asyncio.Task[None]] = set()
        edge = request.app[SETTINGS]
        self.max_in_flight = edge.max_in_flight
        limits = OutboxLimits(edge.subscriber_queue, edge.outbox_bytes)
        self.out = Outbox(
            ws, limits, transport=request.transport, stats=request.app[OUTBOX_STATS], on_slow=self._slow
        )

    def _slow(self) -> str:
        log.info("closing a slow /websocket client (%s)", self.session.peer)
        return "client too slow: it did not read its replies"

    def send(self, msg: dict[str, Any]) -> None:
        self.out.push(dumps(msg))

    def error(self, message: str, request_id: Any = None, **extra: Any) -> None:
        self.send({"type": "error", "request_id": request_id, "message": message, **extra})

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def dispatch(self, data: str) -> None:
        if self.out.overflowed:  # closing it as a slow reader: nothing more is served
            return
        try:
            msg = json_body.loads(data)
        except ValueError as exc:
            self.error(f"Invalid JSON: {exc}" if isinstance(exc, jsonvalue.JsonTooDeep) else "Invalid JSON")
            return
        if not isinstance(msg, dict):
            self.error("a message must be a JSON object with a 'type'")
            return
        kind, rid = msg.get("type"), msg.get("request_id")
        if kind == "execute_tool_action_response":
            if not self.session.resolve(msg):
                self.error(
                    "no call is waiting for this request_id (it may have timed out)", rid, request_type=kind
                )
            return
        if not isinstance(kind, str) or kind not in _HANDLERS:
            self.error(
                f"unknown message type {kind!r}; expected one of {sorted(_HANDLERS)}",
                rid,
                request_type=kind if isinstance(kind, str) else None,
            )
            return
        if len(self.tasks) >= self.max_in_flight:
            err = ResourceExhausted(
                f"{self.max_in_flight} requests are already in flight on this connection; "
                "wait for a reply and retry",
                reason="TOO_MANY_IN_FLIGHT",
                metadata={"max_in_flight": str(self.max_in_flight)},
            )
            self.send(errors_ws.error_message(err, rid, kind))
            return
        self.spawn(self._run(_HANDLERS[kind], kind, rid, msg))

    async def _run(self, handler: Any, kind: str, rid: Any, msg: dict[str, Any]) -> None:
        try:
            reply = await handler(self, msg)
        except Exception as exc:
            reply = errors_ws.message_for(exc, rid, kind)
        else:
            reply = {"type": f"{kind}_response", "request_id": rid, **reply}
        self.send(reply)


async def _register_tool(conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    if not conn.authorized:
        raise Unauthenticated(
            "register_tool needs the admin token (connect with Authorization: Bearer <token>)",
            reason="ADMIN_TOKEN_REQUIRED",
        )
    spec = msg.get("tool_spec")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            "tool_spec (an object) is required", reason="MISSING_FIELD", metadata={"field": "tool_spec"}
        )
    relay: RelayServer = conn.app[RELAY]
    if spec.get("tool_type", "function") == "mcp_server":
        resp = await relay.register(conn.session, spec)
    else:
        endpoint = spec.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint or endpoint.startswith(("ws://", "wss://", "http")):
            raise InvalidRequest(
                "a tool registered with tool_type 'function' needs a gRPC endpoint (unix:///path.sock or "
                "host:port); to be called over this connection, register with tool_type 'mcp_server'",
                reason="MISSING_ENDPOINT",
            )
        resp = await conn.app[GATEWAY].register(tool_from_json(spec, where="tool_spec"))
    return shapes.registered(resp)


async def _list_tools(conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    tools = conn.app[REGISTRY].tools()
    return {
        "success": True,
        "total_count": len(tools),
        "tools": [
            {
                "tool_id": t.tool_id,
                "name": t.name,
                "description": t.description,
                "tool_type": shapes.tool_type(t),
                "capabilities": [shapes.capability(c) for c in t.capabilities],
            }
            for t in tools
        ],
    }


async def _execute_tool(conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    tool_id, action = msg.get("tool_id"), msg.get("action")
    for name, value in (("tool_id", tool_id), ("action", action)):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{name} is required", reason="MISSING_FIELD", metadata={"field": name})
    gateway = conn.app[GATEWAY]
    call = ex.ExecuteRequest(tool_id=tool_id, action=action, request_id=str(msg.get("request_id") or ""))
    limit = gateway.opts.max_argument_bytes
    arguments = json_body.fill_arguments(call.arguments, msg.get("parameters"), limit)
    resp = await gateway.execute(call, arguments=arguments)
    return {"tool_id": tool_id, "action": action, **execute_result(resp, time.perf_counter() - start)}


_HANDLERS = {"register_tool": _register_tool, "list_tools": _list_tools, "execute_tool": _execute_tool}


async def toolscore_socket(request: web.Request) -> web.WebSocketResponse:
    """GET /websocket (WebSocket)."""
    app = request.app
    ws = web.WebSocketResponse(compress=False, max_msg_size=app[SETTINGS].max_frame_bytes, heartbeat=30.0)
    await ws.prepare(request)
    app[OPEN_SOCKETS].add(ws)
    app[METRICS].ws_opened(ROUTE)
    relay = app[RELAY]
    conn = Connection(request, ws, relay.open_session(ws, request.remote or "?"))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                conn.dispatch(msg.data)
            elif msg.type == WSMsgType.BINARY:
                conn.error("binary frames are not supported; send JSON text")
    finally:
        app[OPEN_SOCKETS].discard(ws)
        app[METRICS].ws_closed(ROUTE)
        relay.detach(conn.session)  # stop routing to it before anything else can interleave
        for task in list(conn.tasks):  # the client is gone: stop its calls (cancelled down to the tool)
            task.cancel()
        # Deregistration runs in a task the relay owns: with handler_cancellation this handler may be
        # cancelled again when the socket closes, and that must not leave the tools registered.
        cleanup = relay.close_later(conn.session)
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        await conn.out.stop()
        await asyncio.shield(cleanup)
    return ws


def mount(app: web.Application, edge: EdgeConfig) -> None:
    """Serve `/websocket` on `app` with `edge`'s bounds (frame size, outbox, requests in flight).

    Needs the hub link, the relay, auth, metrics and the open sockets mounted on `app`.
    """
    app[SETTINGS] = edge
    app[OUTBOX_STATS] = OutboxStats()
    app.router.add_get(ROUTE, toolscore_socket)

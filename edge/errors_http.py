"""The mesh's errors over HTTP: one JSON shape and one status for each error, on every route.

Route handlers raise MeshError (services/common/errors.py) and never build an error answer
themselves; the edge's middleware (edge.app), or `middleware` on an app that mounts a route
module alone, answers it here. The status is the error class's `http_status` (the table in
services/common/errors.py: 400 INVALID_ARGUMENT ... 504 DEADLINE_EXCEEDED, 429 for the
per-client bounds). A tool that fails never gets here: the router answered it as a result
(services/router/failures.py), which the routes send as a 200. The MCP transports answer in
JSON-RPC instead (edge/mcp/results.py), the ToolScore WebSocket in its messages (edge/errors_ws.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.common.errors import MeshError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(err: MeshError) -> dict[str, object]:
    """The one JSON error shape (it also carries the original system's `status`/`success`/`error`)."""
    return {"status": "error", "success": False, "error": err.message, **err.to_json()}


def error_response(err: MeshError) -> web.Response:
    """A MeshError as its HTTP status and the one JSON error shape."""
    return web.json_response(error_body(err), status=err.http_status)


def _http_exception_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such route, method not allowed, body too large) in the same shape."""
    reason = exc.reason.upper().replace(" ", "_") or "HTTP_ERROR"
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 404:
        message = "no such route"
    body = {
        "status": "error",
        "success": False,
        "error": message,
        "code": reason,
        "reason": reason,
        "message": message,
    }
    resp = web.json_response(body, status=exc.status)
    if "Allow" in exc.headers:
        resp.headers["Allow"] = exc.headers["Allow"]
    return resp


def response_for(exc: Exception, request: web.Request) -> web.Response:
    """The HTTP answer to whatever a handler raised: a MeshError as itself, aiohttp's refusals in
    the same shape, anything else as a logged 500 EDGE_INTERNAL that says nothing of the cause."""
    if isinstance(exc, MeshError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        return _http_exception_response(exc)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(MeshError("internal error in the edge", reason="EDGE_INTERNAL"))


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`response_for` as a middleware, for an app that mounts a route module on its own."""
    try:
        return await handler(request)
    except Exception as exc:
        return response_for(exc, request)


__all__ = ["error_body", "error_response", "middleware", "response_for"]

"""The mesh's errors over HTTP: one JSON shape and one status for each error, on every route.

Route handlers raise MeshError (services/common/errors.py) and never build an error answer
themselves; the edge's middleware (edge.app), or `middleware` on an app that mounts a route
module alone, answers it here. The status comes from the tables below: by the error's
canonical code, and by reason for the few answered otherwise (429 for the per-client bounds).
A tool that fails never gets here: the router answered it as a result
(services/router/failures.py), which the routes send as a 200. The MCP transports answer in
JSON-RPC instead (edge/mcp/results.py), the ToolScore WebSocket in its messages (edge/errors_ws.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from aiohttp import web

from services.common.errors import MeshError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_C = grpc.StatusCode
# The HTTP status of each canonical code of the error tree; any other code (INTERNAL, ...) is 500.
STATUS_BY_CODE: Mapping[grpc.StatusCode, int] = {
    _C.INVALID_ARGUMENT: 400,
    _C.UNAUTHENTICATED: 401,
    _C.PERMISSION_DENIED: 403,
    _C.NOT_FOUND: 404,
    _C.ALREADY_EXISTS: 409,
    _C.FAILED_PRECONDITION: 409,
    _C.OUT_OF_RANGE: 410,
    _C.RESOURCE_EXHAUSTED: 413,
    _C.UNAVAILABLE: 503,
    _C.DEADLINE_EXCEEDED: 504,
}
# Reasons answered with another status than their code's: a client past its HTTP bounds (edge.middleware).
STATUS_BY_REASON: Mapping[str, int] = {"TOO_MANY_IN_FLIGHT": 429, "TOO_MANY_UNREAD_BYTES": 429}


def status_of(err: MeshError) -> int:
    """The HTTP status a MeshError is answered with."""
    return STATUS_BY_REASON.get(err.reason) or STATUS_BY_CODE.get(err.code, 500)


def error_body(err: MeshError) -> dict[str, object]:
    """The one JSON error shape (it also carries the original system's `status`/`success`/`error`)."""
    return {"status": "error", "success": False, "error": err.message, **err.to_json()}


def error_response(err: MeshError) -> web.Response:
    """A MeshError as its HTTP status and the one JSON error shape."""
    return web.json_response(error_body(err), status=status_of(err))


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


__all__ = [
    "STATUS_BY_CODE",
    "STATUS_BY_REASON",
    "error_body",
    "error_response",
    "middleware",
    "response_for",
    "status_of",
]

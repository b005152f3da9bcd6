"""The mesh's errors as ToolScore WebSocket messages: one `{type: "error"}` shape for every request.

A request's handler (edge.legacy.toolscore_ws) raises MeshError and never builds an error message itself;
the connection answers it here, with the request's `request_id` and `request_type`, the error's
gRPC code name and reason (docs/toolscore-websocket.md). A tool that fails never gets here: the
router answered it as a result (services/router/failures.py), sent as an `execute_tool_response`
with `success: false`.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common.errors import MeshError

log = logging.getLogger(__name__)


def error_message(err: MeshError, request_id: Any, request_type: str | None) -> dict[str, Any]:
    """A protocol fault of one request as its error message."""
    return {
        "type": "error",
        "request_id": request_id,
        "request_type": request_type,
        "message": err.message,
        "code": err.code.name,
        "reason": err.reason,
        **({"metadata": err.metadata} if err.metadata else {}),
    }


def message_for(exc: Exception, request_id: Any, request_type: str) -> dict[str, Any]:
    """The answer to whatever a request's handler raised: a MeshError as itself, anything else as a
    logged INTERNAL / EDGE_INTERNAL that says nothing of the cause."""
    if isinstance(exc, MeshError):
        return error_message(exc, request_id, request_type)
    log.error("%s failed on /websocket", request_type, exc_info=exc)
    return error_message(MeshError("internal error", reason="EDGE_INTERNAL"), request_id, request_type)


__all__ = ["error_message", "message_for"]

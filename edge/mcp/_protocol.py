"""JSON-RPC 2.0 framing and the MCP constants both protocol eras share. Pure: no I/O.

Values are the ones the official `mcp` SDK (2.3) uses on the wire; they are
spelled out here so the hot path never touches pydantic models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge import json_body
from services.common import jsonvalue

HANDSHAKE_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
# What a Streamable HTTP server assumes when a request carries no MCP-Protocol-Version header.
DEFAULT_HTTP_VERSION = "2025-03-26"

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"  # 2026-07-28: a request's opt-in to log messages

# HTTP headers (lower case, as aiohttp's CIMultiDict matches them case-insensitively anyway).
H_SESSION = "Mcp-Session-Id"
H_VERSION = "MCP-Protocol-Version"
H_METHOD = "Mcp-Method"
H_NAME = "Mcp-Name"
H_LAST_EVENT = "Last-Event-ID"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
REQUEST_CANCELLED = -32800
# A per-client bound was reached (requests in flight, sessions); `data` is the mesh error
# (RESOURCE_EXHAUSTED with its reason). A server-defined code (JSON-RPC reserves -32000..-32099).
LIMIT_REACHED = -32029
# The call needs a right its caller did not prove (an admin-only action without the admin token);
# `data` is the mesh error (UNAUTHENTICATED, reason ADMIN_TOKEN_REQUIRED). Implementation-defined
# (-32000..-32019). It travels with HTTP 200, never 401, which the MCP authorization spec reserves
# for its OAuth flow (the edge serves none). Not -32001: the MCP SDKs use it client-side for a
# request that timed out, and a client would read the refusal as a timeout.
UNAUTHENTICATED = -32003

# The HTTP status a JSON-RPC error travels with on Streamable HTTP (as the SDK's server maps them).
HTTP_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
    LIMIT_REACHED: 429,
}

RequestId = str | int

REQUEST, NOTIFICATION, RESPONSE = 1, 2, 3


class ProtocolError(Exception):
    """A JSON-RPC error to send back; `http_status` overrides the table for transport faults."""

    def __init__(self, code: int, message: str, data: Any = None, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data
        self.http_status = http_status if http_status is not None else HTTP_STATUS.get(code, 200)

    def response(self, request_id: RequestId | None) -> dict[str, Any]:
        return error_response(request_id, self.code, self.message, self.data)


@dataclass(slots=True)
class Message:
    """One decoded JSON-RPC message."""

    kind: int
    method: str
    id: RequestId | None
    params: dict[str, Any] | None  # a response's: the whole message (its result or error)
    # `params._meta.progressToken`, read once here for the transport and the dispatcher.
    progress: RequestId | None = None
    # `params._meta["io.modelcontextprotocol/logLevel"]` is there (2026-07-28: the request asks for
    # the log messages of what it calls, so its answer may stream); read with the progress token.
    logs: bool = False


def decode(data: bytes | str) -> Message:
    """Parse and classify one JSON-RPC message; raise ProtocolError (-32700 / -32600) when it is not one."""
    try:
        obj = json_body.loads(data)
    except jsonvalue.JsonTooDeep as exc:
        raise ProtocolError(PARSE_ERROR, f"Parse error: the body is {exc}") from None
    except ValueError:
        raise ProtocolError(PARSE_ERROR, "Parse error: the body is not valid JSON") from None
    return classify(obj)


def classify(obj: Any) -> Message:
    if isinstance(obj, list):
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC batches are not supported: send one message at a time")
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise ProtocolError(
            INVALID_REQUEST, 'Invalid request: expected a JSON-RPC 2.0 object ("jsonrpc": "2.0")'
        )
    has_id = "id" in obj
    rid = obj.get("id")
    if has_id and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: id must be a string or an integer")
    method = obj.get("method")
    if method is None:
        if has_id and ("result" in obj or "error" in obj):
            return Message(RESPONSE, "", rid, obj)
        raise ProtocolError(INVALID_REQUEST, "Invalid request: method is required")
    if not isinstance(method, str) or not method:
        raise ProtocolError(INVALID_REQUEST, "Invalid request: method must be a non-empty string")
    params = obj.get("params")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: params must be an object")
    meta = params.get("_meta") if params else None
    if not isinstance(meta, dict):
        return Message(REQUEST if has_id else NOTIFICATION, method, rid, params)
    token = meta.get("progressToken")
    if isinstance(token, bool) or not isinstance(token, str | int):
        token = None
    return Message(REQUEST if has_id else NOTIFICATION, method, rid, params, token, LOG_LEVEL_KEY in meta)


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: RequestId | None, result: dict[str, Any]) -> dict[str, Any]:
    # None never reaches here in practice (parse gives every request an id); typed as Message.id is.
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(msg: dict[str, Any]) -> str:
    """Serialise once, compactly."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def envelope_version(params: dict[str, Any] | None) -> Any:
    """The 2026-07-28 per-request protocol version in `params._meta`, or None (handshake-era message)."""
    meta = params.get("_meta") if params else None
    return meta.get(PROTOCOL_VERSION_KEY) if isinstance(meta, dict) else None

"""Mesh call outcomes as MCP `tools/call` results or JSON-RPC errors: the MCP failure policy. Pure.

A tool-side failure is a *result* with `isError`: a tool that fails, times out
or cannot be reached (the Router already answers those as is_error responses:
services.router.failures), arguments its input schema refuses (the Router
answers those as INVALID_INPUT results too), and arguments past the mesh's
bounds (too large, too deep, a call too large for one message, a schema too
complex to check): MCP 2025-11-25, SEP-1303, the model reads why and corrects
the call, where a JSON-RPC error is shown to it as nothing useful. A protocol
fault is a JSON-RPC error with the mesh error in `data`: a call the mesh cannot
run as sent (unknown or disabled tool, unknown action: -32602), an action its
caller has no rights for (the admin token missing: -32003), a mesh that cannot
run the call (the hub unreachable: -32603).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.errors import (
    FailedPrecondition,
    InvalidRequest,
    MeshError,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.jsonvalue import struct_to_dict, value_to_py

from ._protocol import INTERNAL_ERROR, INVALID_PARAMS, UNAUTHENTICATED, ProtocolError

# Faults of the call itself (the client sent something we cannot run; a disabled tool too): -32602.
_INVALID_CALL = (InvalidRequest, NotFound, FailedPrecondition, ResourceExhausted, OutOfRange)
_OCTETS = "application/octet-stream"
# Arguments past the mesh's bounds, or checked against a schema too complex to check: the model can
# send smaller or simpler ones, so they are results (arguments the schema refuses are results already).
_ARGUMENT_REASONS = frozenset(
    {"ARGUMENTS_TOO_DEEP", "ARGUMENTS_TOO_LARGE", "CALL_TOO_LARGE", "SCHEMA_TOO_COMPLEX"}
)


def call_result(resp: ex.ExecuteResponse, any_value: bool = False) -> dict[str, Any]:
    """The `CallToolResult` for a tool's response: content blocks, structuredContent, isError and
    the result's `_meta`. A structured result that is not an object (`structured_is_value`) is
    structuredContent as itself when `any_value` (the 2026-07-28 era allows it), else as the
    object `{"result": value}` that carries it."""
    structured: Any = struct_to_dict(resp.structured) if resp.HasField("structured") else None
    if any_value and resp.structured_is_value and structured is not None:
        structured = structured.get("result")
    content: list[dict[str, Any]] = []
    values: list[tuple[int, Any]] = []  # JSON blocks, with where they stood
    for block in resp.content:
        kind = block.WhichOneof("block")
        if kind == "text":
            item: dict[str, Any] = {"type": "text", "text": block.text.text}
        elif kind == "image":
            data = base64.b64encode(block.image.data).decode("ascii")
            item = {"type": "image", "data": data, "mimeType": block.image.mime_type or _OCTETS}
        elif kind == "json":
            values.append((len(content), value_to_py(block.json.value)))
            continue
        elif kind == "audio":
            data = base64.b64encode(block.audio.data).decode("ascii")
            item = {"type": "audio", "data": data, "mimeType": block.audio.mime_type or _OCTETS}
        elif kind == "resource":
            item = {"type": "resource", "resource": _resource(block.resource)}
        elif kind == "resource_link":
            item = _link(block.resource_link)
        else:
            continue
        if block.HasField("annotations"):
            item["annotations"] = _annotations(block.annotations)
        if block.HasField("meta"):
            item["_meta"] = struct_to_dict(block.meta)
        content.append(item)
    if values:
        texts = {c["text"] for c in content if c["type"] == "text"}
        for at, value in reversed(values):
            if structured is None and isinstance(value, dict):
                structured = value
            text = json.dumps(value, ensure_ascii=False, default=str)
            if text not in texts:  # the toolkit often sends the same JSON as text too
                texts.add(text)
                content.insert(at, {"type": "text", "text": text})
    if not content:
        if resp.is_error:
            content.append({"type": "text", "text": resp.error.message or "the tool reported an error"})
        elif structured is not None:
            content.append({"type": "text", "text": json.dumps(structured, ensure_ascii=False, default=str)})
    result: dict[str, Any] = {"content": content}
    if structured is not None:
        result["structuredContent"] = structured
    if resp.is_error:
        result["isError"] = True
    if resp.HasField("meta"):
        result["_meta"] = struct_to_dict(resp.meta)
    return result


def _resource(res: tool_pb2.ResourceContent) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": res.uri}
    if res.HasField("mime_type"):
        out["mimeType"] = res.mime_type
    if res.WhichOneof("contents") == "blob":
        out["blob"] = base64.b64encode(res.blob).decode("ascii")
    else:
        out["text"] = res.text
    if res.HasField("meta"):
        out["_meta"] = struct_to_dict(res.meta)
    return out


def _link(link: tool_pb2.ResourceLinkContent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "resource_link", "uri": link.uri, "name": link.name}
    if link.HasField("title"):
        out["title"] = link.title
    if link.HasField("description"):
        out["description"] = link.description
    if link.HasField("mime_type"):
        out["mimeType"] = link.mime_type
    if link.HasField("size"):
        out["size"] = link.size
    if link.icons:
        out["icons"] = [struct_to_dict(icon) for icon in link.icons]
    return out


def _annotations(notes: tool_pb2.ContentAnnotations) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if notes.audience:
        out["audience"] = list(notes.audience)
    if notes.HasField("priority"):
        out["priority"] = notes.priority
    if notes.HasField("last_modified"):
        out["lastModified"] = notes.last_modified
    return out


def failure_result(message: str) -> dict[str, Any]:
    """An isError result whose one text block is `message`."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def is_result(exc: MeshError) -> bool:
    """True when `tools/call` answers this mesh error as an isError result (`error_result`): the
    arguments' faults; every other mesh error is a JSON-RPC error (`rpc_error`)."""
    return exc.reason in _ARGUMENT_REASONS


def error_result(exc: MeshError) -> dict[str, Any]:
    """An isError result saying what was wrong with the call."""
    return failure_result(exc.message)


def rpc_error(exc: MeshError) -> ProtocolError:
    """The JSON-RPC error for a mesh error that is not a result, its ErrorInfo JSON in `data`:
    -32602 for a call the mesh cannot run as sent (unknown or disabled tool, unknown action),
    -32003 for an action the caller has no rights for, -32603 for the rest."""
    if isinstance(exc, _INVALID_CALL):
        return ProtocolError(INVALID_PARAMS, exc.message, exc.to_json())
    if isinstance(exc, Unauthenticated):
        return ProtocolError(UNAUTHENTICATED, exc.message, exc.to_json())
    return ProtocolError(INTERNAL_ERROR, f"Internal error: {exc.message}", exc.to_json())

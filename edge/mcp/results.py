"""Mesh call outcomes as MCP `tools/call` results or JSON-RPC errors. Pure.

A tool that fails, times out or cannot be reached is a *result* with
`isError` (the Router already answers those as is_error responses:
services.router.failures), and so are arguments the tool's
input does not accept (MCP 2025-11-25, SEP-1303: the model reads why and
corrects itself, where a JSON-RPC error is shown to it as nothing useful); a
call the protocol rejects (unknown tool, malformed params) is a JSON-RPC error, and so is a
mesh that cannot run the call (the hub unreachable: -32603 with the reason in `data`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from toolscore.v1 import executor_pb2 as ex

from services.common.errors import (
    FailedPrecondition,
    InvalidArguments,
    InvalidRequest,
    MeshError,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.jsonvalue import struct_to_dict, value_to_py

from ._protocol import INTERNAL_ERROR, INVALID_PARAMS, ProtocolError

# Faults of the call itself (the client sent something we cannot run): -32602.
_INVALID_CALL = (InvalidRequest, NotFound, FailedPrecondition, ResourceExhausted, OutOfRange)
_OCTETS = "application/octet-stream"
# Arguments this tool does not accept, a tool that is switched off or whose schema cannot be checked:
# the model can correct the call or choose another tool, so they are results too (InvalidArguments:
# the schema's violations).
_INPUT_REASONS = frozenset(
    {"ARGUMENTS_TOO_DEEP", "ARGUMENTS_TOO_LARGE", "CALL_TOO_LARGE", "SCHEMA_TOO_COMPLEX", "TOOL_DISABLED"}
)


def call_result(resp: ex.ExecuteResponse) -> dict[str, Any]:
    """The `CallToolResult` for a tool's response: content blocks, structuredContent, isError."""
    structured = struct_to_dict(resp.structured) if resp.HasField("structured") else None
    content: list[dict[str, Any]] = []
    values: list[tuple[int, Any]] = []  # JSON blocks, with where they stood
    for block in resp.content:
        kind = block.WhichOneof("block")
        if kind == "text":
            content.append({"type": "text", "text": block.text.text})
        elif kind == "image":
            data = base64.b64encode(block.image.data).decode("ascii")
            content.append({"type": "image", "data": data, "mimeType": block.image.mime_type or _OCTETS})
        elif kind == "json":
            values.append((len(content), value_to_py(block.json.value)))
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
    return result


def failure_result(message: str) -> dict[str, Any]:
    """An isError result whose one text block is `message`."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def is_result(exc: MeshError) -> bool:
    """True when `tools/call` answers this mesh error as an isError result (`error_result`): input
    errors and actions the caller has no rights for; everything else is a JSON-RPC error
    (`rpc_error`). Tool failures never get here: they are results already."""
    return isinstance(exc, InvalidArguments | Unauthenticated) or exc.reason in _INPUT_REASONS


def error_result(exc: MeshError) -> dict[str, Any]:
    """An isError result saying what was wrong with the call, every schema violation included."""
    text = exc.message
    if isinstance(exc, InvalidArguments) and len(exc.violations) > 1:
        text += "\n" + "\n".join(f"- {field}: {why}" for field, why in exc.violations)
    return failure_result(text)


def rpc_error(exc: MeshError) -> ProtocolError:
    """The JSON-RPC error for a mesh error that is not a result, its ErrorInfo JSON in `data`:
    -32602 for a call the mesh cannot run as sent (unknown tool or action), -32603 for the rest."""
    if isinstance(exc, _INVALID_CALL):
        return ProtocolError(INVALID_PARAMS, exc.message, exc.to_json())
    return ProtocolError(INTERNAL_ERROR, f"Internal error: {exc.message}", exc.to_json())

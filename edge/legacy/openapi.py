"""The original system's routes in the OpenAPI document (edge.openapi): their paths and schemas."""

from __future__ import annotations

from typing import Any

from edge.openapi import OBJ, TOOL_ID, Fragment, json_answer, op, ref


def _fragment() -> Fragment:
    ok = json_answer(
        {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "tool_id": {"type": "string"},
                "message": {"type": "string"},
                "revision": {"type": "integer"},
            },
        }
    )
    nullable_str = {"type": ["string", "null"]}
    schemas: dict[str, Any] = {
        "LegacyExecuteRequest": {
            "type": "object",
            "required": ["tool_id", "action"],
            "properties": {
                "tool_id": {"type": "string"},
                "action": {"type": "string"},
                "parameters": {"type": "object"},
            },
        },
        "LegacyExecuteResult": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "result": {},
                "output": {"type": "string"},
                "error": nullable_str,
                "error_type": nullable_str,
                "processing_time_ms": {"type": "number"},
            },
        },
    }
    paths: dict[str, Any] = {
        "/api/v1/tools/available": {
            "get": op("Original: tools with legacy capabilities", json_answer(OBJ), tag="original")
        },
        "/api/v1/tools/execute": {
            "post": op(
                "Original: execute an action; a failing or timed-out tool is a 200 with success false",
                json_answer(ref("LegacyExecuteResult")),
                body=ref("LegacyExecuteRequest"),
                errors=(400, 404, 409, 413, 503, 504),
                tag="original",
            )
        },
        "/health": {"get": op("Original health", json_answer(ref("Health")), errors=(503,), tag="original")},
        "/status": {"get": op("Original status", json_answer(OBJ), tag="original")},
        "/stats": {"get": op("Original stats", json_answer(OBJ), tag="original")},
        "/tools": {"get": op("Original tool list", json_answer(OBJ), tag="original")},
        "/tools/{tool_id}": {
            "parameters": [TOOL_ID],
            "get": op("Original tool detail", json_answer(OBJ), errors=(404,), tag="original"),
        },
        "/admin/tools/register": {
            "post": op(
                "Original: register {tool_spec}",
                ok,
                body={
                    "type": "object",
                    "required": ["tool_spec"],
                    "properties": {"tool_spec": ref("ToolSpec")},
                },
                admin=True,
                errors=(400, 409, 503),
                tag="original",
            )
        },
        "/admin/tools/{tool_id}": {
            "parameters": [TOOL_ID],
            "delete": op("Original: deregister", ok, admin=True, errors=(404, 503), tag="original"),
        },
        "/admin/mcp/register": {
            "post": op(
                "Original: register {server_spec} (gRPC endpoints; Streamable HTTP URLs refused for now)",
                ok,
                body={
                    "type": "object",
                    "required": ["server_spec"],
                    "properties": {"server_spec": ref("ToolSpec")},
                },
                admin=True,
                errors=(400, 409, 503),
                tag="original",
            )
        },
    }
    return Fragment(paths, schemas)


FRAGMENT = _fragment()

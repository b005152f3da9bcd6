"""The OpenAPI 3.1 document served at /openapi.json (a test checks it matches the routes)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    admin: bool = False,
    errors: tuple[int, ...] = (),
    tag: str = "tools",
    ok_status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {ok_status: ok}}
    for status in errors:
        op["responses"][str(status)] = _json(_ERROR, _STATUS_TEXT[status])
    if admin:
        op["security"] = [{"adminToken": []}]
        op["responses"]["401"] = _json(_ERROR, "The admin token is configured and missing or wrong")
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_STATUS_TEXT = {
    400: "Invalid request (bad JSON, missing fields, arguments violating the schema)",
    404: "Unknown tool",
    409: "Conflict (tool owned by another registrant, tool disabled)",
    413: "Request too large",
    503: "Hub unreachable (a tool server that is unreachable is a 200 result with NetworkError)",
    504: "The hub did not answer in time (a tool that times out is a 200 result with TimeoutError)",
}
_TOOL_ID = {"name": "tool_id", "in": "path", "required": True, "schema": {"type": "string"}}
_OBJ = {"type": "object"}


def _schemas() -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["code", "reason", "message"],
            "properties": {
                "code": {"type": "string", "description": "gRPC-style canonical code, e.g. NOT_FOUND"},
                "reason": {"type": "string", "description": "Machine-readable UPPER_SNAKE reason"},
                "message": {"type": "string"},
                "metadata": {"type": "object"},
                "violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                    },
                },
                "status": {"const": "error"},
                "success": {"const": False},
                "error": {"type": "string", "description": "Same as message (original clients read this)"},
            },
        },
        "Capability": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "input_schema": {"type": "object", "description": "JSON Schema of the arguments"},
                "output_schema": {"type": "object"},
                "parameters": {
                    "type": "object",
                    "description": "Original form {param: {type, description, required}}; "
                    "used when input_schema is absent",
                },
            },
        },
        "ToolSpec": {
            "type": "object",
            "required": ["tool_id", "endpoint", "capabilities"],
            "properties": {
                "tool_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "kind": {"enum": ["function", "grpc_server", "websocket_server", "mcp_server"]},
                "endpoint": {"type": "string", "description": "unix:///abs/path.sock or host:port"},
                "capabilities": {"type": "array", "items": _ref("Capability")},
                "tags": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "string"},
                "enabled": {"type": "boolean"},
                "owner": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "Tool": {
            "type": "object",
            "properties": {
                "tool_id": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "kind": {"type": "string"},
                "endpoint": {"type": "string"},
                "enabled": {"type": "boolean"},
                "health": {"enum": ["unknown", "healthy", "unhealthy"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "string"},
                "owner": {"type": "string"},
                "metadata": {"type": "object"},
                "capabilities": {"type": "array", "items": _ref("Capability")},
                "stats": {
                    "type": "object",
                    "properties": {
                        "usage_count": {"type": "integer"},
                        "success_count": {"type": "integer"},
                        "success_rate": {"type": "number"},
                        "mean_latency_ms": {"type": "number"},
                        "last_used": nullable_str,
                    },
                },
                "registered_at": nullable_str,
                "updated_at": nullable_str,
            },
        },
        "CallRequest": {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"type": "string"},
                "arguments": {"type": "object"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "request_id": {"type": "string"},
                "session_id": {
                    "type": "string",
                    "description": "A session id the tool minted (python_execute with new_session: true)",
                },
            },
        },
        "CallResult": {
            "type": "object",
            "properties": {
                "is_error": {"type": "boolean"},
                "content": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"type": {"enum": ["text", "json", "image"]}}},
                },
                "structured": {"type": ["object", "null"]},
                "error": {
                    "type": ["object", "null"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
                "duration_ms": {"type": "number"},
            },
        },
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
        "Stats": {
            "type": "object",
            "properties": {
                "total_tools": {"type": "integer"},
                "enabled_tools": {"type": "integer"},
                "healthy_tools": {"type": "integer"},
                "unhealthy_tools": {"type": "integer"},
                "tools_by_kind": {"type": "object"},
                "total_calls": {"type": "integer"},
                "success_rate": {"type": "number"},
                "revision": {"type": "integer"},
                "hub_connected": {"type": "boolean"},
                "websocket_connections": {"type": "object"},
                "event_subscribers": {"type": "integer"},
                "dialled_in_servers": {"type": "integer"},
                "uptime_s": {"type": "number"},
            },
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"enum": ["healthy", "unhealthy"]},
                "message": {"type": "string"},
                "hub_connected": {"type": "boolean"},
                "revision": {"type": "integer"},
            },
        },
    }


def _discovery_and_tasks() -> dict[str, Any]:
    """Routes of discovery (docs/discovery.md) and the task service (docs/runtime.md)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    post = lambda summary, admin=False: {  # noqa: E731
        "post": _op(summary, _json(_OBJ), body=_OBJ, admin=admin, errors=(400, 404, 503), tag="discovery")
    }
    return {
        "/mcp/search": post("Rank catalog servers for a free-text need, with scores and why they matched"),
        "/mcp/install": post("Install a catalog server by name (and optional pinned version)", admin=True),
        "/api/v1/tools/servers": {
            "get": _op("Installed and federated MCP servers", _json(_OBJ), tag="discovery")
        },
        "/api/v1/tools/servers/{name}": {
            "parameters": [name],
            "delete": _op(
                "Uninstall a server: stop it, deregister its tools, remove its files",
                _json(_OBJ),
                admin=True,
                errors=(404, 503),
                tag="discovery",
            ),
        },
        "/api/v1/tools/analyze-gap": post("Do the current tools suffice for a task? Missing capabilities"),
        "/api/v1/tools/request-capability": post("Original: analyse and optionally install", admin=True),
        "/api/v1/tools/search-and-install": post(
            "Original: search the catalog and install matches", admin=True
        ),
        "/api/v1/tasks": {
            "post": _op(
                "Queue a task for the reasoning runtime ({input, priority, context})",
                _json(_OBJ, "Queued"),
                body=_OBJ,
                errors=(400, 503),
                tag="tasks",
                ok_status="202",
            )
        },
        "/api/v1/tasks/{task_id}": {
            "parameters": [task_id],
            "get": _op("A task's status and result", _json(_OBJ), errors=(404, 503), tag="tasks"),
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every HTTP route of the edge."""
    legacy_ok = _json(
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
    health = {
        "get": _op(
            "Liveness and hub connectivity (503 while the hub is unreachable)",
            _json(_ref("Health")),
            errors=(503,),
            tag="ops",
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ToolScore Mesh edge",
            "version": "1",
            "description": "REST API of the edge. WebSocket endpoints (/api/v1/events/tools, /websocket) "
            "are described in docs/events-websocket.md and docs/toolscore-websocket.md.",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "auth.admin_token; needed only when one is configured",
                }
            },
        },
        "paths": {
            **_discovery_and_tasks(),
            "/api/v1/health": health,
            "/api/v1/stats": {"get": _op("Registry and edge figures", _json(_ref("Stats")), tag="ops")},
            "/api/v1/tools": {
                "get": {
                    **_op(
                        "List tools (filters: kind, tag)",
                        _json(
                            {
                                "type": "object",
                                "properties": {
                                    "tools": {"type": "array", "items": _ref("Tool")},
                                    "total_count": {"type": "integer"},
                                    "revision": {"type": "integer"},
                                },
                            }
                        ),
                    ),
                    "parameters": [
                        {"name": "kind", "in": "query", "schema": {"type": "string"}},
                        {"name": "tag", "in": "query", "schema": {"type": "string"}},
                    ],
                },
                "post": _op(
                    "Register or update a tool (the hub decides)",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "tool": _ref("Tool"),
                                "created": {"type": "boolean"},
                                "updated": {"type": "boolean"},
                                "revision": {"type": "integer"},
                            },
                        },
                        "Updated or unchanged (201 when created)",
                    ),
                    body=_ref("ToolSpec"),
                    admin=True,
                    errors=(400, 409, 503),
                ),
            },
            "/api/v1/tools/{tool_id}": {
                "parameters": [_TOOL_ID],
                "get": _op("One tool", _json(_ref("Tool")), errors=(404,)),
                "delete": _op(
                    "Deregister a tool",
                    _json(
                        {
                            "type": "object",
                            "properties": {"tool": _ref("Tool"), "revision": {"type": "integer"}},
                        }
                    ),
                    admin=True,
                    errors=(404, 503),
                ),
            },
            "/api/v1/tools/{tool_id}/call": {
                "parameters": [_TOOL_ID],
                "post": _op(
                    "Call one action; a failing, timed-out or unreachable tool is a 200 with is_error",
                    _json(_ref("CallResult")),
                    body=_ref("CallRequest"),
                    errors=(400, 404, 409, 413, 503, 504),
                ),
            },
            "/api/v1/tools/available": {
                "get": _op("Original: tools with legacy capabilities", _json(_OBJ), tag="original")
            },
            "/api/v1/tools/execute": {
                "post": _op(
                    "Original: execute an action; a failing or timed-out tool is a 200 with success false",
                    _json(_ref("LegacyExecuteResult")),
                    body=_ref("LegacyExecuteRequest"),
                    errors=(400, 404, 409, 413, 503, 504),
                    tag="original",
                )
            },
            "/health": {"get": _op("Original health", _json(_ref("Health")), errors=(503,), tag="original")},
            "/status": {"get": _op("Original status", _json(_OBJ), tag="original")},
            "/stats": {"get": _op("Original stats", _json(_OBJ), tag="original")},
            "/tools": {"get": _op("Original tool list", _json(_OBJ), tag="original")},
            "/tools/{tool_id}": {
                "parameters": [_TOOL_ID],
                "get": _op("Original tool detail", _json(_OBJ), errors=(404,), tag="original"),
            },
            "/admin/tools/register": {
                "post": _op(
                    "Original: register {tool_spec}",
                    legacy_ok,
                    body={
                        "type": "object",
                        "required": ["tool_spec"],
                        "properties": {"tool_spec": _ref("ToolSpec")},
                    },
                    admin=True,
                    errors=(400, 409, 503),
                    tag="original",
                )
            },
            "/admin/tools/{tool_id}": {
                "parameters": [_TOOL_ID],
                "delete": _op(
                    "Original: deregister", legacy_ok, admin=True, errors=(404, 503), tag="original"
                ),
            },
            "/admin/mcp/register": {
                "post": _op(
                    "Original: register {server_spec} (gRPC endpoints; Streamable HTTP URLs refused for now)",
                    legacy_ok,
                    body={
                        "type": "object",
                        "required": ["server_spec"],
                        "properties": {"server_spec": _ref("ToolSpec")},
                    },
                    admin=True,
                    errors=(400, 409, 503),
                    tag="original",
                )
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "tags": ["ops"],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {"get": _op("This document", _json(_OBJ), tag="ops")},
        },
    }

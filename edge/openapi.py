"""The OpenAPI 3.1 document served at /openapi.json (a test checks it matches the routes).

The clean API, discovery, tasks and operations are described here; the original system's routes
bring their own part (edge.legacy.openapi's `FRAGMENT`), which `mount` is given: this module
knows nothing of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Fragment:
    """Paths and schemas another module describes, added to the document."""

    paths: dict[str, Any] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)


ERROR = {"$ref": "#/components/schemas/Error"}


def ref(name: str) -> dict[str, str]:
    """A reference to one of the document's schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A JSON response of `schema`."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    admin: bool = False,
    errors: tuple[int, ...] = (),
    tag: str = "tools",
    ok_status: str = "200",
) -> dict[str, Any]:
    """One operation: its summary, answers (the errors named by status), body and admin need."""
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {ok_status: ok}}
    for status in errors:
        op["responses"][str(status)] = json_answer(ERROR, _STATUS_TEXT[status])
    if admin:
        op["security"] = [{"adminToken": []}]
        op["responses"]["401"] = json_answer(ERROR, "The admin token is configured and missing or wrong")
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
TOOL_ID = {"name": "tool_id", "in": "path", "required": True, "schema": {"type": "string"}}
OBJ = {"type": "object"}


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
                "capabilities": {"type": "array", "items": ref("Capability")},
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
                "capabilities": {"type": "array", "items": ref("Capability")},
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
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"enum": ["text", "json", "image", "audio", "resource", "resource_link"]},
                            "annotations": {"type": "object"},
                            "meta": {"type": "object"},
                        },
                    },
                },
                "structured": {"type": ["object", "null"]},
                "error": {
                    "type": ["object", "null"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
                "duration_ms": {"type": "number"},
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

    def post(summary: str, admin: bool = False) -> dict[str, Any]:
        return {
            "post": op(
                summary, json_answer(OBJ), body=OBJ, admin=admin, errors=(400, 404, 503), tag="discovery"
            )
        }

    return {
        "/mcp/search": post("Rank catalog servers for a free-text need, with scores and why they matched"),
        "/mcp/install": post("Install a catalog server by name (and optional pinned version)", admin=True),
        "/api/v1/tools/servers": {
            "get": op("Installed and federated MCP servers", json_answer(OBJ), tag="discovery")
        },
        "/api/v1/tools/servers/{name}": {
            "parameters": [name],
            "delete": op(
                "Uninstall a server: stop it, deregister its tools, remove its files",
                json_answer(OBJ),
                admin=True,
                errors=(404, 503),
                tag="discovery",
            ),
        },
        "/api/v1/tools/servers/{name}/log": {
            "parameters": [name],
            "get": op(
                "The end of an installed server's stderr log (max_bytes, default 16384)",
                json_answer(OBJ),
                admin=True,
                errors=(400, 404, 503),
                tag="discovery",
            ),
        },
        "/api/v1/tools/analyze-gap": post("Do the current tools suffice for a task? Missing capabilities"),
        "/api/v1/tools/request-capability": post("Original: analyse and optionally install", admin=True),
        "/api/v1/tools/search-and-install": post(
            "Original: search the catalog and install matches", admin=True
        ),
        "/api/v1/tasks": {
            "post": op(
                "Queue a task for the reasoning runtime ({input, priority, context})",
                json_answer(OBJ, "Queued"),
                body=OBJ,
                errors=(400, 503),
                tag="tasks",
                ok_status="202",
            )
        },
        "/api/v1/tasks/{task_id}": {
            "parameters": [task_id],
            "get": op("A task's status and result", json_answer(OBJ), errors=(404, 503), tag="tasks"),
        },
        "/api/v1/tasks/{task_id}/steps": {
            "parameters": [task_id],
            "get": op(
                "What a task did so far: its progress notes, and its trajectory's steps once it ended "
                "(with Accept: text/event-stream, followed as server-sent events: note..., end)",
                json_answer(OBJ),
                errors=(404, 503),
                tag="tasks",
            ),
        },
    }


def document(*fragments: Fragment) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every HTTP route of the edge: its own, and the fragments'."""
    health = {
        "get": op(
            "Liveness and hub connectivity (503 while the hub is unreachable)",
            json_answer(ref("Health")),
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
            "schemas": {**_schemas(), **{k: v for f in fragments for k, v in f.schemas.items()}},
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
            "/api/v1/stats": {"get": op("Registry and edge figures", json_answer(ref("Stats")), tag="ops")},
            "/api/v1/tools": {
                "get": {
                    **op(
                        "List tools (filters: kind, tag; pages: page_size, page_token)",
                        json_answer(
                            {
                                "type": "object",
                                "properties": {
                                    "tools": {"type": "array", "items": ref("Tool")},
                                    "total_count": {"type": "integer"},
                                    "revision": {"type": "integer"},
                                    "next_page_token": {"type": "string"},
                                },
                            }
                        ),
                    ),
                    "parameters": [
                        {"name": "kind", "in": "query", "schema": {"type": "string"}},
                        {"name": "tag", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "page_size",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {"name": "page_token", "in": "query", "schema": {"type": "string"}},
                    ],
                },
                "post": op(
                    "Register or update a tool (the hub decides)",
                    json_answer(
                        {
                            "type": "object",
                            "properties": {
                                "tool": ref("Tool"),
                                "created": {"type": "boolean"},
                                "updated": {"type": "boolean"},
                                "revision": {"type": "integer"},
                            },
                        },
                        "Updated or unchanged (201 when created)",
                    ),
                    body=ref("ToolSpec"),
                    admin=True,
                    errors=(400, 409, 503),
                ),
            },
            "/api/v1/tools/{tool_id}": {
                "parameters": [TOOL_ID],
                "get": op("One tool", json_answer(ref("Tool")), errors=(404,)),
                "delete": op(
                    "Deregister a tool",
                    json_answer(
                        {
                            "type": "object",
                            "properties": {"tool": ref("Tool"), "revision": {"type": "integer"}},
                        }
                    ),
                    admin=True,
                    errors=(404, 503),
                ),
            },
            "/api/v1/tools/{tool_id}/call": {
                "parameters": [TOOL_ID],
                "post": op(
                    "Call one action; a failing, timed-out or unreachable tool is a 200 with is_error",
                    json_answer(ref("CallResult")),
                    body=ref("CallRequest"),
                    errors=(400, 404, 409, 413, 503, 504),
                ),
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
            "/openapi.json": {"get": op("This document", json_answer(OBJ), tag="ops")},
            **{path: item for f in fragments for path, item in f.paths.items()},
        },
    }


def mount(app: web.Application, *fragments: Fragment) -> None:
    """Serve the document, with `fragments`, at `/openapi.json`."""
    body = None

    async def openapi_document(request: web.Request) -> web.Response:
        nonlocal body
        if body is None:  # the same document every time: rendered once
            body = json.dumps(document(*fragments), ensure_ascii=False, separators=(",", ":"))
        return web.Response(text=body, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_document)

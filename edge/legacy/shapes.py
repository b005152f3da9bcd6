"""The original system's JSON shapes (docs/rest.md, "The original routes"), kept field for field.

Used by the original REST routes (edge.legacy.routes) and the ToolScore WebSocket
(edge.legacy.toolscore_ws); a call's result shape is edge.legacy.execute's. Pure: nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from toolscore.v1 import tool_pb2

from edge.rest.shapes import HEALTH_NAMES, original_tool_type
from services.common.jsonvalue import struct_to_dict

# The original `tool_type` of a tool ("function" or "mcp_server"), for its listings here and the
# ToolScore WebSocket's.
tool_type = original_tool_type


def parameters(cap: tool_pb2.Capability) -> dict[str, Any]:
    """An input schema as the original `{param: {type, description, required}}`."""
    schema = struct_to_dict(cap.input_schema)
    required = set(schema.get("required") or ())
    params = {}
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        params[name] = {
            "type": prop.get("type", "any"),
            "description": prop.get("description", ""),
            "required": name in required,
        }
    return params


def capability(cap: tool_pb2.Capability) -> dict[str, Any]:
    return {"name": cap.name, "description": cap.description, "parameters": parameters(cap)}


def summary(tool: tool_pb2.Tool) -> dict[str, Any]:
    """GET /tools item."""
    return {
        "tool_id": tool.tool_id,
        "name": tool.name,
        "description": tool.description,
        "tool_type": tool_type(tool),
        "enabled": tool.enabled,
        "capabilities_count": len(tool.capabilities),
        "capabilities": [capability(c) for c in tool.capabilities],
    }


def detail(tool: tool_pb2.Tool) -> dict[str, Any]:
    """GET /tools/{tool_id} `tool`."""
    return {
        "tool_id": tool.tool_id,
        "name": tool.name,
        "description": tool.description,
        "tool_type": tool_type(tool),
        "enabled": tool.enabled,
        "tags": list(tool.tags),
        "capabilities": [capability(c) for c in tool.capabilities],
        "endpoint": tool.endpoint,
        "health": HEALTH_NAMES.get(tool.health, "unknown"),
    }


def available_tool(tool: tool_pb2.Tool) -> dict[str, Any]:
    """GET /api/v1/tools/available item."""
    return {
        "tool_id": tool.tool_id,
        "name": tool.name,
        "description": tool.description,
        "tool_type": tool_type(tool),
        "capabilities": [capability(c) for c in tool.capabilities],
        "tags": list(tool.tags),
        "endpoint": tool.endpoint,
    }


def registered(resp: Any) -> dict[str, Any]:
    """The answer to a registration (REST and ToolScore WebSocket): what happened, and at which revision."""
    what = "registered" if resp.created else "updated" if resp.updated else "already registered, unchanged"
    return {
        "success": True,
        "tool_id": resp.tool.tool_id,
        "message": f"tool {resp.tool.tool_id} {what}",
        "revision": resp.revision,
    }

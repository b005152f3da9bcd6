"""The clean `/api/v1` JSON shapes: everything a Tool carries, call results, incoming definitions.

Pure translations between registry messages and JSON; nothing here does I/O. The original
system's shapes are edge.legacy.shapes; the events WebSocket's messages are edge.events_ws'.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from edge import json_body
from services.common.errors import InvalidRequest
from services.common.jsonvalue import dict_to_struct, struct_to_dict, value_to_py
from services.common.legacy import params_schema
from services.library.validation import check_schema_depth

KIND_NAMES = {
    tool_pb2.TOOL_KIND_UNSPECIFIED: "unspecified",
    tool_pb2.TOOL_KIND_FUNCTION: "function",
    tool_pb2.TOOL_KIND_GRPC_SERVER: "grpc_server",
    tool_pb2.TOOL_KIND_WEBSOCKET_SERVER: "websocket_server",
    tool_pb2.TOOL_KIND_MCP_SERVER: "mcp_server",
}
KINDS_BY_NAME: dict[str, int] = {v: k for k, v in KIND_NAMES.items() if k}
HEALTH_NAMES = {
    tool_pb2.HEALTH_STATUS_UNSPECIFIED: "unknown",
    tool_pb2.HEALTH_STATUS_HEALTHY: "healthy",
    tool_pb2.HEALTH_STATUS_UNHEALTHY: "unhealthy",
}
# The original system's ErrorType names, used in `error_type`.
ERROR_TYPE_NAMES = {
    tool_pb2.ERROR_TYPE_UNSPECIFIED: "UnknownError",
    tool_pb2.ERROR_TYPE_TOOL_ERROR: "ToolError",
    tool_pb2.ERROR_TYPE_INVALID_INPUT: "InvalidInput",
    tool_pb2.ERROR_TYPE_TIMEOUT: "TimeoutError",
    tool_pb2.ERROR_TYPE_CODE_EXECUTION: "CodeExecutionError",
    tool_pb2.ERROR_TYPE_SYSTEM: "SystemError",
    tool_pb2.ERROR_TYPE_NETWORK: "NetworkError",
    tool_pb2.ERROR_TYPE_UNKNOWN: "UnknownError",
}
ERROR_TYPES_BY_NAME = {v: k for k, v in ERROR_TYPE_NAMES.items() if k}


def now_iso() -> str:
    """Now, in ISO 8601 (UTC)."""
    return datetime.now(UTC).isoformat()


def iso_time(ts: timestamp_pb2.Timestamp) -> str | None:
    """A Timestamp in ISO 8601 (UTC), None when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC).isoformat()


def original_tool_type(tool: tool_pb2.Tool) -> str:
    """The original system's ToolType (the original shapes' and the events WebSocket's `type`):
    `function` for in-process tools; every served tool was an `mcp_server` originally."""
    return "function" if tool.kind == tool_pb2.TOOL_KIND_FUNCTION else "mcp_server"


# -- outgoing ----------------------------------------------------------------------


def capability_json(cap: tool_pb2.Capability) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": cap.name,
        "description": cap.description,
        "input_schema": struct_to_dict(cap.input_schema) or {"type": "object"},
    }
    if cap.HasField("output_schema"):
        out["output_schema"] = struct_to_dict(cap.output_schema)
    return out


def stats_json(s: tool_pb2.ToolStats) -> dict[str, Any]:
    """A tool's usage figures as JSON."""
    return {
        "usage_count": s.usage_count,
        "success_count": s.success_count,
        "success_rate": s.success_rate,
        "mean_latency_ms": s.mean_latency.ToNanoseconds() / 1e6,
        "last_used": iso_time(s.last_used),
    }


def tool_json(tool: tool_pb2.Tool) -> dict[str, Any]:
    """Everything a Tool carries, as JSON."""
    s = tool.stats
    return {
        "tool_id": tool.tool_id,
        "name": tool.name,
        "description": tool.description,
        "kind": KIND_NAMES.get(tool.kind, "unspecified"),
        "endpoint": tool.endpoint,
        "enabled": tool.enabled,
        "health": HEALTH_NAMES.get(tool.health, "unknown"),
        "tags": list(tool.tags),
        "version": tool.version,
        "owner": tool.owner,
        "metadata": dict(tool.metadata),
        "capabilities": [capability_json(c) for c in tool.capabilities],
        "stats": stats_json(s),
        "registered_at": iso_time(tool.registered_at),
        "updated_at": iso_time(tool.updated_at),
        # In a cluster (docs/cluster.md): the node that holds a node-local endpoint, and one replica
        # per node that serves the tool; "" and [] on a single hub.
        "node_id": tool.node_id,
        "replicas": [
            {"endpoint": r.endpoint, "node_id": r.node_id, "health": HEALTH_NAMES.get(r.health, "unknown")}
            for r in tool.replicas
        ],
    }


def response_json(resp: ex.ExecuteResponse) -> dict[str, Any]:
    """An ExecuteResponse as JSON: the MCP-like clean shape."""
    content = [item for block in resp.content if (item := block_json(block)) is not None]
    out: dict[str, Any] = {
        "is_error": resp.is_error,
        "content": content,
        "structured": struct_to_dict(resp.structured) if resp.HasField("structured") else None,
        "duration_ms": resp.duration.ToNanoseconds() / 1e6,
    }
    out["error"] = (
        {"type": ERROR_TYPE_NAMES.get(resp.error.type, "UnknownError"), "message": resp.error.message}
        if resp.is_error
        else None
    )
    return out


def block_json(block: tool_pb2.ContentBlock) -> dict[str, Any] | None:
    """One content block as JSON (`type` and its fields, `annotations` and `meta` when it has them);
    None for a kind this edge does not know."""
    kind = block.WhichOneof("block")
    if kind == "text":
        item: dict[str, Any] = {"type": "text", "text": block.text.text}
    elif kind == "json":
        item = {"type": "json", "value": value_to_py(block.json.value)}
    elif kind == "image" or kind == "audio":
        media = block.image if kind == "image" else block.audio
        item = {"type": kind, "mime_type": media.mime_type, "data": base64.b64encode(media.data).decode()}
    elif kind == "resource":
        item = {"type": "resource", "resource": _resource_json(block.resource)}
    elif kind == "resource_link":
        item = _link_json(block.resource_link)
    else:
        return None
    if block.HasField("annotations"):
        notes = block.annotations
        item["annotations"] = {
            **({"audience": list(notes.audience)} if notes.audience else {}),
            **({"priority": notes.priority} if notes.HasField("priority") else {}),
            **({"last_modified": notes.last_modified} if notes.HasField("last_modified") else {}),
        }
    if block.HasField("meta"):
        item["meta"] = struct_to_dict(block.meta)
    return item


def _resource_json(res: tool_pb2.ResourceContent) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": res.uri}
    if res.HasField("mime_type"):
        out["mime_type"] = res.mime_type
    if res.WhichOneof("contents") == "blob":
        out["blob"] = base64.b64encode(res.blob).decode()
    else:
        out["text"] = res.text
    if res.HasField("meta"):
        out["meta"] = struct_to_dict(res.meta)
    return out


def _link_json(link: tool_pb2.ResourceLinkContent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "resource_link", "uri": link.uri, "name": link.name}
    for name in ("title", "description", "mime_type", "size"):
        if link.HasField(name):
            out[name] = getattr(link, name)
    if link.icons:
        out["icons"] = [struct_to_dict(icon) for icon in link.icons]
    return out


# The edge's compact JSON (edge.json_body's), under the name the shapes' users know.
dumps = json_body.dumps


# -- incoming definitions (clean or original-style specs) ------------------------------


def _str(spec: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = spec.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest(
            f"{where}.{key} must be a string", reason="INVALID_FIELD", metadata={"field": key}
        )
    return value


def params_to_schema(params: Any, where: str) -> dict[str, Any]:
    """The original `{param: {type, description, required}}` as a JSON Schema object."""
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where} must be an object", reason="INVALID_FIELD")
    return params_schema(params)


def capability_from_json(raw: Any, where: str) -> tool_pb2.Capability:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be an object", reason="INVALID_FIELD")
    cap = tool_pb2.Capability(name=_str(raw, "name", where), description=_str(raw, "description", where))
    schema = raw.get("input_schema")
    if schema is None and raw.get("parameters") is not None:
        schema = params_to_schema(raw["parameters"], f"{where}.parameters")
    if schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.input_schema must be an object", reason="INVALID_SCHEMA")
        check_schema_depth(schema, f"{where}.input_schema")  # before protobuf meets it
        cap.input_schema.CopyFrom(dict_to_struct(schema))
    if isinstance(raw.get("output_schema"), dict):
        check_schema_depth(raw["output_schema"], f"{where}.output_schema")
        cap.output_schema.CopyFrom(dict_to_struct(raw["output_schema"]))
    return cap


def tool_from_json(
    spec: Any, *, where: str = "tool", kind: int | None = None, endpoint: str | None = None, owner: str = ""
) -> tool_pb2.Tool:
    """A Tool from a clean or original-style spec. The hub validates the rest."""
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{where} must be a JSON object", reason="INVALID_FIELD")
    caps = spec.get("capabilities") or []
    if not isinstance(caps, list):
        raise InvalidRequest(f"{where}.capabilities must be a list", reason="INVALID_FIELD")
    tags = spec.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRequest(f"{where}.tags must be a list of strings", reason="INVALID_FIELD")
    tool_id = _str(spec, "tool_id", where)
    tool = tool_pb2.Tool(
        tool_id=tool_id,
        name=_str(spec, "name", where) or tool_id,
        description=_str(spec, "description", where),
        version=_str(spec, "version", where),
        tags=tags,
        owner=owner or _str(spec, "owner", where),
        endpoint=endpoint if endpoint is not None else _str(spec, "endpoint", where),
        enabled=bool(spec.get("enabled", True)),
        capabilities=[capability_from_json(c, f"{where}.capabilities[{i}]") for i, c in enumerate(caps)],
    )
    if kind is None:
        kind = _kind_of(spec, tool.endpoint, where)
    tool.kind = kind
    metadata = spec.get("metadata") or {}
    if isinstance(metadata, dict):
        tool.metadata.update({str(k): v if isinstance(v, str) else dumps(v) for k, v in metadata.items()})
    if spec.get("connection_params") is not None:
        tool.metadata["connection_params"] = dumps(spec["connection_params"])
    return tool


def _kind_of(spec: dict[str, Any], endpoint: str, where: str) -> int:
    name = spec.get("kind")
    if isinstance(name, str) and name:
        kind = KINDS_BY_NAME.get(name.lower().removeprefix("tool_kind_"))
        if kind is None:
            raise InvalidRequest(
                f"{where}.kind must be one of {sorted(KINDS_BY_NAME)}", reason="INVALID_KIND"
            )
        return kind
    # protobuf's enum wrapper is Any to mypy (protobuf ships no type hints), hence the annotation.
    kind_by_endpoint: int = (
        tool_pb2.TOOL_KIND_FUNCTION if endpoint.startswith("inproc://") else tool_pb2.TOOL_KIND_GRPC_SERVER
    )
    return kind_by_endpoint

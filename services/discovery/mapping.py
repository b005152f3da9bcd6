"""MCP tools and results <-> the mesh's Tool and ExecuteResponse (pure)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

import mcp_types as types
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.jsonvalue import dict_to_struct, py_to_value
from services.library.validation import ACTION

OWNER = "toolscore-discovery"
# Tool metadata naming what else than tools the server offers (comma-separated: prompts, resources,
# completions), and the revision of its prompt and resource lists (docs/mcp.md, "Federated servers").
FEATURES_KEY = "mcp_features"
LISTS_REVISION_KEY = "mcp_lists_revision"
_FEATURES = ("prompts", "resources", "completions")


def action_name(mcp_name: str) -> str:
    """A capability name for an MCP tool name (MCP allows characters our action names do not)."""
    if ACTION.match(mcp_name):
        return mcp_name
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", mcp_name).lstrip(".-") or "tool")[:128]


def describe_features(t: tool_pb2.Tool, caps: types.ServerCapabilities | None, revision: int) -> None:
    """Name in `t`'s metadata the features the edge federates besides tools, when the server has any."""
    features = [f for f in _FEATURES if caps is not None and getattr(caps, f, None) is not None]
    if features:
        t.metadata[FEATURES_KEY] = ",".join(features)
        t.metadata[LISTS_REVISION_KEY] = str(revision)


def tool_definition(
    tool_id: str,
    name: str,
    description: str,
    version: str,
    tools: Sequence[types.Tool],
    tags: Sequence[str] = (),
) -> tuple[tool_pb2.Tool, dict[str, str]]:
    """One Tool for a server (a capability per MCP tool), and the action -> MCP tool name map."""
    t = tool_pb2.Tool(
        tool_id=tool_id,
        name=name,
        description=description,
        kind=tool_pb2.TOOL_KIND_MCP_SERVER,
        version=version,
        endpoint=f"mcp://{tool_id}",
        enabled=True,
        owner=OWNER,
        tags=["mcp", *tags],
    )
    t.metadata["mcp_server"] = name
    names: dict[str, str] = {}
    for mt in tools:
        action = action_name(mt.name)
        if action in names:
            continue
        names[action] = mt.name
        cap = t.capabilities.add(name=action, description=mt.description or mt.title or "")
        schema = dict(mt.input_schema or {})
        schema.setdefault("type", "object")
        cap.input_schema.CopyFrom(dict_to_struct(schema))
        if mt.output_schema:
            cap.output_schema.CopyFrom(dict_to_struct(dict(mt.output_schema)))
    return t, names


def to_response(result: types.CallToolResult) -> ex.ExecuteResponse:
    """Map a tools/call result: isError -> is_error, content blocks, structuredContent -> structured."""
    resp = ex.ExecuteResponse(is_error=bool(result.is_error))
    for block in result.content:
        _add_block(resp, block)
    sc = result.structured_content
    if isinstance(sc, dict):
        resp.structured.CopyFrom(dict_to_struct(sc))
    elif sc is not None:
        resp.structured.CopyFrom(dict_to_struct({"result": sc}))
    if resp.is_error:
        text = next(
            (b.text.text for b in resp.content if b.HasField("text")), "the MCP tool reported an error"
        )
        resp.error.type = tool_pb2.ERROR_TYPE_TOOL_ERROR
        resp.error.message = text[:2000]
    return resp


def _add_block(resp: ex.ExecuteResponse, block: Any) -> None:
    if isinstance(block, types.TextContent):
        resp.content.add().text.text = block.text
        return
    if isinstance(block, types.ImageContent):
        try:
            data = base64.b64decode(block.data, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data:
            img = resp.content.add().image
            img.data, img.mime_type = data, block.mime_type
            return
    dumped = block.model_dump(by_alias=True, mode="json", exclude_none=True)
    resp.content.add().json.value.CopyFrom(py_to_value(dumped))

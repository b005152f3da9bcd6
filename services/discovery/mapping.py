"""MCP tools and results <-> the mesh's Tool and ExecuteResponse (pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import mcp_types as types
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.jsonvalue import (
    MAX_DEPTH,
    JsonTooDeep,
    TooLarge,
    dict_to_struct,
    fill_struct,
    py_to_value,
    struct_bounds,
    text_result,
)
from services.library.validation import ACTION

OWNER = "toolscore-discovery"
# Tool metadata naming what else than tools the server offers (comma-separated: prompts, resources,
# completions), and the revision of its prompt and resource lists (docs/mcp.md, "Federated servers").
FEATURES_KEY = "mcp_features"
LISTS_REVISION_KEY = "mcp_lists_revision"
_FEATURES = ("prompts", "resources", "completions")
# A tools/call result's structuredContent and `_meta` are bounded like every JSON that enters the
# mesh (services/common/jsonvalue.py); the fleet passes its servers' line bound.
MAX_RESULT_BYTES = 4 * 1024 * 1024
# `_meta` keys MCP reserves for the protocol: a result's are its hop's (the server's info to the
# hub), and the edge stamps its own for its client.
_RESERVED = "io.modelcontextprotocol/"


def action_name(mcp_name: str) -> str:
    """A capability name for an MCP tool name (MCP allows characters our action names do not)."""
    if ACTION.match(mcp_name):
        return mcp_name
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", mcp_name).lstrip(".-") or "tool")[:128]


def action_names(mcp_names: Sequence[str]) -> dict[str, str]:
    """MCP tool name -> capability name, one distinct capability each, whatever order the server
    lists its tools in. A name our action names can hold keeps it; a mapped name that another tool
    also has or maps to ends in `-` and 8 hex digits of the SHA-256 of the MCP name."""
    valid = {n for n in mcp_names if ACTION.match(n)}
    mapped = Counter(action_name(n) for n in set(mcp_names) - valid)
    out: dict[str, str] = {}
    for n in mcp_names:
        action = action_name(n)
        if n not in valid and (action in valid or mapped[action] > 1):
            action = f"{action[:119]}-{hashlib.sha256(n.encode()).hexdigest()[:8]}"
        out[n] = action
    return out


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
    actions = action_names([mt.name for mt in tools])
    names: dict[str, str] = {}
    for mt in tools:
        action = actions[mt.name]
        if action in names:
            continue  # the same MCP name again
        names[action] = mt.name
        cap = t.capabilities.add(name=action, description=mt.description or mt.title or "")
        schema = dict(mt.input_schema or {})
        schema.setdefault("type", "object")
        cap.input_schema.CopyFrom(dict_to_struct(schema))
        if mt.output_schema:
            cap.output_schema.CopyFrom(dict_to_struct(dict(mt.output_schema)))
    return t, names


def to_response(result: types.CallToolResult, max_bytes: int = MAX_RESULT_BYTES) -> ex.ExecuteResponse:
    """Map a tools/call result: isError -> is_error, content blocks, structuredContent -> structured
    (a value that is not an object as `{"result": value}`, flagged `structured_is_value`), the
    result's `_meta` -> meta (without the hop's `io.modelcontextprotocol/` keys). JSON of the
    server's (structuredContent, `_meta`, a block's `_meta`, icons or whole JSON) nested deeper than
    jsonvalue.MAX_DEPTH or larger than `max_bytes` is the server's fault, answered as an isError
    result saying so: it could not be carried whole (nor read by the next hop, past protobuf's
    nesting limit)."""
    try:
        return _response(result, max_bytes)
    except _Unbounded as exc:
        return text_result(
            f"the MCP server answered {exc}; the mesh carries results within its bounds",
            is_error=True,
            error_type=tool_pb2.ERROR_TYPE_SYSTEM,
        )


class _Unbounded(Exception):
    """A result's JSON past the bounds: what and how, for the isError result."""


def _bounded(value: dict[str, Any], what: str, max_bytes: int) -> dict[str, Any]:
    """`value`, or _Unbounded when it is past the bounds of JSON entering the mesh."""
    try:
        struct_bounds(value, max_bytes)
    except JsonTooDeep:
        raise _Unbounded(f"{what} nested deeper than {MAX_DEPTH} levels") from None
    except TooLarge:
        raise _Unbounded(f"{what} larger than {max_bytes} bytes") from None
    return value


def _response(result: types.CallToolResult, max_bytes: int) -> ex.ExecuteResponse:
    resp = ex.ExecuteResponse(is_error=bool(result.is_error))
    for block in result.content:
        _add_block(resp, block, max_bytes)
    sc = result.structured_content
    if sc is not None:
        structured = sc if isinstance(sc, dict) else {"result": sc}
        fill_struct(resp.structured, _bounded(structured, "a structuredContent", max_bytes))
        resp.structured_is_value = structured is not sc
    meta = {k: v for k, v in result.meta.items() if not k.startswith(_RESERVED)} if result.meta else None
    if meta:
        fill_struct(resp.meta, _bounded(meta, "a result _meta", max_bytes))
    if resp.is_error:
        text = next(
            (b.text.text for b in resp.content if b.HasField("text")), "the MCP tool reported an error"
        )
        resp.error.type = tool_pb2.ERROR_TYPE_TOOL_ERROR
        resp.error.message = text[:2000]
    return resp


def _add_block(resp: ex.ExecuteResponse, block: Any, max_bytes: int) -> None:
    """The block as the ContentBlock of its kind, its annotations and `_meta` with it. Base64 that
    is not (MCP requires it), or a kind this mesh does not know, travels as the block's JSON."""
    out = resp.content.add()
    if isinstance(block, types.TextContent):
        out.text.text = block.text
    elif (
        isinstance(block, types.ImageContent | types.AudioContent)
        and (data := _bytes(block.data)) is not None
    ):
        media = out.image if isinstance(block, types.ImageContent) else out.audio
        media.data, media.mime_type = data, block.mime_type
    elif isinstance(block, types.EmbeddedResource) and _resource(out.resource, block.resource, max_bytes):
        pass
    elif isinstance(block, types.ResourceLink):
        _link(out.resource_link, block, max_bytes)
    else:
        out.Clear()
        dumped = block.model_dump(by_alias=True, mode="json", exclude_none=True)
        out.json.value.CopyFrom(py_to_value(_bounded(dumped, "a content block", max_bytes)))
        return
    if block.annotations is not None:
        _annotate(out.annotations, block.annotations)
    if block.meta is not None:
        fill_struct(out.meta, _bounded(block.meta, "a content block's _meta", max_bytes))


def _bytes(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _resource(
    out: tool_pb2.ResourceContent,
    res: types.TextResourceContents | types.BlobResourceContents,
    max_bytes: int,
) -> bool:
    out.uri = res.uri
    if res.mime_type is not None:
        out.mime_type = res.mime_type
    if isinstance(res, types.TextResourceContents):
        out.text = res.text
    elif (blob := _bytes(res.blob)) is not None:
        out.blob = blob
    else:
        return False
    if res.meta is not None:
        fill_struct(out.meta, _bounded(res.meta, "an embedded resource's _meta", max_bytes))
    return True


def _link(out: tool_pb2.ResourceLinkContent, link: types.ResourceLink, max_bytes: int) -> None:
    out.uri, out.name = link.uri, link.name
    if link.title is not None:
        out.title = link.title
    if link.description is not None:
        out.description = link.description
    if link.mime_type is not None:
        out.mime_type = link.mime_type
    if link.size is not None:
        out.size = link.size
    for icon in link.icons or ():
        dumped = icon.model_dump(by_alias=True, mode="json", exclude_none=True)
        fill_struct(out.icons.add(), _bounded(dumped, "a resource link's icon", max_bytes))


def _annotate(out: tool_pb2.ContentAnnotations, notes: types.Annotations) -> None:
    out.SetInParent()  # annotations that say nothing (`{}`) are still annotations
    if notes.audience is not None:
        out.audience.extend(notes.audience)
    if notes.priority is not None:
        out.priority = notes.priority
    if notes.last_modified is not None:
        out.last_modified = notes.last_modified

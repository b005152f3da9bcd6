"""Every capability of every registered tool as an MCP tool, with a stable, valid name. Pure.

Names are `<tool_id>__<action>` when that is already a valid MCP and OpenAI
function name (`^[a-zA-Z0-9_-]{1,64}$`). Otherwise (dots, or too long) the
name is sanitised, cut, and ends in `-` plus 8 hex digits of a hash of the
(tool_id, action) pair, so it never depends on which other tools exist. The
rare remaining clash (two pairs that spell the same name) is settled by
sorting the pairs: the first keeps the name, the others get a longer hash.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from toolscore.v1 import tool_pb2

from services.common.jsonvalue import struct_to_dict

MAX_NAME = 64
_VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
SEPARATOR = "__"
META_TOOL_ID = "dev.toolscore/toolId"
META_ACTION = "dev.toolscore/action"


def _digest(tool_id: str, action: str, n: int) -> str:
    return hashlib.sha256(f"{tool_id}\0{action}".encode()).hexdigest()[:n]


def tool_name(tool_id: str, action: str, hash_len: int = 8) -> str:
    """The MCP name of one capability (before collision handling)."""
    raw = f"{tool_id}{SEPARATOR}{action}"
    if _VALID.match(raw) and hash_len == 8:
        return raw
    suffix = "-" + _digest(tool_id, action, hash_len)
    return _INVALID_CHARS.sub("_", raw)[: MAX_NAME - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class McpTool:
    """One MCP tool: where calls go, and its `tools/list` entry."""

    name: str
    tool_id: str
    action: str
    definition: dict[str, Any]
    # The input schema, kept only when it carries `x-mcp-header` annotations (checked on HTTP calls).
    header_schema: dict[str, Any] | None = None


def _input_schema(cap: tool_pb2.Capability) -> dict[str, Any]:
    schema = struct_to_dict(cap.input_schema) if cap.HasField("input_schema") else {}
    if schema.get("type") != "object":  # MCP requires an object at the root; arguments always are one
        schema = {**schema, "type": "object"}
    return schema


def _definition(name: str, tool: tool_pb2.Tool, cap: tool_pb2.Capability) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "title": f"{tool.name or tool.tool_id}: {cap.name}",
        "description": cap.description or tool.description or f"{cap.name} of {tool.name or tool.tool_id}",
        "inputSchema": _input_schema(cap),
    }
    if cap.HasField("output_schema"):
        out = struct_to_dict(cap.output_schema)
        if out.get("type") == "object":  # MCP output schemas must describe an object
            d["outputSchema"] = out
    d["_meta"] = {META_TOOL_ID: tool.tool_id, META_ACTION: cap.name}
    return d


def _has_header_annotation(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "x-mcp-header" in schema or any(_has_header_annotation(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_header_annotation(v) for v in schema)
    return False


class Catalog:
    """An immutable snapshot: names -> tools, in name order for paging."""

    def __init__(self, tools: Iterable[McpTool] = ()) -> None:
        self.by_name: dict[str, McpTool] = {t.name: t for t in tools}
        self.names: list[str] = sorted(self.by_name)

    def get(self, name: str) -> McpTool | None:
        return self.by_name.get(name)

    def same_listing(self, other: Catalog) -> bool:
        """True when both list exactly the same tools (used to skip needless list_changed)."""
        return self.names == other.names and all(
            self.by_name[n].definition == other.by_name[n].definition for n in self.names
        )

    def page(self, cursor: str | None, size: int) -> tuple[list[dict[str, Any]], str | None]:
        """One page of definitions after `cursor`; raise ValueError for a cursor we did not issue."""
        start = 0
        if cursor is not None:
            start = bisect.bisect_right(self.names, _decode_cursor(cursor))
        names = self.names[start : start + size]
        nxt = _encode_cursor(names[-1]) if start + size < len(self.names) and names else None
        return [self.by_name[n].definition for n in names], nxt


def _encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("cursor is not one this server issued") from None
    if not text.startswith("after:"):
        raise ValueError("cursor is not one this server issued")
    return text[len("after:") :]


def build(tools: Iterable[tool_pb2.Tool]) -> Catalog:
    """A catalog of every capability of every enabled tool."""
    pairs: list[tuple[tool_pb2.Tool, tool_pb2.Capability]] = [
        (t, cap) for t in tools if t.enabled for cap in t.capabilities
    ]
    pairs.sort(key=lambda p: (p[0].tool_id, p[1].name))
    taken: dict[str, tuple[str, str]] = {}
    out: list[McpTool] = []
    for tool, cap in pairs:
        name = tool_name(tool.tool_id, cap.name)
        hash_len = 8
        while name in taken:  # a clash: later pairs (in sorted order) take a longer hash
            hash_len += 8
            name = tool_name(tool.tool_id, cap.name, hash_len)
        taken[name] = (tool.tool_id, cap.name)
        d = _definition(name, tool, cap)
        header_schema = d["inputSchema"] if _has_header_annotation(d["inputSchema"]) else None
        out.append(McpTool(name, tool.tool_id, cap.name, d, header_schema))
    return Catalog(out)

"""Every capability of every registered tool as an MCP tool, with a stable, valid name. Pure.

The catalog follows registry events one tool at a time (`Catalog.put`, `remove`): a page of
`tools/list` bisects the sorted names, and an event costs its tool's capabilities. Names are
`<tool_id>__<action>` when that is already a valid MCP and OpenAI
function name (`^[a-zA-Z0-9_-]{1,64}$`). Otherwise (dots, or too long) the
name is sanitised, cut, and ends in `-` plus 8 hex digits of a hash of the
(tool_id, action) pair, so it never depends on which other tools exist. The
rare remaining clash (two pairs that spell the same name) is settled by
sorting the pairs: the first keeps the name, the others get a longer hash; only such a clash
makes the catalog name every pair again.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
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
# The longest cursor `decode_cursor` reads: the base64 of the longest key a page can end at (a
# federated resource URI, at most a relayed request's 64 KiB of params) and its prefix.
MAX_CURSOR_CHARS = 4 * (64 * 1024 + 8) // 3 + 4
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
    admin: bool = False  # the capability `requires_admin` (tool search shows it to admins only)


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


class Listing:
    """Names -> tools, in name order for paging: what one endpoint lists (the catalog, or a view of
    it: edge/mcp/views.py)."""

    def __init__(self, tools: Iterable[McpTool] = ()) -> None:
        self.by_name: dict[str, McpTool] = {t.name: t for t in tools}
        self.names: list[str] = sorted(self.by_name)
        self._by_tool: dict[str, list[McpTool]] = {}
        for t in self.by_name.values():
            self._by_tool.setdefault(t.tool_id, []).append(t)

    def get(self, name: str) -> McpTool | None:
        return self.by_name.get(name)

    def of_tool(self, tool_id: str) -> list[McpTool]:
        """The listed capabilities of `tool_id` (none when it is disabled or unknown)."""
        return list(self._by_tool.get(tool_id, ()))

    def same_listing(self, other: Listing) -> bool:
        """True when both list exactly the same tools (used to skip needless list_changed)."""
        return self.names == other.names and all(
            self.by_name[n].definition == other.by_name[n].definition for n in self.names
        )

    def page(self, cursor: str | None, size: int) -> tuple[list[dict[str, Any]], str | None]:
        """One page of definitions after `cursor`; raise ValueError for a cursor we did not issue."""
        start = 0
        if cursor is not None:
            start = bisect.bisect_right(self.names, decode_cursor(cursor))
        names = self.names[start : start + size]
        nxt = encode_cursor(names[-1]) if start + size < len(self.names) and names else None
        return [self.by_name[n].definition for n in names], nxt

    def set_tool(self, tool_id: str, tools: list[McpTool]) -> bool:
        """List exactly `tools` (already named, none held by another tool) for `tool_id`; True when
        the listing changed."""
        old = self._by_tool.get(tool_id, [])
        if [(t.name, t.definition) for t in old] == [(t.name, t.definition) for t in tools]:
            return False
        for t in self._by_tool.pop(tool_id, []):
            del self.by_name[t.name]
            del self.names[bisect.bisect_left(self.names, t.name)]
        for t in tools:
            self.by_name[t.name] = t
            bisect.insort(self.names, t.name)
        if tools:
            self._by_tool[tool_id] = list(tools)
        return True


class Catalog(Listing):
    """Every capability of every enabled tool under its `<tool_id>__<action>` name; kept current with
    `put` and `remove` (what a registry event changes costs that tool's capabilities, not the
    listing's size)."""

    def __init__(self, tools: Iterable[McpTool] = ()) -> None:
        super().__init__(tools)
        # Base names (tool_name) some pair does not hold because another one took it first.
        bases = ((t.name, tool_name(t.tool_id, t.action)) for t in self.by_name.values())
        self._displaced = {base for name, base in bases if name != base}
        self.generation = 0  # moves when pairs other than an event's tool were named again

    def put(self, tool: tool_pb2.Tool) -> bool:
        """List `tool`'s capabilities as they are now (none when it is disabled); True when the
        listing changed."""
        old = self._by_tool.get(tool.tool_id, [])
        caps = list(tool.capabilities) if tool.enabled else []
        if sorted(t.action for t in old) == sorted(cap.name for cap in caps):  # the same names
            if not old:
                return False
            names = {t.action: t.name for t in old}
            fresh = [_mcp_tool(names[cap.name], tool, cap) for cap in caps]
            changed = any(self.by_name[t.name].definition != t.definition for t in fresh)
            for t in fresh:
                self.by_name[t.name] = t
            self._by_tool[tool.tool_id] = fresh
            return changed
        self._take_out(tool.tool_id)
        wanted = [tool_name(tool.tool_id, cap.name) for cap in caps]
        if self._clashes(old) or any(n in self.by_name for n in wanted) or len(set(wanted)) < len(wanted):
            self._rename_all([_mcp_tool(n, tool, cap) for n, cap in zip(wanted, caps, strict=True)])
            return True
        fresh = [_mcp_tool(n, tool, cap) for n, cap in zip(wanted, caps, strict=True)]
        for t in fresh:
            self.by_name[t.name] = t
            bisect.insort(self.names, t.name)
        if fresh:
            self._by_tool[tool.tool_id] = fresh
        return True

    def remove(self, tool_id: str) -> bool:
        """List no capability of `tool_id`; True when the listing changed."""
        old = self._by_tool.get(tool_id, [])
        if not old:
            return False
        self._take_out(tool_id)
        if self._clashes(old):
            self._rename_all([])
        return True

    def _take_out(self, tool_id: str) -> None:
        for t in self._by_tool.pop(tool_id, []):
            del self.by_name[t.name]
            del self.names[bisect.bisect_left(self.names, t.name)]

    def _clashes(self, gone: list[McpTool]) -> bool:
        """True when taking `gone` out may change other pairs' names: one of them did not hold its
        base name, or held a name another pair was kept from."""
        return any(t.name != tool_name(t.tool_id, t.action) or t.name in self._displaced for t in gone)

    def _rename_all(self, added: list[McpTool]) -> None:
        """Name every pair again, as `build` does (rare: only a clash of names gets here)."""
        renamed = Catalog(_named([*self.by_name.values(), *added]))
        self.by_name, self.names = renamed.by_name, renamed.names
        self._by_tool, self._displaced = renamed._by_tool, renamed._displaced
        self.generation += 1


def encode_cursor(after: str) -> str:
    """The opaque cursor of the page after the entry whose key is `after` (every MCP list of the
    edge pages by key: tools, and the federated prompts, resources and templates)."""
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The key a cursor of `encode_cursor` pages after; ValueError for one it did not make, or
    longer than any it makes (a key is at most a relayed request's params: 64 KiB)."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("cursor is not one this server issued")
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("cursor is not one this server issued") from None
    if not text.startswith("after:"):
        raise ValueError("cursor is not one this server issued")
    return text[len("after:") :]


def _mcp_tool(name: str, tool: tool_pb2.Tool, cap: tool_pb2.Capability) -> McpTool:
    d = _definition(name, tool, cap)
    header_schema = d["inputSchema"] if _has_header_annotation(d["inputSchema"]) else None
    return McpTool(name, tool.tool_id, cap.name, d, header_schema, cap.requires_admin)


def _named(tools: Iterable[McpTool]) -> list[McpTool]:
    """`tools` with their names settled: in (tool_id, action) order, each takes its plain name
    unless an earlier one has it; the later ones take a longer hash."""
    out: list[McpTool] = []
    taken: set[str] = set()
    for t in sorted(tools, key=lambda t: (t.tool_id, t.action)):
        name = tool_name(t.tool_id, t.action)
        hash_len = 8
        while name in taken:  # a clash: later pairs (in sorted order) take a longer hash
            hash_len += 8
            name = tool_name(t.tool_id, t.action, hash_len)
        taken.add(name)
        out.append(t if name == t.name else renamed(t, name))
    return out


def renamed(t: McpTool, name: str) -> McpTool:
    return dataclasses.replace(t, name=name, definition={**t.definition, "name": name})


def build(tools: Iterable[tool_pb2.Tool]) -> Catalog:
    """A catalog of every capability of every enabled tool."""
    pairs = [
        _mcp_tool(tool_name(t.tool_id, cap.name), t, cap)
        for t in tools
        if t.enabled
        for cap in t.capabilities
    ]
    return Catalog(_named(pairs))

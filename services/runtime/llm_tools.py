"""The tools offered to the LLM: a live copy of the edge's registry, as function-calling tools.

Pure bookkeeping, no I/O: the event follower (edge_client.py) feeds it listings and
events; the loop reads `functions()` before every LLM call, so a tool installed
or removed mid-task changes what the next call offers. Function names follow
`^[a-zA-Z0-9_-]{1,64}$` (OpenAI and MCP) and map back to (tool_id, action).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.legacy import params_schema

_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_DESCRIPTION = 1024
# Reserved for the runtime's own meta-tool (gap handling).
META_NAMES = frozenset({"request_capability"})


@dataclass(frozen=True)
class Capability:
    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class ToolInfo:
    tool_id: str
    name: str
    description: str
    capabilities: tuple[Capability, ...]
    enabled: bool = True
    health: str = "unknown"


@dataclass(frozen=True)
class Function:
    """One offered function and where it goes."""

    name: str
    tool_id: str
    action: str
    spec: dict[str, Any]


def function_name(tool_id: str, action: str, hashed: bool = False) -> str:
    """`<tool_id>__<action>`, made valid and at most 64 characters (a stable hash when shortened)."""
    name = _INVALID.sub("_", f"{tool_id}__{action}")
    if len(name) <= 64 and name not in META_NAMES and not hashed:
        return name
    digest = hashlib.sha256(f"{tool_id}\0{action}".encode()).hexdigest()[:8]
    return f"{name[:55]}_{digest}"


def _schema_from_legacy(params: Any) -> dict[str, Any]:
    return params_schema(params if isinstance(params, dict) else {})


def tool_from_json(raw: dict[str, Any]) -> ToolInfo:
    """A tool from the edge's clean `/api/v1/tools` shape or the original `/api/v1/tools/available` one."""
    caps = []
    for c in raw.get("capabilities") or ():
        if not isinstance(c, dict) or not c.get("name"):
            continue
        schema = c.get("input_schema")
        if not isinstance(schema, dict):
            schema = _schema_from_legacy(c.get("parameters"))
        schema = dict(schema) or {"type": "object"}
        schema.setdefault("type", "object")
        if schema.get("type") == "object":
            schema.setdefault("properties", {})
        caps.append(Capability(str(c["name"]), str(c.get("description") or ""), schema))
    return ToolInfo(
        tool_id=str(raw["tool_id"]),
        name=str(raw.get("name") or raw["tool_id"]),
        description=str(raw.get("description") or ""),
        capabilities=tuple(caps),
        enabled=bool(raw.get("enabled", True)),
        health=str(raw.get("health") or "unknown"),
    )


@dataclass
class Catalog:
    """The current tools, their revision, and a condition to wait on changes."""

    tools: dict[str, ToolInfo] = field(default_factory=dict)
    revision: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def replace(self, tools: Iterable[ToolInfo], revision: int) -> None:
        self.tools = {t.tool_id: t for t in tools}
        self.revision = max(self.revision, revision)
        self._notify()

    def upsert(self, tool: ToolInfo, revision: int = 0) -> None:
        self.tools[tool.tool_id] = tool
        self.revision = max(self.revision, revision)
        self._notify()

    def remove(self, tool_id: str, revision: int = 0) -> None:
        self.tools.pop(tool_id, None)
        self.revision = max(self.revision, revision)
        self._notify()

    def set_health(self, tool_id: str, health: str, revision: int = 0) -> None:
        if (t := self.tools.get(tool_id)) is not None:
            self.tools[tool_id] = ToolInfo(
                t.tool_id, t.name, t.description, t.capabilities, t.enabled, health
            )
        self.revision = max(self.revision, revision)
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter, then hand out a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Catalog], bool], within_s: float) -> bool:
        """Wait (no polling: woken by each change) until `predicate(self)` holds; False after `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                while not predicate(self):
                    await self._changed.wait()
            return True
        except TimeoutError:
            return False

    def functions(self) -> list[Function]:
        """Every enabled capability as a function, in a stable order."""
        out: list[Function] = []
        used: set[str] = set()
        for tool in sorted(self.tools.values(), key=lambda t: t.tool_id):
            if not tool.enabled:
                continue
            for cap in tool.capabilities:
                name = function_name(tool.tool_id, cap.name)
                if name in used:  # e.g. `a.b` and `a_b`: the later one (in id order) gets the hashed name
                    name = function_name(tool.tool_id, cap.name, hashed=True)
                if name in used:
                    continue
                used.add(name)
                desc = f"[{tool.name}] {cap.description or tool.description}".strip()[:MAX_DESCRIPTION]
                spec = {
                    "type": "function",
                    "function": {"name": name, "description": desc, "parameters": cap.schema},
                }
                out.append(Function(name, tool.tool_id, cap.name, spec))
        return out

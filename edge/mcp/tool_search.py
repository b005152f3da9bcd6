"""Tool search for agents: a view listed as two meta-tools, `find_tools` and `call_tool`.

An agent facing 10,000 tools sees two: `find_tools(query, limit)` answers the best matches among
the tools the view holds (their names, input schemas, scores and the words that matched, as
structuredContent plus a text block), and `call_tool(name, arguments)` calls one of them with the
caller's own authority, through the very path a direct `tools/call` takes (the dispatcher's), so a
tool the view does not hold is an unknown tool (-32602) and an admin-only one without the admin
token is refused (-32003), exactly as a direct call would be.

The search is the registry's own index (services/library/search_index.py: SQLite FTS5 with BM25),
one per search view, each capability a document under its listed name. It is built once, in bulk
(SearchIndex.load: the documents made on the index's thread), when the edge starts for `/mcp` and
named servers with `tool_search`, and at its first client for the built-in `/mcp/servers/search`;
then kept in step by the view's changes, one tool at a time (edge/mcp/views.py), and loaded in bulk
again only when the whole listing changes: nothing is rebuilt per session or per query. A
find_tools that arrives while a build is under way waits for it at most `build_wait_s` (`[edge]
mcp_search_build_wait_s`), then answers an isError result saying the index is being built (and how
far it got). Capabilities declared
`requires_admin` are indexed as not enabled, so a caller without admin rights searches with
`enabled_only` and never sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from toolscore.v1 import tool_pb2

from services.common.errors import InvalidRequest
from services.library.search_index import MAX_QUERY_CHARS, MAX_RESULTS, SearchIndex

from .results import failure_result
from .tool_list import Listing, McpTool

if TYPE_CHECKING:
    from .views import ToolView

FIND, CALL = "find_tools", "call_tool"
DEFAULT_LIMIT = 10
_REMOVED = tool_pb2.TOOL_EVENT_TYPE_REMOVED
_UPDATED = tool_pb2.TOOL_EVENT_TYPE_UPDATED
_SHOWN = ("name", "title", "description", "inputSchema", "outputSchema")  # of a match's definition

_MATCH = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "inputSchema": {"type": "object"},
        "outputSchema": {"type": "object"},
        "score": {"type": "number"},
        "matched": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "inputSchema", "score", "matched"],
}

META = Listing(
    [
        McpTool(
            FIND,
            "",
            FIND,
            {
                "name": FIND,
                "title": "Find tools",
                "description": (
                    "Search the tools you can call for the ones that fit a task. Answers the best "
                    "matches, best first, each with its name, description, input schema, score and "
                    "the words that matched. Call one with call_tool."
                ),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "query": {
                            "type": "string",
                            "description": "What the tool should do, in a few words",
                            "minLength": 1,
                            "maxLength": MAX_QUERY_CHARS,
                        },
                        "limit": {
                            "type": "integer",
                            "description": "How many matches at most",
                            "minimum": 1,
                            "maximum": MAX_RESULTS,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    "required": ["query"],
                },
                "outputSchema": {
                    "type": "object",
                    "properties": {"tools": {"type": "array", "items": _MATCH}},
                    "required": ["tools"],
                },
            },
        ),
        McpTool(
            CALL,
            "",
            CALL,
            {
                "name": CALL,
                "title": "Call a tool",
                "description": (
                    "Call a tool find_tools found, by its name, with arguments that follow its input "
                    "schema. Answers what the tool answers."
                ),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "The tool's name, as find_tools gave it"},
                        "arguments": {"type": "object", "description": "The tool's arguments"},
                    },
                    "required": ["name"],
                },
            },
        ),
    ]
)


def _doc(t: McpTool) -> tool_pb2.Tool:
    """The index's document for one listed capability: keyed by its listed name."""
    d = t.definition
    cap = tool_pb2.Capability(name=t.action, description=str(d.get("description", "")))
    return tool_pb2.Tool(
        tool_id=t.name, name=str(d.get("title", "")), enabled=not t.admin, capabilities=[cap]
    )


class ToolSearch:
    """The search of one view (`view`): `find` for find_tools, `target` for call_tool.

    A find_tools during a build of the index (the edge's start, a first client, a new whole
    listing) waits for it at most `build_wait_s` (`[edge] mcp_search_build_wait_s`), then answers
    an isError result saying so: a client is never held for the whole build of a large registry
    (~7 s at 100,000 tools)."""

    listing = META

    def __init__(self, view: ToolView, build_wait_s: float) -> None:
        self.view = view
        self.build_wait_s = build_wait_s
        self._index: SearchIndex | None = None
        self._built: asyncio.Task[SearchIndex] | None = None
        self._live = False  # the index holds the view (from then on, its changes are applied)
        self._loading: asyncio.Future[None] | None = None  # the last bulk load of the whole view
        self._names: dict[str, list[str]] = {}  # tool id -> the names indexed for it
        view.listeners.append(self._changed)

    async def find(self, arguments: Any, admin: bool) -> dict[str, Any]:
        """The find_tools result for `arguments` (an isError result when they are not usable, or
        when the index is still being built after `build_wait_s`)."""
        if not isinstance(arguments, dict):
            return failure_result("find_tools needs arguments {query, limit}")
        query, limit = arguments.get("query"), arguments.get("limit", DEFAULT_LIMIT)
        if not isinstance(query, str):
            return failure_result("find_tools needs `query`, a string: what the tool should do")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS:
            return failure_result(f"`limit` must be an integer from 1 to {MAX_RESULTS}")
        index = await self._ready()
        if index is None:
            return failure_result(self._building())
        try:
            hits = await index.search(query, limit, enabled_only=not admin)
        except InvalidRequest as exc:  # empty or too long: the model can send a better query
            return failure_result(exc.message)
        listing = self.view.current()
        tools = []
        for hit in hits:
            t = listing.by_name.get(hit.tool_id)
            if t is None:
                continue
            d = t.definition
            match = {k: d[k] for k in _SHOWN if k in d}
            match["score"], match["matched"] = hit.score, hit.matched
            tools.append(match)
        structured = {"tools": tools}
        text = json.dumps(structured, ensure_ascii=False)
        return {"content": [{"type": "text", "text": text}], "structuredContent": structured}

    @staticmethod
    def target(arguments: Any) -> tuple[str, dict[str, Any]] | dict[str, Any]:
        """The (name, arguments) call_tool names, or the isError result saying what is wrong."""
        if not isinstance(arguments, dict) or not isinstance(arguments.get("name"), str):
            return failure_result("call_tool needs `name`, a string: a name find_tools gave")
        inner = arguments.get("arguments")
        if inner is None:
            inner = {}
        if not isinstance(inner, dict):
            return failure_result("call_tool's `arguments` must be an object")
        return arguments["name"], inner

    async def close(self) -> None:
        """Stop the index's thread."""
        if self._built is not None:
            self._built.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._built
        if self._index is not None:
            await self._index.close()

    # -- the index ------------------------------------------------------------------

    def prepare(self) -> None:
        """Start building the index (the edge starts, or the endpoint has its first client),
        unless it is under way."""
        if self._built is None:
            self._built = asyncio.get_running_loop().create_task(self._build())

    async def _ready(self) -> SearchIndex | None:
        """The index, once built and holding the view's last whole listing; None when that takes
        longer than `build_wait_s` (concurrent first searches wait for one build)."""
        self.prepare()
        assert self._built is not None
        loading = self._loading
        if self._built.done() and (loading is None or loading.done()):  # the usual case: no await
            return self._built.result()
        loop = asyncio.get_running_loop()
        wait_s = self.build_wait_s
        deadline = loop.time() + wait_s
        try:
            index = await asyncio.wait_for(asyncio.shield(self._built), wait_s)
            while (loading := self._loading) is not None and not loading.done():  # a newer listing's
                await asyncio.wait_for(asyncio.shield(loading), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        return index

    def _building(self) -> str:
        """What an isError find_tools says while the index is being built."""
        progress = self._index.progress() if self._index is not None else None
        read = ""
        if progress is not None:
            made, total = progress
            read = (
                f" ({made:,} of {total:,} tools read)"
                if made < total
                else f" ({total:,} tools read, being indexed)"
            )
        return (
            f"find_tools: the tool index is being built{read}; it answers as soon as it is built: "
            "call find_tools again in a few seconds"
        )

    async def _build(self) -> SearchIndex:
        index = self._index = SearchIndex()
        await index.open()
        # From here to `_live` nothing awaits: no change of the view falls between its snapshot and
        # the changes applied after it (queued after the load, so applied after it).
        self._load_view()
        self._live = True
        assert self._loading is not None
        await self._loading
        return index

    def _load_view(self) -> None:
        """Index the view as it is now, in bulk: its documents made on the index's thread."""
        assert self._index is not None
        snapshot = list(self.view.current().by_name.values())
        self._names = {}
        for t in snapshot:
            self._names.setdefault(t.tool_id, []).append(t.name)
        self._loading = asyncio.wrap_future(self._index.load(map(_doc, snapshot), len(snapshot)))
        self._loading.add_done_callback(_retrieved)

    def _changed(self, tool_id: str | None) -> None:
        if not self._live or self._index is None:
            return  # not built yet: the build reads the view as it is then
        if tool_id is None:  # the whole listing may have changed (a first listing, names moved)
            self._load_view()
            return
        for name in self._names.pop(tool_id, []):
            self._index.apply(tool_pb2.ToolEvent(type=_REMOVED, tool=tool_pb2.Tool(tool_id=name)))
        for t in self.view.current().of_tool(tool_id):
            self._names.setdefault(t.tool_id, []).append(t.name)
            self._index.apply(tool_pb2.ToolEvent(type=_UPDATED, tool=_doc(t)))


def _retrieved(future: asyncio.Future[None]) -> None:
    """A load's failure is logged on the index's thread; a later find_tools awaits and reports it."""
    if not future.cancelled():
        future.exception()

"""What one MCP endpoint lists: the catalog through a filter and renames (a view).

`/mcp` lists the catalog (tool_list.py) itself, or a view of it when `[edge] mcp_include`,
`mcp_exclude`, `mcp_rename` or `mcp_tool_search` are set. `/mcp/servers/<name>` serves a named view
(`[[mcp_servers]]`), the built-in tool search over what `/mcp` lists (`search`), or one registered
tool's capabilities (an installed MCP server's tools) under their own names, unprefixed (`<tool_id>`),
as if the client had connected to that server directly. The dispatcher consults the view its session
was opened on (`Session.view`; None: `/mcp` unfiltered, the catalog itself).

A view follows the catalog one tool at a time (`apply`, after the catalog applied a registry event),
so an event costs that tool's capabilities, not the view's size; it is built whole only when the
catalog was (a fresh listing, or a clash of names renamed other pairs: `Catalog.generation`). Two
tools a view would list under one name (a rename onto another's name, or two servers' own names
in a view over several): the first in (tool_id, action) order is listed, the other hidden.

`ViewSpec.present(tool_id, own, federated)` decides the name of any federated item (a tool, and
resources and prompts when they are federated: their lists apply the same filter and renames).
"""

from __future__ import annotations

import fnmatch
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from services.common.config import SEARCH_SERVER, Config, renames

from .tool_list import Catalog, Listing, McpTool, renamed

if TYPE_CHECKING:
    from .tool_search import ToolSearch

Listener = Callable[[str | None], None]  # a tool's listing changed (None: the whole view's may have)


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-sensitive pattern for a set of shell globs (None when there are none)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class ViewSpec:
    """A filter and renames over the catalog, and how its endpoint presents itself. Pure."""

    key: str = ""  # "" for `/mcp`; else the <name> of `/mcp/servers/<name>`
    server: str = ""  # a tool id: only its items, each under its own name on its server
    include: tuple[str, ...] = ()  # globs over the names before renaming; none: every item
    exclude: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tool_search: bool = False  # list find_tools and call_tool (edge/mcp/tool_search.py) instead
    instructions: str = ""
    _include: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _exclude: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include", _globs(self.include))
        object.__setattr__(self, "_exclude", _globs(self.exclude))

    @property
    def filters(self) -> bool:
        """True when the view lists anything other than the catalog as it is."""
        return bool(self.server or self.include or self.exclude or self.rename)

    def holds(self, tool_id: str) -> bool:
        """Whether this view may list items of server `tool_id` (a view of one server: only its)."""
        return not self.server or tool_id == self.server

    def present(self, tool_id: str, own: str, federated: str) -> str | None:
        """The name this view lists an item under, or None when it hides it. `own` is its name on
        its server (a tool's action), `federated` its name on `/mcp` (`<tool_id>__<action>`)."""
        if self.server:
            if tool_id != self.server:
                return None
            base = own
        else:
            base = federated
        if self._include is not None and not self._include.match(base):
            return None
        if self._exclude is not None and self._exclude.match(base):
            return None
        return self.rename.get(base, base)


class ToolView:
    """One endpoint's listing, kept in step with the catalog; `search` when it lists tool search."""

    def __init__(self, spec: ViewSpec, catalog: Callable[[], Catalog]) -> None:
        self.spec = spec
        self._catalog = catalog
        self._base: Catalog | None = None
        self._generation = -1
        self._listing: Listing = Listing()
        self._hidden: set[str] = set()  # names two tools would take: held by the first, see above
        self.changed = False  # the listing changed since `take_changed` was last called
        # The registry revision whose listing was announced last (HTTP standalone streams' event id).
        self.revision = 0
        # How many times its federated prompts / resources list_changed were announced (HTTP
        # standalone streams announce each move; edge/mcp/mcp_service.py moves them).
        self.lists_revisions = {"prompts": 0, "resources": 0}
        self.listeners: list[Listener] = []
        self.search: ToolSearch | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    def current(self) -> Listing:
        """The tools this view holds (those tool search searches, when it is a search view)."""
        base = self._catalog()
        if base is not self._base or base.generation != self._generation:
            self._rebuild(base)
        return self._listing

    def get(self, name: str) -> McpTool | None:
        return self.current().by_name.get(name)

    def apply(self, tool_id: str, moved: bool) -> None:
        """Follow the catalog after it applied an event for `tool_id` (`moved`: its listing of that
        tool changed)."""
        base = self._catalog()
        if base is not self._base or base.generation != self._generation:
            self._rebuild(base)
            return
        if not moved or (self.spec.server and tool_id != self.spec.server):
            return
        if not self.spec.filters:  # the listing is the catalog's own
            self._changed(tool_id)
            return
        gone = self._listing.of_tool(tool_id)
        fresh = [p for t in base.of_tool(tool_id) if (p := self._present(t)) is not None]
        held = self._listing.by_name
        if any(t.name in self._hidden for t in gone) or any(
            t.name in held and held[t.name].tool_id != tool_id for t in fresh
        ):
            self._rebuild(base)  # a clash of names, made or undone: settled again from the whole
        elif self._listing.set_tool(tool_id, fresh):
            self._changed(tool_id)

    def take_changed(self) -> bool:
        """Whether the listing changed since the last call (and forget it)."""
        self.current()
        changed, self.changed = self.changed, False
        return changed

    def _present(self, t: McpTool) -> McpTool | None:
        name = self.spec.present(t.tool_id, t.action, t.name)
        if name is None:
            return None
        return t if name == t.name else renamed(t, name)

    def _rebuild(self, base: Catalog) -> None:
        self._base, self._generation = base, base.generation
        if not self.spec.filters:  # a fresh catalog, or names moved in it: any name may have changed
            self._listing = base
            self._changed(None)
            return
        items: Iterable[McpTool] = (
            base.of_tool(self.spec.server) if self.spec.server else base.by_name.values()
        )
        old = self._listing
        self._listing = Listing(self._settle(p for t in items if (p := self._present(t)) is not None))
        if not self._listing.same_listing(old):
            self._changed(None)

    def _settle(self, tools: Iterable[McpTool]) -> list[McpTool]:
        out: dict[str, McpTool] = {}
        self._hidden = set()
        for t in sorted(tools, key=lambda t: (t.tool_id, t.action)):
            if t.name in out:
                self._hidden.add(t.name)
            else:
                out[t.name] = t
        return list(out.values())

    def _changed(self, tool_id: str | None) -> None:
        self.changed = True
        for listener in list(self.listeners):
            listener(tool_id)


def main_spec(cfg: Config) -> ViewSpec:
    """What `/mcp` lists, from `[edge]`."""
    e = cfg.edge
    return ViewSpec(
        include=e.mcp_include,
        exclude=e.mcp_exclude,
        rename=MappingProxyType(renames(e.mcp_rename, "edge.mcp_rename")),
        tool_search=e.mcp_tool_search,
    )


def named_specs(cfg: Config) -> list[ViewSpec]:
    """The `[[mcp_servers]]` views."""
    return [
        ViewSpec(
            key=s.name,
            server=s.server,
            include=s.include,
            exclude=s.exclude,
            rename=MappingProxyType(renames(s.rename, f"mcp_servers.{s.name}.rename")),
            tool_search=s.tool_search,
            instructions=s.instructions,
        )
        for s in cfg.mcp_servers
    ]


class Views:
    """Every view of one edge: `/mcp`'s (None when it lists the catalog as it is), the named ones,
    the built-in search, and server views, made when a client first asks and kept while a session
    holds them (a weak table: their number is bounded by the sessions)."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        cfg: Config,
        search: Callable[[ToolView], ToolSearch],
    ) -> None:
        self._catalog = catalog
        self._make_search = search
        spec = main_spec(cfg)
        self.main = self._view(spec) if spec.filters or spec.tool_search else None
        self._named = {s.key: self._view(s) for s in named_specs(cfg)}
        self._search_enabled = cfg.edge.mcp_search_server
        self._search: ToolView | None = None
        self._servers: weakref.WeakValueDictionary[str, ToolView] = weakref.WeakValueDictionary()

    def _view(self, spec: ViewSpec) -> ToolView:
        view = ToolView(spec, self._catalog)
        view.take_changed()  # what it lists now is what its first client sees
        if spec.tool_search:
            view.search = self._make_search(view)
        return view

    def resolve(self, name: str) -> ToolView | None:
        """The view `/mcp/servers/<name>` serves, or None (404)."""
        view = self._named.get(name)
        if view is not None:
            if view.search is not None:
                view.search.prepare()
            return view
        if name == SEARCH_SERVER and self._search_enabled:
            if self._search is None:
                main = self.main.spec if self.main is not None else ViewSpec()
                if main.tool_search and self.main is not None:
                    self._search = self.main
                else:
                    self._search = self._view(
                        ViewSpec(SEARCH_SERVER, "", main.include, main.exclude, main.rename, tool_search=True)
                    )
            assert self._search.search is not None
            self._search.search.prepare()
            return self._search
        view = self._servers.get(name)
        if view is None:
            if not self._catalog().of_tool(name):
                return None
            view = self._servers[name] = self._view(ViewSpec(key=name, server=name))
        return view

    def all(self) -> list[ToolView]:
        views = [*self._named.values(), *self._servers.values()]
        for v in (self.main, self._search):
            if v is not None and v not in views:
                views.append(v)
        return views

    def apply(self, tool_id: str, moved: bool) -> None:
        """Follow the catalog after it applied an event for `tool_id`."""
        for view in (self.main, self._search, *self._named.values()):
            if view is not None:
                view.apply(tool_id, moved)
        server = self._servers.get(tool_id)
        if server is not None:
            server.apply(tool_id, moved)

    async def close(self) -> None:
        """Stop every tool search (its index's thread)."""
        for view in self.all():
            if view.search is not None:
                await view.search.close()

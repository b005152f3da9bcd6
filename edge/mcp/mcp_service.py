"""The MCP service inside the edge: the live tool catalog, the dispatcher, and their lifetime.

The catalog follows the edge's registry cache (edge.registry_cache): it is
rebuilt when the cache's revision moves, and a registry event that changes the *listing*
(not just a tool's health) is announced to MCP clients as list_changed. The views of the
catalog each endpoint lists (edge/mcp/views.py) follow it, each event after the catalog's, and
each view's change is announced to that endpoint's clients only. It also follows the hub's stream
of installed servers' notices (edge/mcp/server_notices.py): log messages to the dispatcher, resource
updates to the sessions' subscriptions (edge/mcp/resource_subscriptions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolscore.v1 import tool_pb2

from edge.gateway import HubGateway
from edge.origin import OriginGuard
from edge.outbox import OutboxLimits, OutboxStats
from edge.registry_cache import RegistryCache, Unsubscribe
from services.common.config import Config, EdgeConfig
from services.common.errors import ResourceExhausted

from ._protocol import LIMIT_REACHED, RequestId, error_response
from .dispatcher import Dispatcher, ServerOptions
from .federation import Federation, FederationOptions, hub_relay
from .resource_subscriptions import ResourceSubscriptions, hub_subscriber
from .server_notices import follow
from .tool_list import Catalog, build
from .tool_search import ToolSearch
from .views import ToolView, Views

log = logging.getLogger(__name__)


_EDGE = EdgeConfig()  # the defaults live in one place: the config section
_OUTBOX = OutboxLimits(_EDGE.subscriber_queue, _EDGE.outbox_bytes)


@dataclass(frozen=True)
class McpOptions:
    """Transport settings; `from_config` takes them from `[edge]` (its `mcp_*` keys, documented in
    docs/config/edge.md), and the defaults are that section's."""

    max_frame_bytes: int = _EDGE.max_frame_bytes
    sse_defer_s: float = _EDGE.mcp_sse_defer_s
    sse_keepalive_s: float = _EDGE.mcp_sse_keepalive_s
    session_ttl_s: float = _EDGE.mcp_session_ttl_s
    max_sessions: int = _EDGE.mcp_max_sessions
    sessions_per_client: int = _EDGE.mcp_sessions_per_client
    notification_queue: int = _EDGE.mcp_notification_queue
    max_in_flight: int = _EDGE.max_in_flight
    outbox: OutboxLimits = _OUTBOX
    write_timeout_s: float = _EDGE.http_write_timeout_s  # an SSE answer's write stalled this long: cut

    @classmethod
    def from_config(cls, edge: EdgeConfig) -> McpOptions:
        return cls(
            max_frame_bytes=edge.max_frame_bytes,
            sse_defer_s=edge.mcp_sse_defer_s,
            sse_keepalive_s=edge.mcp_sse_keepalive_s,
            session_ttl_s=edge.mcp_session_ttl_s,
            max_sessions=edge.mcp_max_sessions,
            sessions_per_client=edge.mcp_sessions_per_client,
            notification_queue=edge.mcp_notification_queue,
            max_in_flight=edge.max_in_flight,
            outbox=OutboxLimits(edge.subscriber_queue, edge.outbox_bytes),
            write_timeout_s=edge.http_write_timeout_s,
        )


@dataclass
class McpStats:
    """What the MCP transports refused or cut off to keep one client from hurting the others."""

    ws: OutboxStats = field(default_factory=OutboxStats)  # /ws/mcp outboxes
    busy_refused: int = 0  # requests refused: their connection or session had max_in_flight running
    sessions_refused: int = 0  # initialize refused: the client address (or the edge) at its session cap
    notifications_dropped: int = 0  # progress / list_changed past a request stream's bound
    slow_cut: int = 0  # SSE answers whose client took nothing within http_write_timeout_s: cut off
    first_cut: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first slow_cut


class LiveCatalog:
    """The MCP view of the edge's registry cache, kept in step by its events (`apply`): an event
    costs its tool's capabilities. Built whole only after the cache took a fresh listing."""

    def __init__(self, registry: RegistryCache) -> None:
        self._registry = registry
        self._listing = -1  # the cache's listing this catalog was built from
        self._catalog = Catalog()
        self.changed = False  # the listing changed since `take_changed` was last called

    def current(self) -> Catalog:
        if self._registry.listings != self._listing:
            fresh = build(e.full() for e in self._registry.entries.values())
            self.changed = self.changed or not fresh.same_listing(self._catalog)
            self._catalog = fresh
            self._listing = self._registry.listings
        return self._catalog

    def apply(self, event: tool_pb2.ToolEvent) -> bool:
        """Follow one event the cache applied (or a difference its fresh listing found); True when
        the listing of its tool changed (or the catalog was built whole)."""
        if self._registry.listings != self._listing:
            self.current()  # built whole from the cache, which has this event already
            return True
        if event.type == tool_pb2.TOOL_EVENT_TYPE_REMOVED:
            changed = self._catalog.remove(event.tool.tool_id)
        else:
            changed = self._catalog.put(event.tool)
        self.changed = self.changed or changed
        return changed

    def take_changed(self) -> bool:
        """Whether the listing changed since the last call (and forget it)."""
        self.current()
        changed, self.changed = self.changed, False
        return changed


class McpService:
    """Owns the dispatcher and catalog; started and stopped with the edge app."""

    def __init__(
        self,
        gateway: HubGateway,
        registry: RegistryCache,
        cfg: Config,
        opts: McpOptions | None = None,
        server: ServerOptions | None = None,
    ) -> None:
        self.gateway = gateway
        self.registry = registry
        self.opts = opts or McpOptions.from_config(cfg.edge)
        self.catalog = LiveCatalog(self.registry)
        server = server or ServerOptions(
            page_size=cfg.edge.mcp_page_size, max_argument_bytes=cfg.hub.max_argument_bytes
        )
        self.federation = Federation(
            registry, hub_relay(gateway), FederationOptions(page_size=server.page_size)
        )
        self.subscriptions = ResourceSubscriptions(
            hub_subscriber(gateway),
            cfg.edge.mcp_resource_subscriptions_per_session,
            cfg.edge.mcp_resource_subscriptions,
        )
        self.dispatcher = Dispatcher(
            self.catalog.current, gateway.execute, server, self.federation, self.subscriptions
        )
        # What each endpoint lists: `/mcp` (views.main, None when unfiltered) and `/mcp/servers/<name>`.
        wait_s = cfg.edge.mcp_search_build_wait_s
        self.views = Views(self.catalog.current, cfg, functools.partial(ToolSearch, build_wait_s=wait_s))
        self.guard = OriginGuard.from_config(cfg.edge)
        # The registry revision whose listing was announced last: the event id of list_changed on
        # HTTP standalone streams, from which a session that had no stream open resumes.
        self.listing_revision = 0
        # Called at each announcement: open standalone streams (sessions without one cost nothing).
        self.listing_listeners: list[Callable[[], None]] = []
        # How many times the federated servers' prompts and resources lists were announced
        # changed to `/mcp` unfiltered (a view counts its own: ToolView.lists_revisions): open HTTP
        # streams announce each move (edge/mcp/federation.py).
        self.feature_revisions = {"prompts": 0, "resources": 0}
        self._features_moved: dict[str, set[str]] = {}  # kind -> the servers whose list moved
        self.stats = McpStats()
        self._check_scheduled = False
        self._first_sync: asyncio.Task[None] | None = None
        self._notices: asyncio.Task[None] | None = None  # installed servers' log messages (server_notices)
        self._unsubscribe: Unsubscribe | None = None
        self.closing = asyncio.Event()

    def start(self) -> None:
        self.catalog.current()
        self.catalog.take_changed()  # what is listed now is what a client's first tools/list sees
        for view in self.views.all():
            view.take_changed()
            if view.search is not None:  # `/mcp` or a named server is a tool search: build its index now
                view.search.prepare()
        self._unsubscribe = self.registry.subscribe(self._on_event)
        self._notices = asyncio.get_running_loop().create_task(self._follow_notices())
        if not self.registry.synced.is_set():  # the first listing notifies no listener: check after it
            self._first_sync = asyncio.get_running_loop().create_task(self._after_first_sync())

    async def _follow_notices(self) -> None:
        def on_notice(tool_id: str, method: str, params: dict[str, Any]) -> None:
            if method == "notifications/message":
                self.dispatcher.server_log(tool_id, params)
            elif method == "notifications/resources/updated":
                self.subscriptions.updated(tool_id, params)

        try:
            await follow(self.gateway, on_notice, self.subscriptions.watch)
        except Exception:  # the log messages are lost, not the edge
            log.exception("installed servers' log messages: no longer followed")

    async def _after_first_sync(self) -> None:
        await self.registry.synced.wait()
        self._check()

    async def stop(self) -> None:
        """Stop announcing; end listen streams and SSE streams gracefully."""
        if self._first_sync is not None:
            self._first_sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._first_sync
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.federation.close()
        if self._notices is not None:
            self._notices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notices
        self.dispatcher.close()
        await self.subscriptions.close()
        self.closing.set()
        await self.views.close()

    def view(self, name: str) -> ToolView | None:
        """The view `/mcp/servers/<name>` serves (None: no such server)."""
        return self.views.resolve(name)

    def refuse_busy(self, rid: RequestId | None, where: str) -> dict[str, Any]:
        """The answer to a request past the in-flight bound of its connection or session.

        Refused at once (JSON-RPC -32029, RESOURCE_EXHAUSTED in `data`), never queued: what one client
        has running is bounded, whatever it sends.
        """
        self.stats.busy_refused += 1
        limit = self.opts.max_in_flight
        err = ResourceExhausted(
            f"{limit} requests are already in flight on this {where}; wait for an answer and retry",
            reason="TOO_MANY_IN_FLIGHT",
            metadata={"max_in_flight": str(limit)},
        )
        return error_response(rid, LIMIT_REACHED, err.message, err.to_json())

    def _on_event(self, event: tool_pb2.ToolEvent) -> None:
        self.views.apply(event.tool.tool_id, self.catalog.apply(event))
        prompts, resources = self.federation.apply(event)
        for kind, moved in (("prompts", prompts), ("resources", resources)):
            if moved:
                self._features_moved.setdefault(kind, set()).add(event.tool.tool_id)
        self.dispatcher.tools_moved = True  # at once: the next tools/call reads the new catalog
        if not self._check_scheduled:  # coalesce a burst of events into one check
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_scheduled = False
        revision, main, announced = self.registry.revision, self.views.main, False
        if self._features_moved:
            # Announced only to the endpoints whose view holds a server whose list moved.
            views = self.views.all()
            for kind, servers in sorted(self._features_moved.items()):
                self.feature_revisions[kind] += 1
                for view in views:
                    if any(view.spec.holds(t) for t in servers):
                        view.lists_revisions[kind] += 1
                self.dispatcher.lists_changed(kind, servers)
            self._features_moved.clear()
            announced = True
        if self.catalog.take_changed() and main is None:
            self.listing_revision = revision
            self.dispatcher.tools_changed()
            announced = True
        for view in self.views.all():
            # A tool search's listing (its two tools) never changes: what it searches is not listed.
            if view.take_changed() and view.search is None:
                view.revision = revision
                if view is main:
                    self.listing_revision = revision
                self.dispatcher.tools_changed(view)
                announced = True
        if announced:  # open standalone streams: each compares the revision of its own view
            for fire in list(self.listing_listeners):
                fire()

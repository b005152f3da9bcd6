"""The edge's registry cache: the hub's tools as of a revision, followed live.

The hub stays the source of truth. The cache lists the registry once, then
follows `WatchToolEvents`, so it is current within one event's latency; it lists
again (and tells its listeners what changed) when the watch fails or the hub
restarts. Readers get a read-only mapping of tool_id -> Entry, the revision it
reflects, `subscribe()` for events, `events_since()` for a resume, and the
caught-up state `/health` reports (docs/grpc.md, toolscore-watch-revision).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2

from services.common.errors import MeshError, Unavailable, from_rpc_error
from services.library.registry import WATCH_REVISION_KEY, Entry, make_entry
from services.library.sorted_ids import SortedIds

log = logging.getLogger(__name__)
Listener = Callable[[tool_pb2.ToolEvent], None]
Unsubscribe = Callable[[], None]
REMOVED = tool_pb2.TOOL_EVENT_TYPE_REMOVED


class _Unreadable(Exception):
    """A message from the hub that this edge could not parse."""


def hub_error(exc: grpc.aio.AioRpcError) -> MeshError:
    """A failed call to the hub as the mesh's error: the hub's own error as it sent it (its
    registry store unreachable, no route to a tool), or, when the hub itself could not be reached
    (an UNAVAILABLE without the hub's ErrorInfo), Unavailable HUB_UNAVAILABLE."""
    err = from_rpc_error(exc)
    if exc.code() == grpc.StatusCode.UNAVAILABLE and err.reason == grpc.StatusCode.UNAVAILABLE.name:
        return Unavailable(f"hub unreachable: {exc.details()}", reason="HUB_UNAVAILABLE")
    return err


class RegistryCache:
    """The hub's registry as this edge last heard it; `follow(library)` keeps it current."""

    def __init__(self, *, event_buffer: int = 10000) -> None:
        self._entries: dict[str, Entry] = {}
        self.entries: Mapping[str, Entry] = types.MappingProxyType(self._entries)
        # The hot path's lookup: the dict's own `get` (the dict is updated in place, never replaced).
        self.get: Callable[[str], Entry | None] = self._entries.get
        self._order = SortedIds()  # the tool ids, sorted: a page of a listing starts by bisection
        # Fresh listings taken so far: a reader that follows events rebuilds when it moved (the
        # first listing tells no listener; a later one tells each difference it found).
        self.listings = 0
        self._revision = 0
        # Set once a listing reached the hub; cleared while the hub is unreachable.
        self.synced = asyncio.Event()
        # Why the cache may be behind the hub ("" while it follows the hub's events): any failure of
        # the watch sets it until a fresh listing and a new watch have caught up. /health shows it.
        self.problem = ""
        # Set once the cache holds the hub's state as of when the current watch started (the listing
        # and the events the watch replays up to that revision), and while it follows; cleared with
        # a problem. /health says healthy only while it is set.
        self.following = asyncio.Event()
        self.troubled = asyncio.Event()  # set while `problem` is
        self._catch_up_to = 0  # the hub's revision when the current watch started
        self._listeners: list[Listener] = []
        # Called after the cache was rebuilt from a fresh listing (the hub restarted, or came back).
        self._resync_listeners: list[Callable[[], None]] = []
        # Recent events (revision order) for clients that resume with ?since=, encoded: a parsed
        # event holds its tool's schemas as Struct maps, several times its encoding's size.
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=event_buffer)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._library: lib_grpc.ToolLibraryServiceStub | None = None

    # -- reading -----------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The hub's registry revision this cache reflects."""
        return self._revision

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._entries

    def tools(self) -> list[tool_pb2.Tool]:
        """Every known tool (with health as last reported), in id order."""
        return [self._entries[k].snapshot() for k in self._order.ordered()]

    def entries_after(self, after: str) -> Iterator[Entry]:
        """The entries whose tool id sorts after `after`, in order; the first costs a bisection.
        Consume it without awaiting between items (the cache may change across an await)."""
        order, entries = self._order.ordered(), self._entries
        for i in range(bisect.bisect_right(order, after), len(order)):
            yield entries[order[i]]

    def subscribe(self, listener: Listener) -> Unsubscribe:
        """Call `listener` with every event applied (and the differences a fresh listing found).

        Returns the call that unsubscribes it (safe to call twice)."""
        self._listeners.append(listener)
        return _remover(self._listeners, listener)

    def on_resync(self, callback: Callable[[], None]) -> Unsubscribe:
        """Call `callback` after each rebuild from a fresh listing; returns the call that stops it."""
        self._resync_listeners.append(callback)
        return _remover(self._resync_listeners, callback)

    def events_since(self, since: int, until: int) -> list[tool_pb2.ToolEvent] | None:
        """Events (since, until] from this cache's memory, or None when it has a gap there."""
        if until - since > len(self._recent):
            return None  # more than the buffer holds
        wanted = [(revision, raw) for revision, raw in self._recent if since < revision <= until]
        if [revision for revision, _ in wanted] != list(range(since + 1, until + 1)):
            return None  # a gap (or a hub that started its revisions over)
        return [tool_pb2.ToolEvent.FromString(raw) for _, raw in wanted]

    async def history(self, since: int, until: int, *, timeout_s: float = 10.0) -> list[tool_pb2.ToolEvent]:
        """Events (since, until] from the hub's own history (OutOfRange when compacted)."""
        events: list[tool_pb2.ToolEvent] = []
        if until <= since:
            return events
        if self._library is None:
            raise Unavailable("the edge is not connected to the hub", reason="HUB_UNAVAILABLE")
        call = self._library.WatchToolEvents(
            lib.WatchToolEventsRequest(since_revision=since), timeout=timeout_s
        )
        try:
            async for resp in call:
                if resp.event.revision > until:
                    break
                events.append(resp.event)
                if resp.event.revision >= until:
                    break
        except grpc.aio.AioRpcError as exc:
            raise hub_error(exc) from None
        finally:
            call.cancel()
        return events

    async def wait_revision(self, revision: int, timeout_s: float = 5.0) -> bool:
        """Wait until the cache reflects `revision` (read-your-writes after a registration)."""
        if self._revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot = (revision, fut)
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(slot)

    # -- following the hub ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def follow(self, library: lib_grpc.ToolLibraryServiceStub) -> AsyncIterator[RegistryCache]:
        """Follow the hub through `library` for the duration of the block."""
        self._library = library
        task = asyncio.create_task(self._follow(library), name="registry-cache-watch")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._library = None

    async def _follow(self, library: lib_grpc.ToolLibraryServiceStub) -> None:
        """List, then follow the hub's events; on any failure list again, until cancelled."""
        delay = 0.1
        while True:
            try:
                await self._resync(library)
                watch = library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=self._revision))
                started = await self._watch_started(watch)
                if started is not None:  # None: it ended before it started; iterating raises why
                    self._catch_up_to = started
                    self._check_caught_up()
                delay = 0.1
                async for resp in watch:
                    if resp is None:  # grpc hands back None for a message it could not parse
                        raise _Unreadable("an event from the hub could not be parsed")
                    self._apply(resp.event)
                    self._check_caught_up()
                self._fell_behind("the hub closed the event stream")
                continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.synced.clear()  # unreachable; any other status: reachable, but we are behind
                self._fell_behind(f"event stream failed: {exc.code().name}: {exc.details()}")
            except Exception as exc:  # anything else: the cache may be stale, so never just stop
                self._fell_behind(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _watch_started(self, watch: Any) -> int | None:
        """The hub's revision when `watch` started (its initial metadata says; docs/grpc.md), or
        None when the watch ended before it started (the hub never had it in place).

        A hub that does not say (one older than this metadata, which sends it only with its first
        event): the listing's revision.
        """
        metadata = await watch.initial_metadata()
        for key, value in metadata or ():
            if key == WATCH_REVISION_KEY:
                return int(value)
        return None if watch.done() else self._revision

    def _check_caught_up(self) -> None:
        if self._revision >= self._catch_up_to and not self.following.is_set():
            self._caught_up()

    def _caught_up(self) -> None:
        log.info("caught up with the hub at revision %d", self._revision)  # once per watch that gets here
        self.problem = ""
        self.troubled.clear()
        self.following.set()

    def _fell_behind(self, why: str) -> None:
        if why != self.problem:  # one line per distinct failure, not per retry
            log.warning("registry cache may be stale (%s); resyncing", why)
        self.problem = why
        self.following.clear()
        self.troubled.set()

    async def _resync(self, library: lib_grpc.ToolLibraryServiceStub) -> None:
        """Replace the cache with a fresh listing; emit the differences as events to listeners."""
        tools: list[tool_pb2.Tool] = []
        token, revision = "", 0
        while True:
            page = await library.ListTools(
                lib.ListToolsRequest(page_size=1000, page_token=token), wait_for_ready=True, timeout=30
            )
            if page is None:  # as for events: a listing grpc could not parse
                raise _Unreadable("a page of the hub's listing could not be parsed")
            tools.extend(page.tools)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                break
        fresh = {}
        for t in tools:
            with contextlib.suppress(MeshError):
                fresh[t.tool_id] = _entry(t)
        first = not self.synced.is_set() and not self._entries and self._revision == 0
        old = dict(self._entries)
        self._entries.clear()
        self._entries.update(fresh)
        self._order = SortedIds(fresh)
        self.listings += 1
        self._revision = revision
        self.synced.set()
        self._wake_waiters()
        if first:
            log.info("synced with the hub: %d tools at revision %d", len(fresh), revision)
            return
        for tool_id, entry in fresh.items():  # tell listeners what changed while we were away
            prev = old.get(tool_id)
            if prev is None or _seen(prev) != _seen(entry):
                kind = (
                    tool_pb2.TOOL_EVENT_TYPE_INSTALLED if prev is None else tool_pb2.TOOL_EVENT_TYPE_UPDATED
                )
                self._notify(tool_pb2.ToolEvent(revision=revision, type=kind, tool=entry.snapshot()))
        for tool_id, entry in old.items():
            if tool_id not in fresh:
                self._notify(tool_pb2.ToolEvent(revision=revision, type=REMOVED, tool=entry.snapshot()))
        for callback in list(self._resync_listeners):
            try:
                callback()
            except Exception:
                log.exception("resync listener failed")

    def _apply(self, event: tool_pb2.ToolEvent) -> None:
        if event.revision <= self._revision:
            return
        self._revision = event.revision
        tool_id = event.tool.tool_id
        if event.type == REMOVED:
            if self._entries.pop(tool_id, None) is not None:
                self._order.discard(tool_id)
        else:
            try:
                entry = _entry(event.tool)
                if tool_id not in self._entries:
                    self._order.add(tool_id)
                self._entries[tool_id] = entry
            except MeshError:
                log.warning("ignoring tool %s: its definition does not validate here", event.tool.tool_id)
        self._recent.append((event.revision, event.SerializeToString()))
        self._notify(event)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        for revision, fut in self._waiters:
            if revision <= self._revision and not fut.done():
                fut.set_result(None)

    def _notify(self, event: tool_pb2.ToolEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")


def _entry(tool: tool_pb2.Tool) -> Entry:
    definition = tool_pb2.Tool()
    definition.CopyFrom(tool)
    definition.ClearField("stats")
    definition.health = tool_pb2.HEALTH_STATUS_UNSPECIFIED
    entry = make_entry(definition)
    entry.health = tool.health
    entry.calls, entry.successes = tool.stats.usage_count, tool.stats.success_count
    return entry


def _seen(entry: Entry) -> tuple[bytes, int, int, int]:
    """What a client saw of a tool: its definition, health and usage (a resync tells changes)."""
    return entry.definition, entry.health, entry.calls, entry.successes


def _remover(callbacks: list[Any], callback: Any) -> Unsubscribe:
    def remove() -> None:
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)

    return remove


__all__ = ["Listener", "RegistryCache", "Unsubscribe", "hub_error"]

"""The edges' resource subscriptions, held on each server once per (server, URI).

An edge subscribes for its MCP clients under its open WatchServerNotifications stream, its watch
(`RelayServerRequest` `resources/subscribe` naming the stream's `watch_id`). The first watch to
hold a (server, URI) makes the server's runner subscribe to it (`ServerRunner.subscribe_resource`);
the last to let go, by `resources/unsubscribe` or by its stream ending, makes it let go
(`release_resource`); a runner subscribes again to every URI held of it whenever it reconnects
(`uris`). The server's `notifications/resources/updated` goes to the watches holding that URI only.
Bounded: at most MAX_PER_WATCH subscriptions per watch and MAX_TOTAL (server, URI) in all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from services.common.errors import FailedPrecondition, ResourceExhausted
from services.discovery.notices import Notices
from services.discovery.server_runner import ServerRunner

MAX_PER_WATCH = 10_000  # an edge holds one per (server, URI) its clients subscribed to
MAX_TOTAL = 10_000  # (server, URI) held on the servers, every watch together
UPDATED = "notifications/resources/updated"
Key = tuple[str, str]  # (tool id, URI as the server names it)


class ResourceSubscriptions:
    """Which watch holds which (server, URI), and the one subscription on the server for each."""

    def __init__(self, notices: Notices, runners: Mapping[str, ServerRunner]) -> None:
        self._notices = notices
        self._runners = runners
        self._holders: dict[Key, set[str]] = {}  # key -> the watches holding it
        self._watches: dict[str, set[Key]] = {}  # open watch -> what it holds
        self._starting: dict[Key, asyncio.Task[None]] = {}  # a subscription the server is asked for

    def open(self, watch_id: str) -> None:
        """A watch opened: it may hold subscriptions from now on. A watch id is one stream's only."""
        if watch_id in self._watches:
            raise FailedPrecondition(
                f"a WatchServerNotifications stream named {watch_id!r} is open already",
                reason="WATCH_ID_IN_USE",
                metadata={"watch_id": watch_id},
            )
        self._watches[watch_id] = set()

    def close(self, watch_id: str) -> None:
        """A watch ended: what it held is let go (on the server, where it was the last holder)."""
        for key in self._watches.pop(watch_id, set()):
            self._drop(key, watch_id)

    def uris(self, tool_id: str) -> list[str]:
        """The URIs of server `tool_id` some watch holds: a runner subscribes to them at each connection."""
        return sorted(uri for (t, uri), held in self._holders.items() if t == tool_id and held)

    async def subscribe(self, watch_id: str, tool_id: str, uri: str, timeout_s: float) -> None:
        """Hold (`tool_id`, `uri`) for `watch_id`; the first holder's subscription is made on the
        server, whose refusal (an MCPError) or absence (Unavailable) is raised and holds nothing."""
        held = self._watches.get(watch_id)
        if held is None:
            raise FailedPrecondition(
                f"no WatchServerNotifications stream named {watch_id!r} is open on this hub",
                reason="WATCH_NOT_OPEN",
                metadata={"watch_id": watch_id},
            )
        key = (tool_id, uri)
        if key in held:
            return
        if len(held) >= MAX_PER_WATCH:
            raise _exhausted(f"this watch holds {MAX_PER_WATCH} subscriptions already", MAX_PER_WATCH)
        if not self._holders.get(key):
            if len(self._holders) >= MAX_TOTAL:
                raise _exhausted(f"the hub holds {MAX_TOTAL} resource subscriptions already", MAX_TOTAL)
            task = self._starting.get(key)
            if task is None:  # concurrent first holders wait for one subscription on the server
                runner = self._runner(tool_id)
                task = asyncio.get_running_loop().create_task(runner.subscribe_resource(uri, timeout_s))
                self._starting[key] = task
                task.add_done_callback(lambda _: self._starting.pop(key, None))
            await asyncio.shield(task)
        held = self._watches.get(watch_id)
        if held is None:  # the watch ended while the server was asked
            if not self._holders.get(key):
                self._release(key)
            return
        held.add(key)
        self._holders.setdefault(key, set()).add(watch_id)

    def unsubscribe(self, watch_id: str, tool_id: str, uri: str) -> None:
        """Let (`tool_id`, `uri`) go for `watch_id` (nothing if it did not hold it)."""
        key = (tool_id, uri)
        held = self._watches.get(watch_id)
        if held is not None and key in held:
            held.discard(key)
            self._drop(key, watch_id)

    def updated(self, tool_id: str, params: dict[str, Any]) -> None:
        """Server `tool_id` said a resource changed: to the watches holding its URI (or, for a
        sub-resource of a URI held, the watches holding that)."""
        uri = params.get("uri")
        if not isinstance(uri, str):
            return
        watches = self._holders.get((tool_id, uri))
        if not watches:
            watches = set()
            for (t, held_uri), holders in self._holders.items():
                if t == tool_id and uri.startswith(held_uri):
                    watches |= holders
        if watches:
            self._notices.publish_to(watches, tool_id, UPDATED, params)

    def _drop(self, key: Key, watch_id: str) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(watch_id)
        if not holders:
            del self._holders[key]
            self._release(key)

    def _release(self, key: Key) -> None:
        runner = self._runners.get(key[0])
        if runner is not None:
            runner.release_resource(key[1])

    def _runner(self, tool_id: str) -> ServerRunner:
        runner = self._runners.get(tool_id)
        if runner is None:
            raise FailedPrecondition(
                f"no MCP server runs behind tool {tool_id!r}",
                reason="SERVER_NOT_FOUND",
                metadata={"tool_id": tool_id},
            )
        return runner


def _exhausted(message: str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"{message}: unsubscribe from some first",
        reason="TOO_MANY_SUBSCRIPTIONS",
        metadata={"max_subscriptions": str(limit)},
    )

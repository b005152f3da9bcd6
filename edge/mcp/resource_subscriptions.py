"""Resource subscriptions of the edge's MCP clients, held at the hub once per (server, URI).

A holder is a handshake-era session (`resources/subscribe`) or a 2026-07-28 `subscriptions/listen`
stream (`resourceSubscriptions`), with the URI it subscribed by: the name it sees the resource by
(`toolscore://servers/<tool_id>/<URI>` for a URI two servers list, a virtual server's own names).
The first holder of a (server, URI) subscribes at the hub (RelayServerRequest `resources/subscribe`
under the edge's open watch, edge/mcp/server_notices.py), the last to let go (unsubscribing, or its
session or stream ending) unsubscribes; a new watch (the hub's stream opened again) subscribes again
to everything held. The hub holds each (server, URI) once on the server, for every edge
(services/discovery/resource_subscriptions.py). An update reaches each holder under its own name.
Bounded: `per_holder` subscriptions per holder and `total` (server, URI) on the edge; past either,
a subscription is refused with -32029 (`TOO_MANY_SUBSCRIPTIONS`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from services.common.errors import MeshError, ResourceExhausted, Unavailable

from ._protocol import LIMIT_REACHED, ProtocolError
from .federation import EXPLICIT, ServerError, relay_request

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (tool id, URI as its server names it)
Deliver = Callable[[str], None]  # an update, to one holder, under the URI it subscribed by
# (tool_id, method, uri, watch_id, timeout_s) -> None; raises ServerError or MeshError.
SubscribeFn = Callable[[str, str, str, str, float], Any]
WATCH_WAIT_S = 5.0  # a subscription waits this long for the hub's watch to be open


def hub_subscriber(gateway: Any) -> SubscribeFn:
    """Subscriptions through the hub's RelayServerRequest, on the channel of `gateway`."""

    async def send(tool_id: str, method: str, uri: str, watch_id: str, timeout_s: float) -> None:
        await relay_request(gateway, tool_id, method, {"uri": uri}, timeout_s, watch_id)

    return send


class ResourceSubscriptions:
    """Who on this edge holds which (server, URI), under which name; held at the hub once each."""

    def __init__(self, send: SubscribeFn, per_holder: int, total: int, timeout_s: float = 30.0) -> None:
        self._send = send
        self.per_holder, self.total, self.timeout_s = per_holder, total, timeout_s
        self._holders: dict[Key, dict[object, tuple[str, Deliver]]] = {}
        self._held: dict[object, dict[str, Key]] = {}  # holder -> the URI it subscribed by -> key
        # The request at the hub under way for each key, the last one asked: each waits for the one
        # before it, so a subscribe and an unsubscribe of one key reach the hub in the order made.
        self._ops: dict[Key, tuple[str, asyncio.Task[None]]] = {}
        self._watch = ""
        self._watch_open = asyncio.Event()

    def held(self, holder: object) -> int:
        """How many subscriptions `holder` has."""
        return len(self._held.get(holder, ()))

    def watch(self, watch_id: str) -> None:
        """The hub's stream is open as `watch_id` ("": closed); a new watch holds everything again."""
        self._watch = watch_id
        if not watch_id:
            self._watch_open.clear()
            return
        self._watch_open.set()
        for key in list(self._holders):
            self._op("resources/subscribe", key, quiet=True)

    async def subscribe(
        self, holder: object, deliver: Deliver, uri: str, tool_id: str, original: str
    ) -> None:
        """`holder` subscribes to the resource it names `uri` (`original` on server `tool_id`)."""
        mine = self._held.get(holder, {})
        if uri in mine:
            return
        if len(mine) >= self.per_holder:
            raise _exhausted(f"this session holds {self.per_holder} resource subscriptions", self.per_holder)
        key = (tool_id, original)
        if not self._holders.get(key):
            if len(self._holders) >= self.total:
                raise _exhausted(f"the edge holds {self.total} resource subscriptions", self.total)
            # Concurrent first holders wait for one subscription at the hub.
            await asyncio.shield(self._op("resources/subscribe", key))
        self._holders.setdefault(key, {})[holder] = (uri, deliver)
        self._held.setdefault(holder, {})[uri] = key

    def unsubscribe(self, holder: object, uri: str) -> None:
        """`holder` lets go of the resource it subscribed to as `uri` (nothing if it had not)."""
        mine = self._held.get(holder)
        key = mine.pop(uri, None) if mine is not None else None
        if key is not None:
            self._let_go(holder, key)

    def forget(self, holder: object) -> None:
        """`holder` is gone: everything it held is let go."""
        for key in self._held.pop(holder, {}).values():
            self._let_go(holder, key)

    def updated(self, tool_id: str, params: dict[str, Any]) -> None:
        """The hub says server `tool_id`'s resource changed: to each holder, under its own name (a
        sub-resource of a URI held, to its holders: as the server names it, or in the explicit
        form where they know the URI held by it)."""
        uri = params.get("uri")
        if not isinstance(uri, str):
            return
        holders = self._holders.get((tool_id, uri))
        if holders:
            for name, deliver in list(holders.values()):
                deliver(name)
            return
        for (t, held), of in list(self._holders.items()):
            if t == tool_id and uri.startswith(held):
                for name, deliver in list(of.values()):
                    deliver(uri if name == held else f"{EXPLICIT}{tool_id}/{quote(uri, safe='')}")

    async def close(self) -> None:
        """The edge is stopping: what is under way ends (the hub lets go with the edge's watch)."""
        tasks = [task for _, task in self._ops.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _let_go(self, holder: object, key: Key) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.pop(holder, None)
        if not holders:
            del self._holders[key]
            self._op("resources/unsubscribe", key, quiet=True)

    def _op(self, method: str, key: Key, *, quiet: bool = False) -> asyncio.Task[None]:
        """`method` of `key` at the hub, after the request before it (the same one if that is it)."""
        before = self._ops.get(key)
        if before is not None and before[0] == method and not before[1].done():
            return before[1]
        task = asyncio.get_running_loop().create_task(
            self._after(before[1] if before is not None else None, method, key, quiet)
        )
        self._ops[key] = (method, task)

        def done(_: asyncio.Task[None]) -> None:
            if self._ops.get(key, ("", None))[1] is task:
                del self._ops[key]

        task.add_done_callback(done)
        return task

    async def _after(self, before: asyncio.Task[None] | None, method: str, key: Key, quiet: bool) -> None:
        if before is not None:
            await asyncio.wait([before])  # its outcome is its own waiters'
        await self._hub(method, key, quiet=quiet)

    async def _hub(self, method: str, key: Key, *, quiet: bool = False) -> None:
        try:
            async with asyncio.timeout(WATCH_WAIT_S):
                await self._watch_open.wait()
        except TimeoutError:
            if quiet:
                return
            raise Unavailable(
                "the hub's notification stream is not open: resource subscriptions cannot be held now",
                reason="HUB_UNAVAILABLE",
            ) from None
        try:
            await self._send(key[0], method, key[1], self._watch, self.timeout_s)
        except (MeshError, ServerError) as exc:
            if not quiet:
                raise
            log.info("%s of %s on %s failed: %s", method, key[1][:200], key[0], exc)


def _exhausted(message: str, limit: int) -> ProtocolError:
    err = ResourceExhausted(
        f"{message} already: unsubscribe from some first",
        reason="TOO_MANY_SUBSCRIPTIONS",
        metadata={"max_subscriptions": str(limit)},
    )
    return ProtocolError(LIMIT_REACHED, err.message, err.to_json())

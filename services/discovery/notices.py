"""What installed servers announce that MCP clients of the edge should hear: log messages, and
updates of the resources a watch subscribed to.

A runner hands each `notifications/message` its server sends to `Notices.publish` (every watcher);
a resource's `notifications/resources/updated` goes to the watches holding it (`publish_to`,
services/discovery/resource_subscriptions.py). Every `WatchServerNotifications` stream
(services/discovery/servicer.py) has a bounded queue of its own, and a watcher that does not keep
up loses what does not fit, counted, never the hub's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from toolscore.v1 import toolscore_pb2 as ts

log = logging.getLogger(__name__)
QUEUE = 1000  # notices one watcher may have unread
MAX_PARAMS_BYTES = 64 * 1024  # a bigger notice is dropped (a log line, not a payload)
FORWARDED = frozenset({"notifications/message"})


class Notices:
    """Fan-out of server notices to the watchers, each with a bounded queue."""

    def __init__(self) -> None:
        self._watchers: set[asyncio.Queue[ts.WatchServerNotificationsResponse]] = set()
        self._named: dict[str, asyncio.Queue[ts.WatchServerNotificationsResponse]] = {}  # by watch id
        self.dropped = 0  # notices a full queue or the size bound lost

    def subscribe(self, watch_id: str = "") -> asyncio.Queue[ts.WatchServerNotificationsResponse]:
        """A queue that receives every notice from now on (and, named `watch_id`, those sent to that
        watch); pass it to `unsubscribe` when done."""
        queue: asyncio.Queue[ts.WatchServerNotificationsResponse] = asyncio.Queue(maxsize=QUEUE)
        self._watchers.add(queue)
        if watch_id:
            self._named[watch_id] = queue
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ts.WatchServerNotificationsResponse]) -> None:
        self._watchers.discard(queue)
        for watch_id in [w for w, q in self._named.items() if q is queue]:
            del self._named[watch_id]

    def publish_to(self, watch_ids: Iterable[str], tool_id: str, method: str, params: dict[str, Any]) -> None:
        """One notice of server `tool_id`, to the named watches only."""
        notice = self._notice(tool_id, method, params)
        if notice is not None:
            self._put((q for w in watch_ids if (q := self._named.get(w)) is not None), notice)

    def publish(self, tool_id: str, method: str, params: dict[str, Any]) -> None:
        """One notice of server `tool_id`, to every watcher with room for it."""
        if method not in FORWARDED or not self._watchers:
            return
        notice = self._notice(tool_id, method, params)
        if notice is not None:
            self._put(list(self._watchers), notice)

    def _notice(
        self, tool_id: str, method: str, params: dict[str, Any]
    ) -> ts.WatchServerNotificationsResponse | None:
        text = json.dumps(params, separators=(",", ":"), default=str)
        if len(text) > MAX_PARAMS_BYTES:
            self.dropped += 1
            return None
        return ts.WatchServerNotificationsResponse(tool_id=tool_id, method=method, params_json=text)

    def _put(
        self,
        queues: Iterable[asyncio.Queue[ts.WatchServerNotificationsResponse]],
        notice: ts.WatchServerNotificationsResponse,
    ) -> None:
        for queue in queues:
            try:
                queue.put_nowait(notice)
            except asyncio.QueueFull:
                self.dropped += 1

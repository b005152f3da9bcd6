"""What installed servers announce that MCP clients of the edge should hear: log messages.

A runner hands each `notifications/message` its server sends to `Notices.publish`; every
`WatchServerNotifications` stream (services/discovery/servicer.py) has a bounded queue of its
own, and a watcher that does not keep up loses what does not fit, counted, never the hub's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
        self.dropped = 0  # notices a full queue or the size bound lost

    def subscribe(self) -> asyncio.Queue[ts.WatchServerNotificationsResponse]:
        """A queue that receives every notice from now on; pass it to `unsubscribe` when done."""
        queue: asyncio.Queue[ts.WatchServerNotificationsResponse] = asyncio.Queue(maxsize=QUEUE)
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ts.WatchServerNotificationsResponse]) -> None:
        self._watchers.discard(queue)

    def publish(self, tool_id: str, method: str, params: dict[str, Any]) -> None:
        """One notice of server `tool_id`, to every watcher with room for it."""
        if method not in FORWARDED or not self._watchers:
            return
        text = json.dumps(params, separators=(",", ":"), default=str)
        if len(text) > MAX_PARAMS_BYTES:
            self.dropped += 1
            return
        notice = ts.WatchServerNotificationsResponse(tool_id=tool_id, method=method, params_json=text)
        for queue in list(self._watchers):
            try:
                queue.put_nowait(notice)
            except asyncio.QueueFull:
                self.dropped += 1

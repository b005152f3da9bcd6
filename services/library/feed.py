"""The event feed: live fan-out of committed registry events.

`EventFeed` is the interface; `InProcessFeed` is the embedded default. A Redis
implementation (XADD/XREAD on one stream keyed by revision) fits the same
calls. History lives in the store; the feed only carries what happens next.
Each subscriber has a bounded queue: a subscriber that falls behind is cut off
(`overflowed`) and resumes from the store, so it never delays the others.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from toolscore.v1 import tool_pb2


class Subscription(Protocol):
    """Live events, in revision order, until closed or overflowed."""

    overflowed: bool

    async def get(self) -> tool_pb2.ToolEvent | None:
        """The next event, or None once the subscription ended (closed or overflowed)."""
        ...

    def close(self) -> None: ...


class EventFeed(Protocol):
    def publish(self, event: tool_pb2.ToolEvent) -> None: ...

    def subscribe(self) -> Subscription: ...

    def close(self) -> None: ...


class _QueueSubscription:
    def __init__(self, feed: InProcessFeed, size: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[tool_pb2.ToolEvent | None] = asyncio.Queue(size)
        self.overflowed = False
        self.closed = False

    def offer(self, event: tool_pb2.ToolEvent | None) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._end()

    def _end(self) -> None:
        self.closed = True
        self._feed._subs.discard(self)
        # Make room for the end marker so a waiting reader wakes up.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> tool_pb2.ToolEvent | None:
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()

    def close(self) -> None:
        if not self.closed:
            self._end()


class InProcessFeed:
    """Fan-out to asyncio queues in this process."""

    def __init__(self, queue_size: int = 1024) -> None:
        self._size = queue_size
        self._subs: set[_QueueSubscription] = set()

    def publish(self, event: tool_pb2.ToolEvent) -> None:
        for sub in list(self._subs):
            sub.offer(event)

    def subscribe(self) -> _QueueSubscription:
        sub = _QueueSubscription(self, self._size)
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

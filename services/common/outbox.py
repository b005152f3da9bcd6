"""One writer's queue to one peer: messages in order, one write at a time, bounded.

Every stream and socket that several tasks write to writes through an `Outbox`:
the edge's WebSockets (edge.outbox), a tool server's answers on ExecuteStream
(services.toolkit.server) and the router's calls over it (services.router.channels).

- `send` (awaited by the task whose message it is): with no write in flight it
  writes at once from the caller's own task (no queue, no task switch); else it
  leaves the message to the write in flight, which writes whatever queued up
  meanwhile before it returns, coalesced by `take` (e.g. into one message's `batch`).
- `post` (never waits): the message queues, and a flush task writes it unless a
  write is in flight.

What waits behind a write is bounded in messages and bytes; a message past the
bound is not queued but handed to `on_overflow`, the user's policy: close the
slow reader (sockets), refuse the call (the router's calls), drop the note.
A single message always fits, whatever its size: the bound is on falling behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

M = TypeVar("M")

# From the queue's head: the message to write and how many queued messages it stands for (>= 1).
Take = Callable[[list[M]], tuple[M, int]]


@dataclass(frozen=True)
class OutboxLimits:
    """How far a writer may fall behind: queued messages and queued bytes."""

    messages: int
    bytes: int


@dataclass
class OutboxStats:
    """Figures over every outbox of one endpoint (tests and metrics read them)."""

    overflows: int = 0  # messages refused by the bound (a closed socket counts once: then nothing queues)
    peak_queued_bytes: int = 0  # the most any one outbox ever held queued


def take_one(queue: list[M]) -> tuple[M, int]:
    """Write the queued messages one by one, as they came."""
    return queue[0], 1


class Outbox(Generic[M]):
    """Messages to one peer, written in order by `write`, one write at a time, within `limits`.

    `write` raising ends the write in flight (the messages left stay queued) and reaches the
    `send` that was writing; a flush task only logs it. A user whose peer is gone calls `close`.
    """

    def __init__(
        self,
        write: Callable[[M], Awaitable[None]],
        limits: OutboxLimits,
        *,
        on_overflow: Callable[[M], None],
        take: Take[M] = take_one,
        stats: OutboxStats | None = None,
        on_flushed: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._take = take
        self._on_overflow = on_overflow
        self._on_flushed = on_flushed
        self._max_messages = max(limits.messages, 1)
        self._max_bytes = max(limits.bytes, 1)
        self.stats = stats or OutboxStats()
        self._queue: list[M] = []
        self._sizes: list[int] = []  # beside _queue: what each queued message counts against the bound
        self.queued_bytes = 0
        self.writing = False
        self.closed = False
        self._flush: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued and no write in flight: a message written now comes next, in order."""
        return not self.writing and not self._queue

    @property
    def flushing(self) -> bool:
        """A flush task (started by `post`) has not finished yet."""
        return self._flush is not None

    def _admit(self, msg: M, size: int) -> bool:
        q = self._queue
        if q and (len(q) >= self._max_messages or self.queued_bytes + size > self._max_bytes):
            self.stats.overflows += 1
            self._on_overflow(msg)
            return False
        q.append(msg)
        self._sizes.append(size)
        self.queued_bytes += size
        if self.queued_bytes > self.stats.peak_queued_bytes:
            self.stats.peak_queued_bytes = self.queued_bytes
        return True

    async def send(self, msg: M, size: int = 0) -> None:
        """Write `msg` now, or leave it to the write in flight (which writes it before it returns)."""
        if self.closed:
            return
        if self.writing or self._queue:
            if self._admit(msg, size) and not self.writing:
                await self._drain()
            return
        self.writing = True  # idle: straight to the peer, nothing queued or counted (the hot path)
        try:
            await self._write(msg)
            await self._write_queued()
        finally:
            self.writing = False

    def post(self, msg: M, size: int = 0) -> None:
        """Queue `msg` without waiting; a flush task writes it unless a write is in flight."""
        if self.closed or not self._admit(msg, size):
            return
        if not self.writing and self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._flush_queue())

    def close(self) -> None:
        """The peer is gone (or cut off): drop what is queued, stop writing, queue nothing more."""
        self.closed = True
        self._queue.clear()
        self._sizes.clear()
        self.queued_bytes = 0
        if self._flush is not None:
            self._flush.cancel()

    async def aclose(self) -> None:
        """`close`, then wait for the flush task to end."""
        flush = self._flush
        self.close()
        if flush is not None:
            await asyncio.gather(flush, return_exceptions=True)

    async def _drain(self) -> None:
        self.writing = True
        try:
            await self._write_queued()
        finally:
            self.writing = False

    async def _write_queued(self) -> None:
        q, sizes = self._queue, self._sizes
        while q and not self.closed:
            msg, n = self._take(q)
            if n == 1:
                self.queued_bytes -= sizes[0]
            else:
                self.queued_bytes -= sum(sizes[:n])
            del q[:n], sizes[:n]
            await self._write(msg)

    async def _flush_queue(self) -> None:
        try:
            if not self.writing:  # else that write takes what was posted
                await self._drain()
        except Exception as exc:  # the writer's own errors are its business; a flush only notes them
            log.debug("flushing an outbox failed: %s", exc)
        finally:
            self._flush = None
            if self._on_flushed is not None:
                self._on_flushed()

"""One bounded writer per WebSocket client, shared by every socket the edge serves.

`push` never waits, so no handler, fan-out or request task ever blocks on a
client: a message goes straight to the socket when nothing is queued and the
socket's buffer has room, else into a queue that one writer task drains in
order. The queue is bounded in messages and in bytes; a client that falls
further behind is too slow to serve: its queue is dropped and it is closed
with 1013 ("try again later"), within a deadline (else the connection is cut),
so whatever it does, it holds at most one bound's worth of the edge's memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

SLOW_READER_CODE = 1013  # "Try Again Later"
_CLOSE_TIMEOUT_S = 5.0
# Write straight to the socket only while its buffer is below this: beyond, the queue (and its bound) applies.
_DIRECT_WRITE_LIMIT = 64 * 1024


def text_frame(text: str) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


_TRANSPORT_METHODS = ("write", "get_write_buffer_size", "is_closing", "abort")


def _writable(transport: object) -> TypeGuard[asyncio.WriteTransport]:
    return all(callable(getattr(transport, m, None)) for m in _TRANSPORT_METHODS)


@dataclass(frozen=True)
class OutboxLimits:
    """How far one client may fall behind: queued messages and queued bytes (`[edge]` config)."""

    messages: int
    bytes: int


@dataclass
class OutboxStats:
    """Figures over every outbox of one endpoint (tests and metrics read them)."""

    slow_closed: int = 0
    peak_queued_bytes: int = 0  # the most any one outbox ever held queued


class Outbox:
    """Messages to one WebSocket client, in order, within `limits`.

    `mark` tags a message (the events socket: the revision it carries); `written` is the highest
    mark written to the socket so far. `on_slow` runs once when the client overflows and returns
    the close reason (it may name where to resume from).
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        limits: OutboxLimits,
        *,
        transport: asyncio.BaseTransport | None = None,
        stats: OutboxStats | None = None,
        on_slow: Callable[[], str] | None = None,
    ) -> None:
        self.ws = ws
        # Duck-typed: uvloop's transports have the methods without subclassing asyncio's classes.
        self._transport = transport if _writable(transport) else None
        self._max_messages = max(limits.messages, 1)
        self._max_bytes = max(limits.bytes, 1)
        self.stats = stats or OutboxStats()
        self._on_slow = on_slow
        self._queue: collections.deque[tuple[str, int | None]] = collections.deque()
        self.queued_bytes = 0
        self.written = 0
        self.overflowed = False
        self._busy = False
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._done = asyncio.Event()  # the connection's handler finished

    def start(self) -> None:
        """Start the writer task (before the first push that may queue)."""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def push(self, text: str, *, mark: int | None = None, frame: bytes | None = None) -> None:
        """Send or queue one text message; on overflow close the client (never wait for it).

        `frame` is `text` already framed (an event framed once for every subscriber); with nothing
        queued and room in the socket's buffer it is written at once, without a task switch.
        """
        if self.overflowed:
            return
        t = self._transport
        if (
            t is not None
            and not self._queue
            and not self._busy
            and not self.ws.closed
            and not t.is_closing()
            and t.get_write_buffer_size() < _DIRECT_WRITE_LIMIT
        ):
            t.write(text_frame(text) if frame is None else frame)
            if mark is not None and mark > self.written:
                self.written = mark
            return
        size = len(text)
        if self._queue and (
            len(self._queue) >= self._max_messages or self.queued_bytes + size > self._max_bytes
        ):
            self.overflow()
            return
        self._queue.append((text, mark))
        self.queued_bytes += size
        if self.queued_bytes > self.stats.peak_queued_bytes:
            self.stats.peak_queued_bytes = self.queued_bytes
        self._wake.set()

    async def stop(self) -> None:
        """The connection's handler is done: stop writing; a close for a slow reader may finish."""
        self._done.set()
        if self._writer is not None:
            self._writer.cancel()
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def overflow(self) -> None:
        """The client is too slow: drop what is queued for it and close it with 1013."""
        if self.overflowed:
            return
        self.overflowed = True
        self._queue.clear()
        self.queued_bytes = 0
        self.stats.slow_closed += 1
        if self._writer is not None:
            self._writer.cancel()
        reason = self._on_slow() if self._on_slow is not None else "client too slow: it did not read"
        self._closer = asyncio.get_running_loop().create_task(self._close(reason))

    async def _close(self, reason: str) -> None:
        """Send the close frame, then let the handler read on until the client answers it.

        Not `ws.close()`: called beside a handler waiting in `receive`, it cuts the transport at once,
        and with the client's unread requests still in the socket that is a reset, which discards the
        close frame (and everything queued before it) on the client's side.
        """
        payload = struct.pack("!H", SLOW_READER_CODE) + reason.encode()[:120]  # a control frame: < 126
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                if self._transport is not None and not self._transport.is_closing():
                    self._transport.write(struct.pack("!BB", 0x88, len(payload)) + payload)
                elif not self.ws.closed:
                    await self.ws.send_frame(payload, WSMsgType.CLOSE)
                await self._done.wait()
        except TimeoutError:
            # It does not even read its close frame: drop what is buffered for it and cut it off.
            if self._transport is not None:
                self._transport.abort()
        except Exception as exc:  # the connection died meanwhile: nothing left to close
            log.debug("closing a slow reader: %s", exc)

    async def _write_loop(self) -> None:
        queue, ws = self._queue, self.ws
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._busy = True
                try:
                    while queue:
                        text, mark = queue.popleft()
                        self.queued_bytes -= len(text)
                        await ws.send_str(text)
                        if mark is not None and mark > self.written:
                            self.written = mark
                finally:
                    self._busy = False

"""One bounded writer per WebSocket client, shared by every socket the edge serves.

`push` never waits, so no handler, fan-out or request task ever blocks on a
client: a message goes straight to the socket when nothing is queued and the
socket's buffer has room, else into the client's outbox (services.common.streams),
drained in order by a flush task. The outbox is bounded in messages and in bytes;
its overflow policy here: a client that falls further behind is too slow to
serve, so its queue is dropped and it is closed with 1013 ("try again later"),
within a deadline (else the connection is cut), so whatever it does, it holds at
most one bound's worth of the edge's memory.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TypeGuard

from aiohttp import WSMsgType, web

from services.common import streams
from services.common.streams import OutboxLimits, OutboxStats

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


# A queued message: its text, and its mark (see `Outbox`).
_Message = tuple[str, int | None]


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
        self._queue: streams.Outbox[_Message] = streams.Outbox(
            self._send, limits, on_overflow=self._cut, stats=stats
        )
        self.stats = self._queue.stats
        self._on_slow = on_slow
        self.written = 0
        self.overflowed = False
        self._closer: asyncio.Task[None] | None = None
        self._done = asyncio.Event()  # the connection's handler finished

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

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
            and self._queue.idle
            and not self.ws.closed
            and not t.is_closing()
            and t.get_write_buffer_size() < _DIRECT_WRITE_LIMIT
        ):
            t.write(text_frame(text) if frame is None else frame)
            if mark is not None and mark > self.written:
                self.written = mark
            return
        self._queue.post((text, mark), len(text))

    async def stop(self) -> None:
        """The connection's handler is done: stop writing; a close for a slow reader may finish."""
        self._done.set()
        await self._queue.aclose()
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)

    def overflow(self) -> None:
        """The client is too slow: drop what is queued for it and close it with 1013."""
        if not self.overflowed:
            self.stats.overflows += 1
            self._cut(None)

    def _cut(self, _refused: _Message | None) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        self._queue.close()
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

    async def _send(self, message: _Message) -> None:
        text, mark = message
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):  # the connection is gone: nothing more is written
            self._queue.close()
            return
        if mark is not None and mark > self.written:
            self.written = mark


__all__ = ["SLOW_READER_CODE", "Outbox", "OutboxLimits", "OutboxStats", "text_frame"]

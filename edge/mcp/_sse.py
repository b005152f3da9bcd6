"""Server-sent events for Streamable HTTP: frames, and one request's resumable event stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ._protocol import encode

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
KEEPALIVE = b": keepalive\n\n"


def frame(msg: dict[str, Any], event_id: str | int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: message\ndata: {encode(msg)}\n\n".encode()


class SharedBytes:
    """Bytes the notifications of several streams may hold together (one session's resumable ones)."""

    __slots__ = ("left",)

    def __init__(self, total: int) -> None:
        self.left = total


class Exchange:
    """The events of one request answered over SSE: its notifications, then its response.

    A resumable exchange (handshake-era session, protocol >= 2025-11-25) gives
    its events ids `<number>-<n>` and keeps them, so a client whose connection
    dropped can come back with `Last-Event-ID` and get the rest: the call goes
    on without it. Followers wait on `changed`, which is replaced at each event.
    """

    def __init__(self, number: int, limit: int, max_bytes: int, shared: SharedBytes | None = None) -> None:
        self.number = number  # 0: not resumable (no ids, nothing kept beyond delivery)
        self.events: list[bytes] = []
        self.offset = 0  # events already delivered and dropped (non-resumable streams only)
        self.final = False
        self.changed = asyncio.Event()
        self.kept_bytes = 0  # of `events`
        self.dropped = 0  # notifications dropped past the bounds
        self._limit = limit
        self._max_bytes = max_bytes
        self._shared = shared
        # Where each kept event also goes (n, frame, final): with sessions on Redis, the stream
        # other edges resume from (edge/mcp/redis_sessions.py); None on a single edge.
        self.mirror: Callable[[int, bytes, bool], None] | None = None

    @property
    def resumable(self) -> bool:
        return self.number > 0

    def add(self, msg: dict[str, Any], *, final: bool = False) -> None:
        """Keep one event for the client; past the bounds (count, bytes) notifications are dropped.

        Progress and list_changed are level signals: dropping one loses nothing the next one does not
        carry. The final response is always kept, so a reader however slow holds at most the bounds.
        """
        if self.final:
            return
        n = self.offset + len(self.events) + 1
        data = frame(msg, f"{self.number}-{n}" if self.resumable else None)
        if (
            not final
            and self.events
            and (
                len(self.events) >= self._limit
                or self.kept_bytes + len(data) > self._max_bytes
                or (self._shared is not None and len(data) > self._shared.left)
            )
        ):
            self.dropped += 1
            return
        self.events.append(data)
        self.kept_bytes += len(data)
        if self._shared is not None:
            self._shared.left -= len(data)
        self.final = final
        if self.mirror is not None:
            self.mirror(n, data, final)
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def release(self) -> None:
        """The stream is forgotten: what it kept no longer counts against its shared bound."""
        if self._shared is not None:
            self._shared.left += self.kept_bytes
            self._shared = None

    def priming(self) -> bytes:
        """An event with an id and no data: lets the client resume even before any real event."""
        return f"id: {self.number}-0\ndata: \n\n".encode()

    async def follow(
        self, resp: web.StreamResponse, after: int, keepalive_s: float, write_timeout_s: float
    ) -> None:
        """Write events after `after`, then each new one, until the response has been written.

        A write the client does not take within `write_timeout_s` raises WriteStalled.
        """
        sent = after
        while True:
            while sent < self.offset + len(self.events):
                await write_within(resp, self.events[sent - self.offset], write_timeout_s)
                sent += 1
            if not self.resumable:  # nobody can come back for them: let them go
                delivered = self.events[: sent - self.offset]
                self.kept_bytes -= sum(len(e) for e in delivered)
                del self.events[: sent - self.offset]
                self.offset = sent
            if self.final:
                return
            changed = self.changed
            try:
                async with asyncio.timeout(keepalive_s):
                    await changed.wait()
            except TimeoutError:
                await write_within(resp, KEEPALIVE, write_timeout_s)


class WriteStalled(ConnectionResetError):
    """The client took nothing of a write within the write timeout: it is to be cut off."""


async def write_within(resp: web.StreamResponse, data: bytes, timeout_s: float) -> None:
    """`resp.write(data)`, which waits while the client does not read, for at most `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            await resp.write(data)
    except TimeoutError:
        raise WriteStalled(f"the client read nothing for {timeout_s:g} s") from None


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """`Last-Event-ID` as (stream, n): `"7"`: the standalone stream's event 7; `"3-2"`: exchange 3's 2nd."""
    if value is None:
        return None
    stream, _, n = value.partition("-")
    try:
        return (int(stream), int(n)) if n else (0, int(stream))
    except ValueError:
        return None

"""What one client address may hold of the edge over plain HTTP: requests in flight, unread bytes.

A WebSocket client is bounded by its outbox (edge.outbox); a plain HTTP client
had no bound at all: every request ran, and every answer was handed whole to
the transport, which keeps what the client does not read. Forty POSTs of a
call answering 12 MB each, never read, held 1 GB of the edge until the client
closed. Here, per client address (`request.remote`):

- at most `http_in_flight_per_client` requests run at once, counted from their
  arrival until their answer is written out; one more is refused at once (429
  `TOO_MANY_IN_FLIGHT`), never queued;
- the answers being written to it hold at most `http_unread_bytes_per_client`
  bytes in all (one answer is always accepted, whatever its size); an answer
  past it is replaced by a short 429 `TOO_MANY_UNREAD_BYTES`, and its bytes are
  dropped at once;
- an answer is handed to the transport a chunk at a time, each within
  `http_write_timeout_s`: a reader that stalls past it has its connection cut,
  which frees the answer.

So whatever a client sends, the answers it has not read hold at most its byte
bound (or one answer) of the edge, and one that stops reading holds that for at
most the write timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.common.config import EdgeConfig
from services.common.errors import ResourceExhausted

log = logging.getLogger(__name__)

# Answers up to this size go out in one write (the transport's own buffer takes them); larger ones a
# chunk at a time, so the transport never holds more than about two chunks of a slow reader's answer.
CHUNK = 64 * 1024
# asyncio's and uvloop's transports pause their writer above 64 KiB buffered: an answer this small
# (with its headers) written to an empty buffer never makes the write wait.
_NEVER_PAUSES = 32 * 1024


class TooManyRequests(ResourceExhausted):
    """A client address past one of its HTTP bounds (429: edge.errors_http's table)."""

    reason = "TOO_MANY_IN_FLIGHT"


Refusal = Callable[[ResourceExhausted], web.Response]


@dataclass
class HttpBoundStats:
    """Figures the edge keeps about its HTTP bounds (tests and metrics read them)."""

    refused_in_flight: int = 0
    refused_unread: int = 0
    slow_cut: int = 0  # connections cut for not reading within the write timeout
    peak_unread_bytes: int = 0  # the most any one client address ever held
    first_cut: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first slow_cut


class HttpBounds:
    """Per-client-address admission and bounded writing of plain HTTP answers."""

    def __init__(self, in_flight: int, unread_bytes: int, write_timeout_s: float) -> None:
        self.max_in_flight = max(in_flight, 1)
        self.max_unread = max(unread_bytes, 1)
        self.write_timeout_s = write_timeout_s
        self.in_flight: dict[str, int] = {}
        self.unread: dict[str, int] = {}
        self.stats = HttpBoundStats()

    @classmethod
    def from_config(cls, edge: EdgeConfig) -> HttpBounds:
        return cls(
            edge.http_in_flight_per_client, edge.http_unread_bytes_per_client, edge.http_write_timeout_s
        )

    def admit(self, client: str) -> None:
        """Count one more request of `client`, or raise TooManyRequests (nothing is counted then)."""
        n = self.in_flight.get(client, 0)
        if n >= self.max_in_flight:
            self.stats.refused_in_flight += 1
            raise TooManyRequests(
                f"{self.max_in_flight} requests from this client address are already in flight; "
                "read their answers and retry",
                metadata={"max_in_flight": str(self.max_in_flight)},
            )
        self.in_flight[client] = n + 1

    def release(self, client: str) -> None:
        """One request of `client` is answered (written out, refused or cut)."""
        n = self.in_flight.pop(client, 1) - 1
        if n > 0:
            self.in_flight[client] = n

    async def send(
        self, request: web.Request, resp: web.StreamResponse, client: str, refuse: Refusal
    ) -> web.StreamResponse:
        """Write `resp` out within the bounds; what aiohttp then writes for it is nothing.

        `refuse` renders the short answer that replaces one past the byte bound (the route's error shape).

        Answers a handler already streamed itself (WebSockets, SSE) are left alone.
        """
        if resp.prepared:
            return resp
        body = resp.body if isinstance(resp, web.Response) else None
        data = body if isinstance(body, bytes | bytearray) else None
        size = len(data) if data is not None else 0
        held = self.unread.get(client, 0)
        if held and held + size > self.max_unread:
            self.stats.refused_unread += 1
            if isinstance(resp, web.Response):
                resp.body = None  # its bytes go now, whoever still refers to the answer
            data = body = None
            resp = refuse(_too_many_unread(self.max_unread))
            size = len(resp.body) if isinstance(resp.body, bytes) else 0
        self.unread[client] = held = held + size
        if held > self.stats.peak_unread_bytes:
            self.stats.peak_unread_bytes = held
        try:
            return await self._write(request, resp, size, data if size > CHUNK else None)
        finally:
            left = self.unread.pop(client, size) - size
            if left > 0:
                self.unread[client] = left

    async def _write(
        self, request: web.Request, resp: web.StreamResponse, size: int, big: bytes | bytearray | None
    ) -> web.StreamResponse:
        out = resp
        try:
            if big is None:
                t = request.transport
                if t is not None and t.get_write_buffer_size() == 0 and size <= _NEVER_PAUSES:
                    # Below the transport's high-water mark from empty: this write cannot wait, so
                    # the common case pays for no timer.
                    await resp.prepare(request)
                    await resp.write_eof()
                    return resp
                async with asyncio.timeout(self.write_timeout_s):
                    await resp.prepare(request)
                    await resp.write_eof()
                return resp
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=resp.headers)
            out.content_length = len(big)
            view = memoryview(big)
            async with asyncio.timeout(self.write_timeout_s):
                await out.prepare(request)
            for start in range(0, len(big), CHUNK):
                async with asyncio.timeout(self.write_timeout_s):
                    await out.write(view[start : start + CHUNK])
            async with asyncio.timeout(self.write_timeout_s):
                await out.write_eof()
        except TimeoutError:
            # It does not read: drop what the transport holds for it, and with it the answer.
            self.stats.slow_cut += 1
            self.stats.first_cut.set()
            log.info("cut a client that read nothing for %.0f s (%s)", self.write_timeout_s, request.remote)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # gone meanwhile: aiohttp notices the same when it finishes the request
        return out


def _too_many_unread(limit: int) -> TooManyRequests:
    return TooManyRequests(
        f"this client address has not read answers the edge still holds for it (at most {limit} bytes "
        "are kept); read them and retry",
        reason="TOO_MANY_UNREAD_BYTES",
        metadata={"max_unread_bytes": str(limit)},
    )

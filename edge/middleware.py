"""The edge's one middleware: per-client HTTP bounds, the browser guard, the caller's authority,
the one error mapping, metrics, and the bounded write of the answer.

    middleware.mount(app, cfg.edge)   # app[ORIGIN], app[HTTP_BOUNDS]; needs app[AUTH] and app[METRICS]

Every error leaves through here and is answered by edge.errors_http (the one mapping of the
mesh's errors to HTTP status and JSON bodies); the MCP endpoint answers its own in JSON-RPC.
Every request passes its checks here, in one file and in this order: its client's address (behind
a trusted proxy, the one that proxy names: edge.client_address), its client's bounds, the
browser guard (edge.origin, asked only for an Origin/Host pair it has not allowed before), the
caller's authority for the calls it makes, the handler, and the bounded write of its answer.

What one client address may hold of the edge over plain HTTP (`HttpBounds`): requests in flight,
unread bytes. A WebSocket client is bounded by its outbox (edge.outbox); a plain HTTP client
had no bound at all: every request ran, and every answer was handed whole to
the transport, which keeps what the client does not read. Forty POSTs of a
call answering 12 MB each, never read, held 1 GB of the edge until the client
closed. Here, per client address (`request.remote`; behind a proxy listed in
`[edge] trusted_proxies`, the client it names):

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
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from edge import errors_http
from edge import mcp as edge_mcp
from edge.auth import AUTH
from edge.client_address import TrustedProxies
from edge.metrics import METRICS
from edge.origin import OriginGuard
from services.common import authority
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
    """Per-client-address admission and bounded writing of plain HTTP answers.

    `proxies`: the trusted proxies whose X-Forwarded-For names the client address (None: every
    client is its TCP peer; edge.client_address).
    """

    def __init__(
        self,
        in_flight: int,
        unread_bytes: int,
        write_timeout_s: float,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.max_in_flight = max(in_flight, 1)
        self.max_unread = max(unread_bytes, 1)
        self.write_timeout_s = write_timeout_s
        self.proxies = proxies
        self.in_flight: dict[str, int] = {}
        self.unread: dict[str, int] = {}
        self.stats = HttpBoundStats()

    @classmethod
    def from_config(cls, edge: EdgeConfig) -> HttpBounds:
        return cls(
            edge.http_in_flight_per_client,
            edge.http_unread_bytes_per_client,
            edge.http_write_timeout_s,
            TrustedProxies.from_config(edge),
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


# Exact paths whose handlers apply the guard themselves, to answer with a JSON-RPC error (the MCP
# transports). Exact: other routes under /mcp (search, install) go through the middleware's check.
_OWN_GUARDS = frozenset({"/mcp", "/ws/mcp"})
# The MCP transports of virtual servers (`/mcp/servers/<name>`, `/ws/mcp/servers/<name>`): theirs too.
_VIRTUAL = ("/mcp/servers/", "/ws/mcp/servers/")
ORIGIN = web.AppKey("origin", OriginGuard)
HTTP_BOUNDS = web.AppKey("http_bounds", HttpBounds)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mount(app: web.Application, edge: EdgeConfig) -> None:
    """Guard and bound every request of `app` (which must not be frozen yet)."""
    app[ORIGIN] = OriginGuard.from_config(edge)
    app[HTTP_BOUNDS] = HttpBounds.from_config(edge)
    app.middlewares.append(_edge_middleware)


def _streams(request: web.Request) -> bool:
    """A request that opens a long-lived stream bounded on its own (WebSockets, MCP's GET stream)."""
    if request.method != "GET":
        return False
    if request.path == "/mcp" or request.path.startswith(_VIRTUAL[0]):
        return True
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _own_guard(path: str) -> bool:
    return path in _OWN_GUARDS or path.startswith(_VIRTUAL)


@web.middleware
async def _edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bounds per client address, the browser guard, one error mapping, metrics, and the write."""
    bounds = request.app[HTTP_BOUNDS]
    if bounds.proxies is not None:
        # Behind a trusted proxy: from here on (bounds, MCP's per-client caps, WebSocket sessions,
        # logs) request.remote is the client it names.
        request = bounds.proxies.resolve(request)
    if _streams(request):
        return await _handle(request, handler)
    client = request.remote or ""
    # The MCP transport answers in JSON-RPC; every other route in the one REST error shape.
    refuse = edge_mcp.refusal if _own_guard(request.path) else errors_http.error_response
    try:
        bounds.admit(client)
    except ResourceExhausted as err:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe_http(request.method, route, 429, None)
        return refuse(err)
    try:
        return await bounds.send(request, await _handle(request, handler), client, refuse)
    finally:
        bounds.release(client)


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    # Calls made for this request (a WebSocket's, for its whole life) act with its rights; the
    # router asks only for an admin-only capability.
    acting = authority.act_as(functools.partial(request.app[AUTH].allows, request.headers))
    try:
        headers = request.headers
        if not _own_guard(request.path):
            guard = request.app[ORIGIN]
            if (headers.get("Origin"), headers.get("Host")) not in guard.passed:
                guard.check(headers)
        resp = await handler(request)
    except Exception as exc:
        resp = errors_http.response_for(exc, request)
    finally:
        authority.reset(acting)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    ws = isinstance(resp, web.WebSocketResponse)
    request.app[METRICS].observe_http(
        request.method, route, resp.status, None if ws else time.perf_counter() - start
    )
    return resp

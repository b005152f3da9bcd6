"""The events WebSocket `/api/v1/events/tools`: registry events fanned out to subscribers.

Each event is serialized to JSON once and the same string is queued for every
subscriber that wants it. Each subscriber has its own bounded queue and its own
writer task, so a slow one never delays the others: when its queue overflows it
is closed with 1013 and a reason naming the revision to resume from.

A client reconnecting with `?since=<revision>` gets every event it missed: from
the gateway's ring buffer when it reaches back far enough, else from the hub's
own history (a dedicated WatchToolEvents), else a `resync_required` message.
Live events that arrive meanwhile are held and sent after the backlog, in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from typing import Any

from aiohttp import WSMsgType, web
from toolscore.v1 import tool_pb2

from edge import views
from edge.gateway import HubGateway
from edge.metrics import EdgeMetrics
from edge.state import CONFIG, EVENTS, METRICS, WEBSOCKETS
from services.common import jsonvalue
from services.common.errors import MeshError

log = logging.getLogger(__name__)

ROUTE = "/api/v1/events/tools"
EVENT_TYPES = frozenset(views.EVENT_NAMES.values())
SLOW_CONSUMER_CODE = 1013  # "Try Again Later": reconnect with ?since=<revision>
_CLOSE_TIMEOUT_S = 5.0
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


class Subscriber:
    """One events client: filters, a bounded queue of JSON strings, and its writer."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        limit: int,
        metrics: EdgeMetrics,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        # Set when frames may be written straight to the socket (see `send`).
        self._transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self._busy = False
        self.events: frozenset[str] = frozenset()  # empty: every type
        self.tool_ids: frozenset[str] = frozenset()  # empty: every tool
        self.revision = 0  # the last event revision queued
        self.held: list[tuple[int, str]] | None = None  # live events held while a backlog is fetched
        self.overflowed = False
        self._limit = limit
        self._metrics = metrics
        # (text, revision of the event it carries, or None for replies like welcome and pong)
        self._queue: collections.deque[tuple[str, int | None]] = collections.deque()
        self.sent = 0  # the last event revision written to the socket: where a resume starts
        self.closer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def wants(self, event_type: str, tool_id: str) -> bool:
        return (not self.events or event_type in self.events) and (
            not self.tool_ids or tool_id in self.tool_ids
        )

    def send(self, text: str, *, revision: int | None = None, frame: bytes | None = None) -> None:
        """Send or queue one message; on overflow, close the client (never wait for it).

        With nothing queued and room in the socket's buffer, an event's frame (encoded once for
        every subscriber) is written at once: no task switch per subscriber on the fan-out path.
        """
        if self.overflowed:
            return
        t = self._transport
        if (
            frame is not None
            and t is not None
            and not self._queue
            and not self._busy
            and not self.ws.closed
            and not t.is_closing()
            and t.get_write_buffer_size() < _DIRECT_WRITE_LIMIT
        ):
            t.write(frame)
            self._metrics.events_sent += 1
            self.sent = max(self.sent, revision or 0)
            return
        if len(self._queue) >= self._limit:
            self._overflow()
            return
        self._queue.append((text, revision))
        self._wake.set()

    def event(self, revision: int, text: str, frame: bytes | None = None) -> None:
        if self.held is not None:
            if len(self.held) >= self._limit:
                self._overflow()
                return
            self.held.append((revision, text))
            return
        # Not deduplicated here: after a hub restart the gateway reports several changes at one revision.
        self.revision = max(self.revision, revision)
        self.send(text, revision=revision, frame=frame)

    def release_held(self) -> None:
        """Send the live events held during a backlog, minus those the backlog already covered."""
        held, self.held = self.held or [], None
        covered = self.revision
        for revision, text in held:
            if revision > covered:
                self.event(revision, text)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _overflow(self) -> None:
        self.overflowed = True
        self._queue.clear()
        self._metrics.slow_consumers_closed += 1
        if self.writer is not None:
            self.writer.cancel()
        reason = f"subscriber too slow ({self._limit} messages queued); reconnect with ?since={self.sent}"
        log.info("closing a slow events subscriber (last sent revision %d)", self.sent)
        self.closer = asyncio.get_running_loop().create_task(self._close(SLOW_CONSUMER_CODE, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode()[:120], drain=False)

    async def write_loop(self) -> None:
        """Send queued messages in order until the connection ends."""
        queue, ws, metrics = self._queue, self.ws, self._metrics
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            while queue:
                text, revision = queue.popleft()
                await ws.send_str(text)
                if revision is not None:
                    metrics.events_sent += 1
                    self.sent = max(self.sent, revision)
            self._busy = False


class EventHub:
    """Fans the gateway's events out to every subscriber."""

    def __init__(self, gateway: HubGateway, metrics: EdgeMetrics, queue_limit: int) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.queue_limit = max(queue_limit, 1)
        self.subscribers: set[Subscriber] = set()

    def attach(self) -> None:
        self.gateway.listeners.append(self._on_event)

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.gateway.listeners.remove(self._on_event)

    def _on_event(self, event: tool_pb2.ToolEvent) -> None:
        name = views.EVENT_NAMES.get(event.type, "tool_updated")
        tool_id = event.tool.tool_id
        text: str | None = None
        frame = b""
        for sub in self.subscribers:
            if sub.wants(name, tool_id):
                if text is None:  # serialized and framed once, shared by every subscriber
                    text = views.dumps(views.event_message(event))
                    frame = text_frame(text)
                sub.event(event.revision, text, frame)

    def tools_message(self, kind: str, **extra: Any) -> str:
        tools = self.gateway.tools()
        return views.dumps(
            {
                "type": kind,
                "tools": [views.brief_tool(t) for t in tools],
                "total_count": len(tools),
                "timestamp": views.now_iso(),
                "revision": self.gateway.revision,
                **extra,
            }
        )

    def join(self, sub: Subscriber, since: int | None) -> None:
        """Welcome the subscriber and queue its backlog. No await: no event can slip in between."""
        current = self.gateway.revision
        sub.send(self.tools_message("welcome", since=since))
        sub.revision = current if since is None else since
        self.subscribers.add(sub)
        if since is None or since == current:
            return
        if since > current:
            sub.send(
                _resync(
                    current,
                    "REVISION_AHEAD",
                    f"revision {since} is ahead of the registry ({current}); the welcome list is current",
                )
            )
            sub.revision = current
            return
        backlog = self._from_buffer(since, current)
        if backlog is not None:
            for ev in backlog:
                self._replay(sub, ev)
            return
        sub.held = []
        sub.spawn(self._backlog_from_hub(sub, since, current))

    def _from_buffer(self, since: int, until: int) -> list[tool_pb2.ToolEvent] | None:
        """Events (since, until] from the ring buffer, or None when it has a gap there."""
        wanted = [ev for ev in self.gateway.recent if since < ev.revision <= until]
        expected = since + 1
        for ev in wanted:
            if ev.revision != expected:
                return None
            expected += 1
        return wanted if expected == until + 1 else None

    def _replay(self, sub: Subscriber, event: tool_pb2.ToolEvent) -> None:
        if sub.wants(views.EVENT_NAMES.get(event.type, "tool_updated"), event.tool.tool_id):
            msg = views.event_message(event)
            msg["replayed"] = True
            sub.event(event.revision, views.dumps(msg))
        else:
            sub.revision = max(sub.revision, event.revision)

    async def _backlog_from_hub(self, sub: Subscriber, since: int, until: int) -> None:
        try:
            events = await self.gateway.history(since, until)
        except MeshError as err:
            log.info("events backlog from %d unavailable: %s", since, err.reason)
            sub.send(
                _resync(
                    until,
                    err.reason,
                    f"events after revision {since} are no longer available "
                    f"({err.message}); the welcome list is current",
                )
            )
            sub.revision = max(sub.revision, until)
        else:
            held, sub.held = sub.held, None
            for ev in events:
                self._replay(sub, ev)
            sub.held = held
        sub.release_held()


def _resync(revision: int, reason: str, message: str) -> str:
    return views.dumps(
        {
            "type": "resync_required",
            "reason": reason,
            "message": message,
            "revision": revision,
            "timestamp": views.now_iso(),
        }
    )


def _error(message: str, **extra: Any) -> str:
    return views.dumps({"type": "error", "message": message, "timestamp": views.now_iso(), **extra})


def _names(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return frozenset(value)


def _filters(sub: Subscriber, events: Any, tool_ids: Any) -> None:
    names = _names(events, "events")
    unknown = names - EVENT_TYPES
    if unknown:
        raise ValueError(f"unknown event type(s) {sorted(unknown)}; known: {sorted(EVENT_TYPES)}")
    sub.events, sub.tool_ids = names, _names(tool_ids, "tool_ids")


def _handle(hub: EventHub, sub: Subscriber, data: str) -> None:
    try:
        msg = jsonvalue.loads(data)
    except ValueError as exc:
        sub.send(_error(f"Invalid JSON: {exc}" if isinstance(exc, jsonvalue.JsonTooDeep) else "Invalid JSON"))
        return
    if not isinstance(msg, dict):
        sub.send(_error("a message must be a JSON object with a 'type'"))
        return
    kind = msg.get("type")
    if kind == "ping":
        sub.send(
            views.dumps({"type": "pong", "timestamp": views.now_iso(), "revision": hub.gateway.revision})
        )
    elif kind == "get_tools":
        sub.send(hub.tools_message("tools_list"))
    elif kind == "subscribe":
        try:
            _filters(sub, msg.get("events"), msg.get("tool_ids"))
        except ValueError as exc:
            sub.send(_error(str(exc), request_type="subscribe"))
            return
        sub.send(
            views.dumps(
                {
                    "type": "subscribed",
                    "events": sorted(sub.events) or sorted(EVENT_TYPES),
                    "tool_ids": sorted(sub.tool_ids),
                    "revision": hub.gateway.revision,
                    "timestamp": views.now_iso(),
                }
            )
        )
    else:
        sub.send(
            _error(
                f"unknown message type {kind!r}; expected ping, get_tools or subscribe",
                request_type=kind if isinstance(kind, str) else None,
            )
        )


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ValueError("since must be a non-negative integer revision")
    return int(raw)


async def events_socket(request: web.Request) -> web.WebSocketResponse:
    """GET /api/v1/events/tools (WebSocket)."""
    app = request.app
    hub, metrics = app[EVENTS], app[METRICS]
    ws = web.WebSocketResponse(compress=False, max_msg_size=app[CONFIG].edge.max_frame_bytes, heartbeat=30.0)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)
    metrics.ws_opened(ROUTE)
    sub = Subscriber(ws, hub.queue_limit, metrics, request.transport)
    sub.writer = asyncio.get_running_loop().create_task(sub.write_loop())
    try:
        try:
            since = _since(request)
            _filters(sub, request.query.get("events"), request.query.get("tool_ids"))
        except ValueError as exc:
            sub.send(_error(str(exc)))
            since = None
        hub.join(sub, since)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                _handle(hub, sub, msg.data)
            elif msg.type == WSMsgType.BINARY:
                sub.send(_error("binary frames are not supported; send JSON text"))
    finally:
        hub.subscribers.discard(sub)
        app[WEBSOCKETS].discard(ws)
        metrics.ws_closed(ROUTE)
        await _stop(sub)
    return ws


async def _stop(sub: Subscriber) -> None:
    """Stop the subscriber's tasks; a closing handshake in progress (slow consumer) may finish."""
    tasks = [t for t in (sub.writer, sub.closer, *sub.tasks) if t is not None]
    for t in tasks:
        if t is not sub.closer:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, events_socket)

"""The events WebSocket `/api/v1/events/tools`: registry events fanned out to subscribers.

Each event is serialized to JSON once and the same string is queued for every
subscriber that wants it. Each subscriber has its own bounded outbox
(edge.outbox, the writer every edge socket uses), so a slow one never delays
the others: when it overflows it is closed with 1013 and a reason naming the
revision to resume from.

A client reconnecting with `?since=<revision>` gets every event it missed: from
the registry cache's memory when it reaches back far enough, else from the hub's
own history (a dedicated WatchToolEvents), else a `resync_required` message.
Live events that arrive meanwhile are held and sent after the backlog, in order.

A subscriber may also ask for install progress (`installs=1`, or `"installs": true` in
`subscribe`): the steps of the hub's installs as they happen (edge.install_feed), through the same
outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web
from toolscore.v1 import tool_pb2

from edge import json_body
from edge.install_feed import InstallFeed
from edge.metrics import METRICS, EdgeMetrics
from edge.open_sockets import OPEN_SOCKETS
from edge.outbox import Outbox, OutboxLimits, OutboxStats, text_frame
from edge.registry_cache import RegistryCache, Unsubscribe
from edge.rest import shapes
from services.common import jsonvalue
from services.common.config import EdgeConfig
from services.common.errors import MeshError

log = logging.getLogger(__name__)

ROUTE = "/api/v1/events/tools"
EVENT_NAMES = {
    tool_pb2.TOOL_EVENT_TYPE_INSTALLED: "tool_installed",
    tool_pb2.TOOL_EVENT_TYPE_UPDATED: "tool_updated",
    tool_pb2.TOOL_EVENT_TYPE_REMOVED: "tool_uninstalled",
    tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED: "tool_health_changed",
}
_EVENT_STATUS = {
    tool_pb2.TOOL_EVENT_TYPE_INSTALLED: "ready",
    tool_pb2.TOOL_EVENT_TYPE_UPDATED: "ready",
    tool_pb2.TOOL_EVENT_TYPE_REMOVED: "removed",
}


EVENT_TYPES = frozenset(EVENT_NAMES.values())


def event_message(event: tool_pb2.ToolEvent) -> dict[str, Any]:
    """A pushed event: the original `tool_installed` fields plus the tool and the revision."""
    tool = event.tool
    msg: dict[str, Any] = {
        "type": EVENT_NAMES.get(event.type, "tool_updated"),
        "revision": event.revision,
        "tool_id": tool.tool_id,
        "name": tool.name,
        "status": _EVENT_STATUS.get(event.type, shapes.HEALTH_NAMES.get(tool.health, "unknown")),
        "health": shapes.HEALTH_NAMES.get(tool.health, "unknown"),
        "tool": shapes.tool_json(tool),
        "timestamp": shapes.iso_time(event.time) or shapes.now_iso(),
    }
    return msg


def brief_tool(tool: tool_pb2.Tool) -> dict[str, Any]:
    """A tool in the events WebSocket's `welcome` and `tools_list`."""
    return {
        "tool_id": tool.tool_id,
        "name": tool.name,
        "capabilities": [c.name for c in tool.capabilities],
        "type": shapes.original_tool_type(tool),
        "enabled": tool.enabled,
        "health": shapes.HEALTH_NAMES.get(tool.health, "unknown"),
    }


class Subscriber:
    """One events client: filters, and its bounded outbox (edge.outbox) of JSON strings."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        limits: OutboxLimits,
        metrics: EdgeMetrics,
        transport: asyncio.BaseTransport | None = None,
        stats: OutboxStats | None = None,
    ) -> None:
        self.ws = ws
        self.events: frozenset[str] = frozenset()  # empty: every type
        self.tool_ids: frozenset[str] = frozenset()  # empty: every tool
        self.installs = False  # install progress wanted (edge.install_feed)
        self.revision = 0  # the last event revision queued
        self.held: list[tuple[int, str]] | None = None  # live events held while a backlog is fetched
        self._limit = max(limits.messages, 1)
        self._metrics = metrics
        self.out = Outbox(ws, limits, transport=transport, stats=stats, on_slow=self._slow)
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def sent(self) -> int:
        """The last event revision written to the socket: where a resume starts."""
        return self.out.written

    def wants(self, event_type: str, tool_id: str) -> bool:
        return (not self.events or event_type in self.events) and (
            not self.tool_ids or tool_id in self.tool_ids
        )

    def send(self, text: str, *, revision: int | None = None, frame: bytes | None = None) -> None:
        """Send or queue one message; on overflow the client is closed with 1013 (never waited for)."""
        if revision is not None and not self.out.overflowed:
            self._metrics.events_sent += 1
        self.out.push(text, mark=revision, frame=frame)

    def event(self, revision: int, text: str, frame: bytes | None = None) -> None:
        if self.out.overflowed:  # being closed as too slow: it resumes with ?since= instead
            return
        if self.held is not None:
            if len(self.held) >= self._limit:
                self.held = []
                self.out.overflow()
                return
            self.held.append((revision, text))
            return
        # Not deduplicated here: after a hub restart the cache reports several changes at one revision.
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

    def _slow(self) -> str:
        self._metrics.slow_consumers_closed += 1
        log.info("closing a slow events subscriber (last sent revision %d)", self.sent)
        return f"subscriber too slow ({self._limit} messages queued); reconnect with ?since={self.sent}"


class EventHub:
    """Fans the registry cache's events out to every subscriber."""

    def __init__(
        self,
        registry: RegistryCache,
        metrics: EdgeMetrics,
        queue_limit: int,
        outbox_bytes: int,
        max_frame_bytes: int,
    ) -> None:
        self.registry = registry
        self._unsubscribe: Unsubscribe | None = None
        self.metrics = metrics
        self.queue_limit = max(queue_limit, 1)
        self.outbox_bytes = outbox_bytes
        self.max_frame_bytes = max_frame_bytes  # the largest message a client may send
        self.subscribers: set[Subscriber] = set()
        self.outbox_stats = OutboxStats()
        self.installs: InstallFeed | None = None  # set where the edge serves discovery

    def publish_install(self, text: str) -> None:
        """One install step (edge.install_feed) to every subscriber that asked for them."""
        frame = text_frame(text)
        for sub in self.subscribers:
            if sub.installs:
                sub.send(text, frame=frame)

    def want_installs(self, sub: Subscriber, wanted: bool) -> None:
        """Start or stop sending `sub` install progress; a start sends the installs under way first."""
        if not wanted or sub.installs:
            sub.installs = wanted
            return
        if self.installs is None:
            sub.send(_error("install progress is not served here: this edge has no discovery"))
            return
        sub.installs = True
        self.installs.start()
        for text in list(self.installs.under_way.values()):
            sub.send(text)

    def attach(self) -> None:
        self._unsubscribe = self.registry.subscribe(self._on_event)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _on_event(self, event: tool_pb2.ToolEvent) -> None:
        name = EVENT_NAMES.get(event.type, "tool_updated")
        tool_id = event.tool.tool_id
        text: str | None = None
        frame = b""
        for sub in self.subscribers:
            if sub.wants(name, tool_id):
                if text is None:  # serialized and framed once, shared by every subscriber
                    text = shapes.dumps(event_message(event))
                    frame = text_frame(text)
                sub.event(event.revision, text, frame)

    def tools_message(self, kind: str, **extra: Any) -> str:
        tools = self.registry.tools()
        return shapes.dumps(
            {
                "type": kind,
                "tools": [brief_tool(t) for t in tools],
                "total_count": len(tools),
                "timestamp": shapes.now_iso(),
                "revision": self.registry.revision,
                **extra,
            }
        )

    def join(self, sub: Subscriber, since: int | None) -> None:
        """Welcome the subscriber and queue its backlog. No await: no event can slip in between."""
        current = self.registry.revision
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
        backlog = self.registry.events_since(since, current)
        if backlog is not None:
            for ev in backlog:
                self._replay(sub, ev)
            return
        sub.held = []
        sub.spawn(self._backlog_from_hub(sub, since, current))

    def _replay(self, sub: Subscriber, event: tool_pb2.ToolEvent) -> None:
        if sub.wants(EVENT_NAMES.get(event.type, "tool_updated"), event.tool.tool_id):
            msg = event_message(event)
            msg["replayed"] = True
            sub.event(event.revision, shapes.dumps(msg))
        else:
            sub.revision = max(sub.revision, event.revision)

    async def _backlog_from_hub(self, sub: Subscriber, since: int, until: int) -> None:
        try:
            events = await self.registry.history(since, until)
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


EVENTS = web.AppKey("events", EventHub)


def _resync(revision: int, reason: str, message: str) -> str:
    return shapes.dumps(
        {
            "type": "resync_required",
            "reason": reason,
            "message": message,
            "revision": revision,
            "timestamp": shapes.now_iso(),
        }
    )


def _error(message: str, **extra: Any) -> str:
    return shapes.dumps({"type": "error", "message": message, "timestamp": shapes.now_iso(), **extra})


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
        msg = json_body.loads(data)
    except ValueError as exc:
        sub.send(_error(f"Invalid JSON: {exc}" if isinstance(exc, jsonvalue.JsonTooDeep) else "Invalid JSON"))
        return
    if not isinstance(msg, dict):
        sub.send(_error("a message must be a JSON object with a 'type'"))
        return
    kind = msg.get("type")
    if kind == "ping":
        sub.send(
            shapes.dumps({"type": "pong", "timestamp": shapes.now_iso(), "revision": hub.registry.revision})
        )
    elif kind == "get_tools":
        sub.send(hub.tools_message("tools_list"))
    elif kind == "subscribe":
        installs = msg.get("installs")
        try:
            _filters(sub, msg.get("events"), msg.get("tool_ids"))
            if installs is not None and not isinstance(installs, bool):
                raise ValueError("installs must be true or false")
        except ValueError as exc:
            sub.send(_error(str(exc), request_type="subscribe"))
            return
        if installs is not None:
            hub.want_installs(sub, installs)
        sub.send(
            shapes.dumps(
                {
                    "type": "subscribed",
                    "events": sorted(sub.events) or sorted(EVENT_TYPES),
                    "tool_ids": sorted(sub.tool_ids),
                    "installs": sub.installs,
                    "revision": hub.registry.revision,
                    "timestamp": shapes.now_iso(),
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
    hub, metrics, sockets = app[EVENTS], app[METRICS], app[OPEN_SOCKETS]
    ws = web.WebSocketResponse(compress=False, max_msg_size=hub.max_frame_bytes, heartbeat=30.0)
    await ws.prepare(request)
    sockets.add(ws)
    metrics.ws_opened(ROUTE)
    limits = OutboxLimits(hub.queue_limit, hub.outbox_bytes)
    sub = Subscriber(ws, limits, metrics, request.transport, hub.outbox_stats)
    try:
        try:
            since = _since(request)
            _filters(sub, request.query.get("events"), request.query.get("tool_ids"))
        except ValueError as exc:
            sub.send(_error(str(exc)))
            since = None
        hub.join(sub, since)
        if request.query.get("installs") in ("1", "true"):
            hub.want_installs(sub, True)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                _handle(hub, sub, msg.data)
            elif msg.type == WSMsgType.BINARY:
                sub.send(_error("binary frames are not supported; send JSON text"))
    finally:
        hub.subscribers.discard(sub)
        sockets.discard(ws)
        metrics.ws_closed(ROUTE)
        await _stop(sub)
    return ws


async def _stop(sub: Subscriber) -> None:
    """Stop the subscriber's tasks; a closing handshake in progress (slow consumer) may finish."""
    tasks = list(sub.tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(sub.out.stop(), *tasks, return_exceptions=True)


def mount(app: web.Application, registry: RegistryCache, metrics: EdgeMetrics, edge: EdgeConfig) -> EventHub:
    """Serve the events WebSocket on `app` (app[EVENTS]), following `registry` while the app runs.

    Needs app[METRICS] and app[OPEN_SOCKETS] (edge.metrics, edge.open_sockets).
    """
    hub = app[EVENTS] = EventHub(
        registry, metrics, edge.subscriber_queue, edge.outbox_bytes, edge.max_frame_bytes
    )

    async def following(_app: web.Application) -> AsyncIterator[None]:
        hub.attach()
        yield
        hub.detach()

    app.cleanup_ctx.append(following)
    app.router.add_get(ROUTE, events_socket)
    return hub

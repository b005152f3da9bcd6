"""Streamable HTTP at `/mcp` with its sessions on Redis (`[edge] mcp_session_store = "redis"`), so
every edge of a cluster serves every session (docs/mcp.md, "Sessions across edges").

`ClusterHttp` is the transport of http.py with its session hooks answered from the shared store
(redis_sessions.py): its table holds this edge's *views* of the cluster's sessions, a cache of at
most `max_sessions`, idle ones let go first. Each request of a session first asks Redis (one script
call) whether it is alive under the caller's identity, refreshing its TTL; a session ended or
expired elsewhere takes its view here with it. A view's tool sessions are written to Redis before
its request's answer leaves, for whichever edge ends the session to end them. A resumable
request stream is numbered in Redis and its events written there, so a client can resume it on
any edge; it is read back from there on every edge, so a delivered stream is gone everywhere.
Every edge follows the store's signals: a session ended (DELETE) on another edge is let go here at
once, cancelling what it runs here, and a `notifications/cancelled` that reached another edge
cancels the request running here.
Redis failing: `initialize` and a request for a session without a view here get 503 (-32603,
MCP_SESSION_STORE_UNAVAILABLE); a session with a view here goes on being served from it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from services.common.errors import Unavailable

from . import results
from ._protocol import H_SESSION, NOTIFICATION, Message
from ._sse import KEEPALIVE, SSE_HEADERS, Exchange, write_within
from .dispatcher import HANDSHAKE, Headers, Send, Session
from .http import _CLOSED, HttpSession, StreamableHttp, _fail, _json
from .mcp_service import McpService
from .redis_sessions import ExchangeMirror, HeldMirror, RedisSessions, Refused, SessionRecord
from .views import ToolView

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_SWEEP_EVERY_S = 30.0


def _unavailable(rid: Any, exc: Unavailable) -> web.Response:
    """The session store failed: 503 with the JSON-RPC error of the failure policy (results.py)."""
    return _json(results.rpc_error(exc).response(rid), 503)


class ClusterHttp(StreamableHttp):
    """The `/mcp` endpoint of one edge of a cluster: its sessions in `store`, shared by every edge."""

    scope = "cluster"
    shared = True

    def __init__(self, svc: McpService, store: RedisSessions) -> None:
        super().__init__(svc)
        self.store = store
        self._last_store_sweep = -_SWEEP_EVERY_S  # the first initialize sweeps
        self._stop = asyncio.Event()
        self._signals: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the other edges' signals (sessions ended, requests cancelled) until `stop`."""
        self._signals = asyncio.get_running_loop().create_task(
            self.store.follow_signals(self._on_signal, self._stop)
        )

    async def stop(self) -> None:
        """Stop following signals (within the store's deadline)."""
        self._stop.set()
        if self._signals is not None:
            await self.store.wake()
            await self._signals

    def _on_signal(self, kind: str, sid: str, rid: Any) -> None:
        hs = self.sessions.get(sid)
        if hs is None:
            return
        if kind == "end":  # ended on another edge: what it runs here ends too
            self._drop(sid)
        elif kind == "cancel":
            self.d.notification(
                Message(NOTIFICATION, "notifications/cancelled", None, {"requestId": rid}), hs.state
            )
        elif kind == "level" and isinstance(rid, str):  # set through another edge: heard here too
            self.d.hear_logs(hs.state, rid)
        elif kind == "answer" and isinstance(rid, dict) and hs.state.asks is not None:
            hs.state.asks.answer(rid)  # POSTed through another edge; only a request of this session

    # -- finding sessions --------------------------------------------------------

    async def _dispatch(self, request: web.Request, msg: Message, sse_ok: bool) -> web.StreamResponse:
        sid = request.headers.get(H_SESSION)
        if msg.method == "initialize" or sid is None:
            hs, session = self._session_for(request, msg)
            if hs is not None:  # its tool sessions are written to Redis, for any edge to end
                hs.state.tool_sessions = HeldMirror()
        else:
            try:
                hs = await self._view(sid, self._identity(request), self._view_of(request))
            except Unavailable as exc:
                return _unavailable(msg.id, exc)
            session = hs.state if hs is not None else None
            if hs is not None and msg.method == "notifications/cancelled":
                await self._cancel_elsewhere(hs, msg)
        return await self._serve(request, msg, sse_ok, hs, session)

    async def _answer_elsewhere(self, hs: HttpSession, response: dict[str, Any]) -> None:
        """A client's response to a request this edge did not send: the edge that sent it is told."""
        try:
            await self.store.answer(hs.state.id, response)
        except Unavailable as exc:
            log.warning("MCP session %s: a client's response not passed on: %s", hs.state.id[:8], exc.message)

    async def _cancel_elsewhere(self, hs: HttpSession, msg: Message) -> None:
        """A cancellation of a request this edge does not run: the edge that runs it is told."""
        rid = (msg.params or {}).get("requestId")
        if not isinstance(rid, str | int) or isinstance(rid, bool) or rid in hs.state.inflight:
            return
        try:
            await self.store.cancel(hs.state.id, rid)
        except Unavailable as exc:
            log.warning("MCP session %s: a cancellation not passed on: %s", hs.state.id[:8], exc.message)

    async def _known(self, request: web.Request) -> tuple[HttpSession | None, web.Response | None]:
        sid = request.headers.get(H_SESSION)
        if sid is None:
            return None, _fail(400, "Bad Request: Mcp-Session-Id header is required")
        try:
            hs = await self._view(sid, self._identity(request), self._view_of(request))
        except Unavailable as exc:
            return None, _unavailable(None, exc)
        if hs is None:
            return None, _fail(404, f"Session not found: {sid[:64]!r}")
        return hs, None

    async def _view(self, sid: str, ident: str, view: ToolView | None) -> HttpSession | None:
        """This edge's view of session `sid`, if it is alive under `ident` (its TTL refreshed): the one
        held here, else built from its record. Raise Unavailable when Redis fails and no view is
        held here (one that is goes on serving: calls keep flowing while Redis is away)."""
        hs = self.sessions.get(sid)
        if hs is not None and not hmac.compare_digest(hs.identity, ident):
            return None  # another identity's session: the same answer as an unknown one
        try:
            alive = await self.store.touch(sid, ident, load=hs is None)
        except Unavailable as exc:
            if hs is None:
                raise
            log.warning("MCP session %s served from this edge's view: %s", sid[:8], exc.message)
            return hs
        if alive is False:
            if hs is not None:  # ended on another edge, or expired: what runs here for it ends too
                self._drop(sid)
            return None
        if isinstance(alive, SessionRecord):
            hs = self._adopt(alive, view)
        return hs

    def _adopt(self, rec: SessionRecord, view: ToolView | None) -> HttpSession:
        """A view of a session another edge opened (or this one, before its view was let go), on the
        endpoint it was opened on (`identity` holds it)."""
        state = Session(
            id=rec.id, transport="http", era=HANDSHAKE, version=rec.version, view=view, shared=True
        )
        state.client_info, state.initialized, state.tool_sessions = rec.client_info, True, HeldMirror()
        state.capabilities = rec.capabilities
        if rec.log_level:  # it asked for installed servers' log messages: they reach its stream here
            self.d.hear_logs(state, rec.log_level)
        hs = HttpSession(state, client=rec.client, seen=rec.seen, identity=rec.identity)
        self._keep(hs)
        return hs

    def _keep(self, hs: HttpSession) -> None:
        """Hold a view, within `max_sessions` views: idle ones go first (a view is only a cache)."""
        if len(self.sessions) >= self.opts.max_sessions:
            self._expire(every_s=1.0)
        if len(self.sessions) >= self.opts.max_sessions:
            idle = [h for h in self.sessions.values() if h.stream is None and not h.state.inflight]
            for h in sorted(idle, key=lambda h: h.state.last_used)[: len(self.sessions) // 8 + 1]:
                self._drop(h.state.id)
        self.sessions[hs.state.id] = hs

    def _drop(self, sid: str) -> HttpSession | None:
        """Let a view go: its stream ends and what it runs here is cancelled; its tool sessions are
        recorded in Redis, ended by whichever edge ends the session (or by the sweep after it
        expired), not here."""
        hs = self.sessions.pop(sid, None)
        if hs is not None:
            if hs.state.tool_sessions:
                hs.state.tool_sessions.clear()
            self.d.forget(hs.state)
            if hs.stream is not None:
                hs.stream.end()
        return hs

    # -- opening, running, ending ------------------------------------------------

    async def _opened(self, hs: HttpSession, rid: Any) -> web.Response | None:
        state = hs.state
        rec = SessionRecord(
            state.id,
            hs.identity,
            hs.client,
            state.version,
            state.client_info,
            hs.seen,
            capabilities=state.capabilities,
        )
        try:
            await self._sweep()
            await self.store.create(rec, self.opts.max_sessions, self.opts.sessions_per_client)
        except Refused as exc:
            self.d.forget(state)
            return self._too_many(rid, exc.which)
        except Unavailable as exc:
            self.d.forget(state)
            return _unavailable(rid, exc)
        self._keep(hs)
        log.info("MCP session %s opened (%s)", state.id[:8], state.version)
        return None

    async def _sweep(self) -> None:
        """At most every 30 s: end the tool sessions of sessions whose TTL ran out (any edge's)."""
        now = time.monotonic()
        if now - self._last_store_sweep < _SWEEP_EVERY_S:
            return
        self._last_store_sweep = now
        self._expire(every_s=0.0)  # idle views too
        self.d.tool_sessions.end(await self.store.sweep())

    def _run(
        self, msg: Message, session: Session, send: Send | None, headers: Headers, hs: HttpSession | None
    ) -> Coroutine[Any, Any, dict[str, Any] | None]:
        return self._request(msg, session, send, headers, hs)

    async def _request(
        self, msg: Message, session: Session, send: Send | None, headers: Headers, hs: HttpSession | None
    ) -> dict[str, Any] | None:
        """Run a request; before its answer leaves, write the tool sessions it opened to Redis (so
        an edge that ends the session ends them), and refresh a TTL a long request outlived."""
        started = time.monotonic()
        resp = await self.d.request(msg, session, send, headers)
        if hs is None or not hs.state.id:
            return resp
        if msg.method == "logging/setLevel" and resp is not None and "result" in resp:
            try:  # recorded before the answer: the edge holding its stream forwards at that level
                await self.store.set_level(hs.state.id, hs.state.log_level)
            except Unavailable as exc:
                log.warning("MCP session %s: log level not recorded: %s", hs.state.id[:8], exc.message)
        held = hs.state.tool_sessions
        try:
            if isinstance(held, HeldMirror) and held.pending:
                self.d.tool_sessions.end(await self.store.hold(hs.state.id, held))
            if time.monotonic() - started > self.opts.session_ttl_s / 3:
                await self.store.touch(hs.state.id, hs.identity, load=False)
        except Unavailable as exc:  # kept in this view: ended with it here, or by the tool's own TTL
            log.warning("MCP session %s: tool sessions not recorded: %s", hs.state.id[:8], exc.message)
        return resp

    async def _delete(self, request: web.Request) -> web.Response:
        """DELETE: the session ends on every edge; its tool sessions are ended from here."""
        sid = request.headers.get(H_SESSION)
        if sid is None:
            return _fail(400, "Bad Request: Mcp-Session-Id header is required")
        ident = self._identity(request)
        try:
            held = await self.store.end(sid, ident)
        except Unavailable as exc:
            return _unavailable(None, exc)
        hs = self.sessions.get(sid)
        if hs is not None and hmac.compare_digest(hs.identity, ident):
            self._drop(sid)  # cancels what it runs here
        if held is None:
            return _fail(404, f"Session not found: {sid[:64]!r}")
        self.d.tool_sessions.end(held)
        log.info("MCP session %s closed by the client", sid[:8])
        return web.Response(status=200)

    # -- streams -----------------------------------------------------------------

    async def _announced(self, hs: HttpSession, revision: int) -> None:
        await self.store.saw(hs.state.id, revision)

    async def _still_open(self, hs: HttpSession) -> bool:
        """The keepalive of an open stream refreshes its session's TTL, and ends with the session."""
        try:
            alive = await self.store.touch(hs.state.id, hs.identity, load=False)
        except Unavailable:
            return True  # not known to have ended: the stream goes on
        if not alive:
            self._drop(hs.state.id)
        return bool(alive)

    async def _resumable(self, hs: HttpSession, limit: int, max_bytes: int) -> Exchange:
        """A stream numbered in Redis, its events written there for any edge to resume; with Redis
        away, a stream that is not resumable (the call itself goes on)."""
        try:
            number = await self.store.open_exchange(hs.state.id)
        except Unavailable as exc:
            log.warning("MCP session %s: a stream that cannot resume: %s", hs.state.id[:8], exc.message)
            number = 0
        if not number:
            return Exchange(0, limit, max_bytes)
        ex = hs.new_exchange(limit, max_bytes, number)
        ex.mirror = self.store.mirror(hs.state.id, number)
        return ex

    def _delivered(self, hs: HttpSession, ex: Exchange) -> None:
        hs.forget_exchange(ex.number)
        mirror = ex.mirror
        if isinstance(mirror, ExchangeMirror):
            store, sid, number = self.store, hs.state.id, ex.number

            async def forget() -> None:
                await mirror.flushed()  # else its last write would bring the stream back
                await store.forget_exchange(sid, number)

            store.own(asyncio.get_running_loop().create_task(forget()))

    async def _resume(
        self, request: web.Request, hs: HttpSession, number: int, after: int
    ) -> web.StreamResponse:
        """Resume a request's stream from Redis, whichever edge runs the call."""
        sid = hs.state.id
        events = self.store.events(sid, number, after, self.opts.sse_keepalive_s)
        try:
            first = await anext(events)
        except (LookupError, StopAsyncIteration):
            return _fail(404, f"Stream {number} of this session is finished or unknown")
        except Unavailable as exc:
            return _unavailable(None, exc)
        resp = web.StreamResponse(headers={**SSE_HEADERS, H_SESSION: sid})
        final = False
        try:
            await resp.prepare(request)
            async for event in _after(first, events):
                await write_within(resp, KEEPALIVE if event is None else event[0], self.opts.write_timeout_s)
                if event is not None and event[1]:
                    final = True
                    break
            if final:
                hs.forget_exchange(number)
                await self.store.forget_exchange(sid, number)
            await resp.write_eof()
        except _CLOSED as exc:
            self._cut(request, exc)
            log.debug("MCP session %s: resumed stream %d closed by the client", sid[:8], number)
        except Unavailable as exc:  # Redis went away mid-stream: the client resumes again later
            log.warning("MCP session %s: resumed stream %d cut: %s", sid[:8], number, exc.message)
            if request.transport is not None:
                request.transport.abort()
        finally:
            await events.aclose()
        return resp


async def _after(first: _T, rest: AsyncIterator[_T]) -> AsyncIterator[_T]:
    yield first
    async for item in rest:
        yield item

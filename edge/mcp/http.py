"""Streamable HTTP at `/mcp`: a thin aiohttp shell over the dispatcher.

- POST carries one JSON-RPC message. Notifications and client responses get
  202. A request is answered with `application/json`, unless it reports
  progress (or runs past `sse_defer_s`, or is a `subscriptions/listen`), in
  which case the answer switches to `text/event-stream` and carries the
  notifications before the response.
- Handshake era: `initialize` opens a session (`Mcp-Session-Id`), at most
  `sessions_per_client` per client address and `max_sessions` in all: past
  either, initialize is refused (429), no other session is evicted. GET opens
  the session's standalone SSE stream (list_changed); DELETE ends the session.
  A request without a session id is served statelessly.
- A session keeps no backlog: list_changed is a level signal, so a standalone
  stream's event id is the registry revision whose listing it announces, and a
  stream (re)opened with or without `Last-Event-ID` gets one list_changed if the
  listing changed since. Only open streams hear of an announcement: idle
  sessions cost nothing per registry event.
- A session is bound to the identity that opened it (the SHA-256 of its
  Authorization header): its id presented under another gets 404, as an
  unknown id does.
- Sessions on Redis (`shared`, edge/mcp/redis_sessions.py): the table here
  holds this edge's views of sessions any edge opened, a cache; each request
  of a session first asks Redis (one script call) that it is alive under this
  identity, and refreshes its TTL. Without `shared` (one edge, `make run`)
  the table is the whole truth and nothing of it awaits.
- 2026-07-28: every POST stands alone (no session); closing the connection
  cancels the request.
- Every request passes the Origin/Host check (403) and the size limit (413);
  a session runs at most `max_in_flight` requests (more: 429, -32029).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from services.common.errors import ResourceExhausted, Unavailable

from . import results
from ._protocol import (
    DEFAULT_HTTP_VERSION,
    H_LAST_EVENT,
    H_SESSION,
    H_VERSION,
    HANDSHAKE_VERSIONS,
    HTTP_STATUS,
    INVALID_REQUEST,
    LIMIT_REACHED,
    NOTIFICATION,
    PROTOCOL_VERSION_KEY,
    REQUEST,
    REQUEST_CANCELLED,
    RESPONSE,
    Message,
    ProtocolError,
    decode,
    encode,
    error_response,
    notification,
    progress_token,
)
from ._sse import (
    KEEPALIVE,
    SSE_HEADERS,
    Exchange,
    SharedBytes,
    WriteStalled,
    frame,
    parse_event_id,
    write_within,
)
from .dispatcher import HANDSHAKE, Headers, Send, Session
from .mcp_service import McpService
from .redis_sessions import ExchangeMirror, HeldMirror, RedisSessions, Refused, SessionRecord, identity

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_JSON = "application/json"
_SSE = "text/event-stream"
_CLOSED = (ConnectionError, asyncio.IncompleteReadError)
_KEPT_EXCHANGES = 64
_LIST_CHANGED = notification("notifications/tools/list_changed", {})
# Resumable request streams need a client that understands priming events (2025-11-25 and later).
_RESUMABLE_FROM = HANDSHAKE_VERSIONS.index("2025-11-25")


class _Stream:
    """One open standalone GET stream: woken at each announcement, ended when replaced or dropped."""

    __slots__ = ("ended", "wake")

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.ended = False

    def end(self) -> None:
        self.ended = True
        self.wake.set()


@dataclass(eq=False)
class HttpSession:
    """A handshake-era session: dispatcher state, its client address, and where its stream stands."""

    state: Session
    client: str
    seen: int  # the listing revision this session last heard of (at initialize, or its stream's last)
    identity: str = ""  # who opened it (redis_sessions.identity): only they may use it
    stream: _Stream | None = None
    created: float = field(default_factory=time.monotonic)
    # Requests answered over SSE whose response has not reached the client yet, for resumption.
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    exchange_seq: int = 0
    # What the notifications of all its resumable streams may hold together (edge.outbox_bytes): each
    # stream's own bound alone would let one session hold it once per request in flight.
    kept: SharedBytes | None = None

    def new_exchange(self, limit: int, max_bytes: int, number: int = 0) -> Exchange:
        """A resumable stream for one request (numbered `number`, else the session's next). Finished
        streams nobody came back for are kept, oldest dropped first, within `_KEPT_EXCHANGES` and
        `max_bytes` in all: a client that leaves every call before its answer cannot make the
        session hold more."""
        finished = [(k, e) for k, e in self.exchanges.items() if e.final]
        kept = sum(e.kept_bytes for _, e in finished)
        for k, e in finished:
            if len(self.exchanges) < _KEPT_EXCHANGES and kept <= max_bytes:
                break
            self.forget_exchange(k)
            kept -= e.kept_bytes
        if self.kept is None:
            self.kept = SharedBytes(max_bytes)
        if not number:
            self.exchange_seq += 1
            number = self.exchange_seq
        ex = self.exchanges[number] = Exchange(number, limit, max_bytes, self.kept)
        return ex

    def forget_exchange(self, number: int) -> None:
        ex = self.exchanges.pop(number, None)
        if ex is not None:
            ex.release()


def _json(body: dict[str, Any] | None, status: int = 200, session_id: str = "") -> web.Response:
    headers = {H_SESSION: session_id} if session_id else None
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(body=encode(body).encode(), status=status, content_type=_JSON, headers=headers)


def refusal(err: ResourceExhausted) -> web.Response:
    """A bound refused this POST before the dispatcher saw it: 429 and -32029, as a session's bound does."""
    return _json(error_response(None, LIMIT_REACHED, err.message, err.to_json()), 429)


def _fail(status: int, message: str, code: int = INVALID_REQUEST) -> web.Response:
    return _json(error_response(None, code, message), status)


def _unavailable(rid: Any, exc: Unavailable) -> web.Response:
    """The session store failed: 503 with the JSON-RPC error of the failure policy (results.py)."""
    return _json(results.rpc_error(exc).response(rid), 503)


def _cancelled(rid: Any) -> dict[str, Any]:
    return error_response(rid, REQUEST_CANCELLED, "Request cancelled")


class _TooLarge(Exception):
    pass


class StreamableHttp:
    """The `/mcp` endpoint."""

    def __init__(self, svc: McpService, shared: RedisSessions | None = None) -> None:
        self.svc = svc
        self.shared = shared
        self.d = svc.dispatcher
        self.opts = svc.opts
        self.sessions: dict[str, HttpSession] = {}
        self._per_client: dict[str, int] = {}
        self._streams: set[_Stream] = set()
        self._last_sweep = time.monotonic()
        self._last_shared_sweep = -30.0  # the first initialize sweeps Redis
        svc.listing_listeners.append(self._announce)

    def _announce(self) -> None:
        for stream in self._streams:
            stream.wake.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refused = self.svc.guard.refusal(request.headers)
        if refused is not None:
            return _fail(403, f"Forbidden: {refused.message}")
        if request.method == "POST":
            return await self._post(request)
        if request.method == "GET":
            return await self._get(request)
        if request.method == "DELETE":
            return await self._delete(request)
        return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})

    # -- POST ------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != _JSON:
            return _fail(415, "Unsupported Media Type: Content-Type must be application/json")
        accept = request.headers.get("Accept", "")
        sse_ok = not accept or _SSE in accept or "*/*" in accept
        if accept and not (sse_ok or _JSON in accept or "application/*" in accept):
            return _fail(406, "Not Acceptable: accept application/json and text/event-stream")
        try:
            body = await self._read(request)
        except _TooLarge:
            return _fail(413, f"Request body larger than {self.opts.max_frame_bytes} bytes")
        try:
            msg = decode(body)
        except ProtocolError as exc:
            return _json(exc.response(None), exc.http_status)
        if msg.kind == RESPONSE:
            return _json(None, 202)
        if self.shared is not None:
            return await self._post_shared(request, msg, sse_ok)
        if msg.method == "initialize" and msg.kind == REQUEST:
            refused = self._admit(request.remote or "", msg.id)
            if refused is not None:
                return refused
        hs, session = self._session_for(request, msg)
        return await self._serve(request, msg, sse_ok, hs, session)

    async def _serve(
        self,
        request: web.Request,
        msg: Message,
        sse_ok: bool,
        hs: HttpSession | None,
        session: Session | None,
    ) -> web.StreamResponse:
        if session is None:
            sid = request.headers.get(H_SESSION, "")
            return _fail(404, f"Session not found: {sid[:64]!r}; send initialize to open a new one")
        if msg.kind == NOTIFICATION:
            self.d.notification(msg, session)
            return _json(None, 202)
        assert msg.kind == REQUEST
        if hs is not None and len(session.inflight) >= self.opts.max_in_flight:
            return _json(self.svc.refuse_busy(msg.id, "session"), 429, hs.state.id)
        if msg.method == "subscriptions/listen" and not sse_ok:
            return _fail(406, "Not Acceptable: subscriptions/listen answers with text/event-stream")
        sid = hs.state.id if hs is not None and msg.method != "initialize" else ""
        streams = sse_ok and progress_token(msg.params) is not None and msg.method != "initialize"
        if msg.method == "subscriptions/listen" or streams:
            return await self._stream(request, msg, session, hs if sid else None)
        if self.shared is None:
            resp = await self.d.request(msg, session, None, request.headers)
        else:
            resp = await self._request_shared(msg, session, None, request.headers, hs)
        if resp is None:
            resp = _cancelled(msg.id)
        if msg.method == "initialize":
            assert hs is not None
            if "result" not in resp:
                self.d.forget(session)
            elif self.shared is None:
                sid = self._open(hs)
            else:
                refused = await self._create(hs, msg.id)
                if refused is not None:
                    return refused
                sid = hs.state.id
        return _json(resp, _status(resp, session), sid)

    async def _read(self, request: web.Request) -> bytes:
        limit = self.opts.max_frame_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _TooLarge
        buf = bytearray()
        while chunk := await request.content.readany():
            buf += chunk
            if len(buf) > limit:
                raise _TooLarge
        return bytes(buf)

    def _session_for(self, request: web.Request, msg: Message) -> tuple[HttpSession | None, Session | None]:
        """The session a message belongs to: a new one (initialize), a known one, or a one-off."""
        if msg.method == "initialize":  # a new session: kept only if initialize succeeds
            # No push: list_changed reaches a session only through an open stream (see _get).
            hs = HttpSession(
                Session(id=secrets.token_hex(16), transport="http"),
                client=request.remote or "",
                seen=self.svc.listing_revision,
                identity=identity(request.headers),
            )
            if self.shared is not None:  # its tool sessions are written to Redis, for any edge to end
                hs.state.tool_sessions = HeldMirror()
            return hs, hs.state
        sid = request.headers.get(H_SESSION)
        if sid is not None:
            known = self._live(sid)
            if known is None or not hmac.compare_digest(known.identity, identity(request.headers)):
                return None, None  # another identity's session: the same answer as an unknown one
            return known, known.state
        one_off = Session(id="", transport="http")
        version = request.headers.get(H_VERSION)
        meta = msg.params.get("_meta") if msg.params else None
        if not (isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta) and (
            version is None or version in HANDSHAKE_VERSIONS
        ):
            # a stateless handshake-era request
            one_off.era, one_off.version = HANDSHAKE, version or DEFAULT_HTTP_VERSION
        return None, one_off

    def _admit(self, client: str, rid: Any) -> web.Response | None:
        """None when `client` may open one more session, else the 429 refusal (nobody is evicted)."""
        per_client, most = self.opts.sessions_per_client, self.opts.max_sessions
        if self._per_client.get(client, 0) >= per_client or len(self.sessions) >= most:
            self._expire(every_s=1.0)
        if self._per_client.get(client, 0) >= per_client:
            return self._too_many(rid, "client")
        if len(self.sessions) >= most:
            return self._too_many(rid, "total")
        return None

    def _too_many(self, rid: Any, which: str) -> web.Response:
        """The 429 refusal of an initialize past the sessions cap `which` ("client" or "total")."""
        per_client, most = self.opts.sessions_per_client, self.opts.max_sessions
        if which == "client":
            what, limit = f"this client address already has {per_client} MCP sessions", per_client
        elif self.shared is None:
            what, limit = f"the edge already holds {most} MCP sessions", most
        else:
            what, limit = f"the cluster already holds {most} MCP sessions", most
        self.svc.stats.sessions_refused += 1
        err = ResourceExhausted(
            f"{what}; end unused ones (DELETE with their Mcp-Session-Id) or let them expire, then retry",
            reason="TOO_MANY_SESSIONS",
            metadata={"limit": str(limit)},
        )
        return _json(error_response(rid, LIMIT_REACHED, err.message, err.to_json()), 429)

    def _open(self, hs: HttpSession) -> str:
        self._expire(every_s=30.0)
        self.sessions[hs.state.id] = hs
        self._per_client[hs.client] = self._per_client.get(hs.client, 0) + 1
        log.info("MCP session %s opened (%s)", hs.state.id[:8], hs.state.version)
        return hs.state.id

    def _expired(self, hs: HttpSession, now: float) -> bool:
        """Idle past the TTL: no request in flight, no open stream, none used for `session_ttl_s`."""
        idle_s = now - hs.state.last_used
        return hs.stream is None and not hs.state.inflight and idle_s > self.opts.session_ttl_s

    def _live(self, sid: str) -> HttpSession | None:
        """The session `sid` names, unless it is unknown or expired (then it is forgotten now: the
        sweep below runs only when sessions open, so an idle session's id must not outlive its TTL
        until someone else's initialize)."""
        hs = self.sessions.get(sid)
        if hs is not None and self._expired(hs, time.monotonic()):
            self._drop(sid)
            log.info("MCP session %s expired (idle past %gs)", sid[:8], self.opts.session_ttl_s)
            return None
        return hs

    def _expire(self, every_s: float) -> None:
        """Forget sessions idle past the TTL (no request, no open stream); at most once per `every_s`."""
        now = time.monotonic()
        if now - self._last_sweep < every_s:
            return
        self._last_sweep = now
        idle = [sid for sid, hs in self.sessions.items() if self._expired(hs, now)]
        for sid in idle:
            self._drop(sid)

    def _drop(self, sid: str) -> HttpSession | None:
        hs = self.sessions.pop(sid, None)
        if hs is not None:
            if self.shared is None:
                left = self._per_client.pop(hs.client, 1) - 1
                if left > 0:
                    self._per_client[hs.client] = left
            elif hs.state.tool_sessions:
                # A view of a session on Redis: its tool sessions are recorded there, ended by
                # whichever edge ends the session (or by the sweep after it expired), not here.
                hs.state.tool_sessions.clear()
            self.d.forget(hs.state)
            if hs.stream is not None:
                hs.stream.end()
        return hs

    async def _stream(
        self, request: web.Request, msg: Message, session: Session, hs: HttpSession | None
    ) -> web.StreamResponse:
        """Answer as JSON if the request finishes quietly, else as SSE carrying its notifications.

        In a handshake-era session the call belongs to the session: if the client's connection
        drops, the call goes on and the client resumes the stream with Last-Event-ID.
        """
        resumable = (
            hs is not None
            and session.era == HANDSHAKE
            and HANDSHAKE_VERSIONS.index(session.version) >= _RESUMABLE_FROM
        )
        limit, max_bytes = self.opts.notification_queue, self.opts.outbox.bytes
        mirror: ExchangeMirror | None = None
        if hs is not None and resumable and self.shared is not None:
            ex, mirror = await self._shared_exchange(hs, limit, max_bytes)
        elif hs is not None and resumable:
            ex = hs.new_exchange(limit, max_bytes)
        else:
            ex = Exchange(0, limit, max_bytes)
        rid = msg.id
        if self.shared is None:
            task = asyncio.create_task(self.d.request(msg, session, ex.add, request.headers))
        else:
            task = asyncio.create_task(self._request_shared(msg, session, ex.add, request.headers, hs))
        task.add_done_callback(lambda t: self._finish(ex, _outcome(t, rid)))
        sid = hs.state.id if hs else ""
        try:
            changed = ex.changed
            if not ex.events:  # wait for the first event, at most sse_defer_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.sse_defer_s):
                        await changed.wait()
            if ex.final and ex.offset + len(ex.events) == 1:  # finished without notifications: plain JSON
                if hs is not None:
                    self._delivered(hs, ex.number, mirror)
                resp = _outcome(task, rid)
                return _json(resp, _status(resp, session), sid)
            sse = web.StreamResponse(headers={**SSE_HEADERS, **({H_SESSION: sid} if sid else {})})
            await sse.prepare(request)
            if ex.resumable:
                await sse.write(ex.priming())
            await ex.follow(sse, 0, self.opts.sse_keepalive_s, self.opts.write_timeout_s)
            if hs is not None:
                self._delivered(hs, ex.number, mirror)
            await sse.write_eof()
            return sse
        except _CLOSED as exc:
            self._cut(request, exc)
            log.debug("MCP client left during %s", msg.method)
            return web.Response(status=499)
        finally:
            if not task.done() and not ex.resumable:  # the client went away: cancel the call
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _finish(self, ex: Exchange, resp: dict[str, Any]) -> None:
        ex.add(resp, final=True)
        self.svc.stats.notifications_dropped += ex.dropped

    def _delivered(self, hs: HttpSession, number: int, mirror: ExchangeMirror | None) -> None:
        """A request's stream reached its client through the response: nobody resumes it again."""
        hs.forget_exchange(number)
        if mirror is not None and self.shared is not None:
            shared, sid = self.shared, hs.state.id

            async def forget() -> None:
                await mirror.flushed()  # else its last write would bring the stream back
                await shared.forget_exchange(sid, number)

            shared.own(asyncio.get_running_loop().create_task(forget()))

    # -- GET / DELETE ------------------------------------------------------------

    async def _known(self, request: web.Request) -> tuple[HttpSession | None, web.Response | None]:
        sid = request.headers.get(H_SESSION)
        if sid is None:
            return None, _fail(400, "Bad Request: Mcp-Session-Id header is required")
        ident = identity(request.headers)
        if self.shared is not None:
            try:
                hs = await self._view(sid, ident)
            except Unavailable as exc:
                return None, _unavailable(None, exc)
        else:
            hs = self._live(sid)
            if hs is not None and not hmac.compare_digest(hs.identity, ident):
                hs = None  # another identity's session: the same answer as an unknown one
        if hs is None:
            return None, _fail(404, f"Session not found: {sid[:64]!r}")
        return hs, None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if _SSE not in request.headers.get("Accept", ""):
            return _fail(406, "Not Acceptable: the GET stream is text/event-stream")
        hs, error = await self._known(request)
        if hs is None:
            assert error is not None
            return error
        last = parse_event_id(request.headers.get(H_LAST_EVENT))
        if last is not None and last[0] > 0:
            return await self._resume(request, hs, *last)
        if hs.stream is not None:  # the client reconnected: the old stream is dead to it
            hs.stream.end()
        stream = hs.stream = _Stream()
        self._streams.add(stream)
        hs.state.last_used = time.monotonic()
        resp = web.StreamResponse(headers={**SSE_HEADERS, H_SESSION: hs.state.id})
        try:
            await resp.prepare(request)
            await resp.write(b": stream open\n\n")
            # Resume after Last-Event-ID (a listing revision); a fresh stream after what the session saw.
            await self._follow_listing(resp, hs, stream, hs.seen if last is None else last[1])
            await resp.write_eof()
        except _CLOSED:
            log.debug("MCP session %s: standalone stream closed by the client", hs.state.id[:8])
        finally:
            self._streams.discard(stream)
            if hs.stream is stream:
                hs.stream = None
            hs.state.last_used = time.monotonic()
        return resp

    async def _follow_listing(
        self, resp: web.StreamResponse, hs: HttpSession, stream: _Stream, seen: int
    ) -> None:
        """One list_changed whenever the announced listing differs from what the client saw, until ended.

        Nothing is queued: however many announcements happen while a write waits on a slow client,
        the next write carries one list_changed for the latest.
        """
        while not stream.ended and not self.svc.closing.is_set():
            stream.wake.clear()
            revision = self.svc.listing_revision
            if revision != seen:
                await resp.write(frame(_LIST_CHANGED, revision))
                seen = hs.seen = revision
                if self.shared is not None:
                    await self.shared.saw(hs.state.id, revision)
                continue
            try:
                async with asyncio.timeout(self.opts.sse_keepalive_s):
                    await stream.wake.wait()
            except TimeoutError:
                await resp.write(KEEPALIVE)
                if self.shared is not None and not await self._still_open(hs):
                    return  # ended on another edge (or expired): so is its stream

    async def _resume(
        self, request: web.Request, hs: HttpSession, number: int, after: int
    ) -> web.StreamResponse:
        """GET with Last-Event-ID `<number>-<n>`: the rest of a request's stream, through its response."""
        if self.shared is not None:
            return await self._resume_shared(request, hs, number, after)
        ex = hs.exchanges.get(number)
        if ex is None:
            return _fail(404, f"Stream {number} of this session is finished or unknown")
        resp = web.StreamResponse(headers={**SSE_HEADERS, H_SESSION: hs.state.id})
        try:
            await resp.prepare(request)
            await ex.follow(resp, after, self.opts.sse_keepalive_s, self.opts.write_timeout_s)
            hs.forget_exchange(number)
            await resp.write_eof()
        except _CLOSED as exc:
            self._cut(request, exc)
            log.debug("MCP session %s: resumed stream %d closed by the client", hs.state.id[:8], number)
        return resp

    def _cut(self, request: web.Request, exc: BaseException) -> None:
        """A client that stopped reading an answer: drop what the transport holds for it, and the answer."""
        if isinstance(exc, WriteStalled):
            self.svc.stats.slow_cut += 1
            self.svc.stats.first_cut.set()
            if request.transport is not None:
                request.transport.abort()

    async def _delete(self, request: web.Request) -> web.Response:
        if self.shared is not None:
            return await self._delete_shared(request)
        hs, error = await self._known(request)
        if hs is None:
            assert error is not None
            return error
        self._drop(hs.state.id)
        log.info("MCP session %s closed by the client", hs.state.id[:8])
        return web.Response(status=200)

    def close(self) -> None:
        """Shutting down: end every standalone stream and forget every session (with sessions on
        Redis, this edge's views only: the sessions live on, served by the other edges)."""
        for sid in list(self.sessions):
            self._drop(sid)

    # -- sessions on Redis (self.shared) -------------------------------------------------

    async def _post_shared(self, request: web.Request, msg: Message, sse_ok: bool) -> web.StreamResponse:
        """POST with sessions on Redis: the session is looked up (and its TTL refreshed) there."""
        sid = request.headers.get(H_SESSION)
        if msg.method == "initialize" or sid is None:
            hs, session = self._session_for(request, msg)
        else:
            try:
                hs = await self._view(sid, identity(request.headers))
            except Unavailable as exc:
                return _unavailable(msg.id, exc)
            session = hs.state if hs is not None else None
        return await self._serve(request, msg, sse_ok, hs, session)

    async def _view(self, sid: str, ident: str) -> HttpSession | None:
        """This edge's view of session `sid`, if it is alive under `ident` (its TTL refreshed): the one
        held here, else built from its record. Raise Unavailable when Redis fails and no view is
        held here (one that is goes on serving: calls keep flowing while Redis is away)."""
        assert self.shared is not None
        hs = self.sessions.get(sid)
        if hs is not None and not hmac.compare_digest(hs.identity, ident):
            return None  # another identity's session: the same answer as an unknown one
        try:
            alive = await self.shared.touch(sid, ident, load=hs is None)
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
            hs = self._adopt(alive)
        return hs

    def _adopt(self, rec: SessionRecord) -> HttpSession:
        """A view of a session another edge opened (or this one, before its view was let go)."""
        state = Session(id=rec.id, transport="http", era=HANDSHAKE, version=rec.version)
        state.client_info, state.initialized, state.tool_sessions = rec.client_info, True, HeldMirror()
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

    async def _create(self, hs: HttpSession, rid: Any) -> web.Response | None:
        """Record a session `initialize` opened; None when done, else the refusal (429, 503)."""
        assert self.shared is not None
        state = hs.state
        rec = SessionRecord(state.id, hs.identity, hs.client, state.version, state.client_info, hs.seen)
        try:
            await self._sweep()
            await self.shared.create(rec, self.opts.max_sessions, self.opts.sessions_per_client)
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
        assert self.shared is not None
        now = time.monotonic()
        if now - self._last_shared_sweep < 30.0:
            return
        self._last_shared_sweep = now
        self._expire(every_s=0.0)  # idle views too
        self.d.tool_sessions.end(await self.shared.sweep())

    async def _request_shared(
        self, msg: Message, session: Session, send: Send | None, headers: Headers, hs: HttpSession | None
    ) -> dict[str, Any] | None:
        """Run a request; before its answer leaves, write the tool sessions it opened to Redis (so
        an edge that ends the session ends them), and refresh a TTL a long request outlived."""
        assert self.shared is not None
        started = time.monotonic()
        resp = await self.d.request(msg, session, send, headers)
        if hs is None or not hs.state.id:
            return resp
        held = hs.state.tool_sessions
        try:
            if isinstance(held, HeldMirror) and held.pending:
                self.d.tool_sessions.end(await self.shared.hold(hs.state.id, held))
            if time.monotonic() - started > self.opts.session_ttl_s / 3:
                await self.shared.touch(hs.state.id, hs.identity, load=False)
        except Unavailable as exc:  # kept in this view: ended with it here, or by the tool's own TTL
            log.warning("MCP session %s: tool sessions not recorded: %s", hs.state.id[:8], exc.message)
        return resp

    async def _still_open(self, hs: HttpSession) -> bool:
        """An open stream's keepalive: the session is alive (its TTL refreshed), or it ended."""
        assert self.shared is not None
        try:
            alive = await self.shared.touch(hs.state.id, hs.identity, load=False)
        except Unavailable:
            return True  # not known to have ended: the stream goes on
        if not alive:
            self._drop(hs.state.id)
        return bool(alive)

    async def _shared_exchange(
        self, hs: HttpSession, limit: int, max_bytes: int
    ) -> tuple[Exchange, ExchangeMirror | None]:
        """A resumable stream numbered in Redis, its events written there for any edge to resume;
        with Redis away, a stream that is not resumable (the call itself goes on)."""
        assert self.shared is not None
        try:
            number = await self.shared.open_exchange(hs.state.id)
        except Unavailable as exc:
            log.warning("MCP session %s: a stream that cannot resume: %s", hs.state.id[:8], exc.message)
            number = 0
        if not number:
            return Exchange(0, limit, max_bytes), None
        ex = hs.new_exchange(limit, max_bytes, number)
        ex.mirror = mirror = self.shared.mirror(hs.state.id, number)
        return ex, mirror

    async def _resume_shared(
        self, request: web.Request, hs: HttpSession, number: int, after: int
    ) -> web.StreamResponse:
        """Resume a request's stream from Redis, whichever edge runs the call."""
        assert self.shared is not None
        sid, keepalive_s = hs.state.id, self.opts.sse_keepalive_s
        events = self.shared.events(sid, number, after, keepalive_s)
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
                await self.shared.forget_exchange(sid, number)
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

    async def _delete_shared(self, request: web.Request) -> web.Response:
        """DELETE: the session ends on every edge; its tool sessions are ended from here."""
        assert self.shared is not None
        sid = request.headers.get(H_SESSION)
        if sid is None:
            return _fail(400, "Bad Request: Mcp-Session-Id header is required")
        ident = identity(request.headers)
        try:
            held = await self.shared.end(sid, ident)
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


async def _after(first: _T, rest: AsyncIterator[_T]) -> AsyncIterator[_T]:
    yield first
    async for item in rest:
        yield item


def _outcome(task: asyncio.Task[dict[str, Any] | None], rid: Any) -> dict[str, Any]:
    if task.cancelled():
        return _cancelled(rid)
    return task.result() or _cancelled(rid)


def _status(resp: dict[str, Any], session: Session) -> int:
    error = resp.get("error")
    if error is None or session.era == HANDSHAKE:
        return 200
    return HTTP_STATUS.get(error.get("code", 0), 200)

"""Streamable HTTP at `/mcp`: a thin aiohttp shell over the dispatcher.

- POST carries one JSON-RPC message. Notifications and client responses get
  202. A request is answered with `application/json`, unless it reports
  progress or asks for log messages (or runs past `sse_defer_s`, or is a `subscriptions/listen`), in
  which case the answer switches to `text/event-stream` and carries the
  notifications before the response. A tools/call whose installed server asks
  the client something (sampling, elicitation, roots: edge/mcp/client_requests.py)
  carries the request on that stream; the client's response POSTed to the session
  answers it.
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
- The session table here is the whole truth on one edge (`make run`); with
  sessions on Redis, `ClusterHttp` (http_cluster.py) overrides the hooks
  marked below, and the table holds this edge's views of the cluster's sessions.
- 2026-07-28: every POST stands alone (no session); closing the connection
  cancels the request.
- Every request passes the Origin/Host check (403) and the size limit (413);
  a session runs at most `max_in_flight` requests (more: 429, -32029).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.common.errors import ResourceExhausted

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
)
from ._sse import KEEPALIVE, SSE_HEADERS, Exchange, SharedBytes, WriteStalled, frame, parse_event_id
from .dispatcher import HANDSHAKE, Headers, Send, Session
from .mcp_service import McpService
from .views import ToolView

log = logging.getLogger(__name__)
_JSON = "application/json"
_SSE = "text/event-stream"
_CLOSED = (ConnectionError, asyncio.IncompleteReadError)
_KEPT_EXCHANGES = 64
# The view (edge/mcp/views.py) a request of `/mcp/servers/<name>` is served with; none: `/mcp`'s.
VIEW = web.RequestKey("mcp_view", ToolView)
_LIST_CHANGED = notification("notifications/tools/list_changed", {})
# Resumable request streams need a client that understands priming events (2025-11-25 and later).
_RESUMABLE_FROM = HANDSHAKE_VERSIONS.index("2025-11-25")


class _Stream:
    """One open standalone GET stream: woken at each announcement, ended when replaced or dropped."""

    __slots__ = ("ended", "notes", "wake")

    def __init__(self, limit: int = 0) -> None:
        self.wake = asyncio.Event()
        self.ended = False
        # Notifications for the session (installed servers' log messages); the oldest go first
        # when the client reads too slowly.
        self.notes: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(limit, 1))

    def push(self, note: dict[str, Any]) -> None:
        self.notes.append(note)
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()


def identity(headers: Mapping[str, str], endpoint: str = "") -> str:
    """Who presents a session id: the SHA-256 of the request's Authorization header ("" hashed too),
    and of the virtual server it was opened on (`/mcp/servers/<endpoint>`): a session serves one
    endpoint only, on every edge."""
    auth = headers.get("Authorization", "")
    return hashlib.sha256((f"{auth}\0{endpoint}" if endpoint else auth).encode()).hexdigest()


@dataclass(eq=False)
class HttpSession:
    """A handshake-era session: dispatcher state, its client address, and where its stream stands."""

    state: Session
    client: str
    seen: int  # the listing revision this session last heard of (at initialize, or its stream's last)
    identity: str = ""  # who opened it (identity()): only they may use it
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


def _cancelled(rid: Any) -> dict[str, Any]:
    return error_response(rid, REQUEST_CANCELLED, "Request cancelled")


class _TooLarge(Exception):
    pass


class StreamableHttp:
    """The `/mcp` endpoint, its sessions in this edge's memory. Methods marked "hook" are where
    `ClusterHttp` (sessions on Redis) differs."""

    scope = "edge"  # what `max_sessions` counts the sessions of
    shared = False  # sessions in Redis, shared by every edge (http_cluster.py): Session.shared

    def __init__(self, svc: McpService) -> None:
        self.svc = svc
        self.d = svc.dispatcher
        self.opts = svc.opts
        self.sessions: dict[str, HttpSession] = {}
        self._per_client: dict[str, int] = {}
        self._streams: set[_Stream] = set()
        self._last_sweep = time.monotonic()
        svc.listing_listeners.append(self._announce)

    def _view_of(self, request: web.Request) -> ToolView | None:
        """The view the request is served with: its virtual server's, else `/mcp`'s."""
        view: ToolView | None = request.get(VIEW, self.svc.views.main)
        return view

    def _identity(self, request: web.Request) -> str:
        view = request.get(VIEW)
        return identity(request.headers, view.key if view is not None else "")

    def _revision(self, view: ToolView | None) -> int:
        """The registry revision whose listing of `view` was announced last."""
        return self.svc.listing_revision if view is None else view.revision

    def _announce(self) -> None:
        for stream in self._streams:
            stream.wake.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers, guard = request.headers, self.svc.guard
        # A pair the guard allowed before passes without asking it again (edge.origin, `passed`).
        refused = None
        if (headers.get("Origin"), headers.get("Host")) not in guard.passed:
            refused = guard.refusal(headers)
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
        return await self._dispatch(request, msg, sse_ok)

    async def _dispatch(self, request: web.Request, msg: Message, sse_ok: bool) -> web.StreamResponse:
        """Hook: find (or open) the message's session, then serve it."""
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
        if msg.kind == RESPONSE:  # to a request the edge sent this session's client
            if not self.d.response(msg, session) and hs is not None and msg.params is not None:
                await self._answer_elsewhere(hs, msg.params)
            return _json(None, 202)
        assert msg.kind == REQUEST
        if hs is not None and len(session.inflight) >= self.opts.max_in_flight:
            return _json(self.svc.refuse_busy(msg.id, "session"), 429, hs.state.id)
        if msg.method == "subscriptions/listen" and not sse_ok:
            return _fail(406, "Not Acceptable: subscriptions/listen answers with text/event-stream")
        sid = hs.state.id if hs is not None and msg.method != "initialize" else ""
        streams = sse_ok and (
            ((msg.progress is not None or msg.logs) and msg.method != "initialize")
            or self.d.may_ask(msg, session)
        )
        if msg.method == "subscriptions/listen" or streams:
            return await self._stream(request, msg, session, hs if sid else None)
        resp = await self._run(msg, session, None, request.headers, hs)
        if resp is None:
            resp = _cancelled(msg.id)
        if msg.method == "initialize":
            assert hs is not None
            if "result" not in resp:
                self.d.forget(session)
            else:
                refused = await self._opened(hs, msg.id)
                if refused is not None:
                    return refused
                sid = hs.state.id
        return _json(resp, _status(resp, session), sid)

    def _run(
        self, msg: Message, session: Session, send: Send | None, headers: Headers, hs: HttpSession | None
    ) -> Coroutine[Any, Any, dict[str, Any] | None]:
        """Hook: the dispatcher's answer to a request (the coroutine itself: no frame of its own)."""
        return self.d.request(msg, session, send, headers)

    async def _opened(self, hs: HttpSession, rid: Any) -> web.Response | None:
        """Hook: keep a session `initialize` opened; None when kept, else the refusal to answer."""
        self._open(hs)
        return None

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
            view = self._view_of(request)
            hs = HttpSession(
                Session(id=secrets.token_hex(16), transport="http", view=view, shared=self.shared),
                client=request.remote or "",
                seen=self._revision(view),
                identity=self._identity(request),
            )
            return hs, hs.state
        sid = request.headers.get(H_SESSION)
        if sid is not None:
            known = self._live(sid)
            if known is None or not hmac.compare_digest(known.identity, self._identity(request)):
                return None, None  # another identity's session: the same answer as an unknown one
            return known, known.state
        one_off = Session(id="", transport="http", view=self._view_of(request))
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
        else:
            what, limit = f"the {self.scope} already holds {most} MCP sessions", most
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
        """Hook: forget a session: end its stream, cancel what it runs, end its tool sessions."""
        hs = self.sessions.pop(sid, None)
        if hs is not None:
            left = self._per_client.pop(hs.client, 1) - 1
            if left > 0:
                self._per_client[hs.client] = left
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
        if hs is not None and resumable:
            ex = await self._resumable(hs, limit, max_bytes)
        else:
            ex = Exchange(0, limit, max_bytes)
        rid = msg.id
        task = asyncio.create_task(self._run(msg, session, ex.add, request.headers, hs))
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
                    self._delivered(hs, ex)
                resp = _outcome(task, rid)
                return _json(resp, _status(resp, session), sid)
            sse = web.StreamResponse(headers={**SSE_HEADERS, **({H_SESSION: sid} if sid else {})})
            await sse.prepare(request)
            if ex.resumable:
                await sse.write(ex.priming())
            await ex.follow(sse, 0, self.opts.sse_keepalive_s, self.opts.write_timeout_s)
            if hs is not None:
                self._delivered(hs, ex)
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

    async def _resumable(self, hs: HttpSession, limit: int, max_bytes: int) -> Exchange:
        """Hook: a resumable stream of the session for one request."""
        return hs.new_exchange(limit, max_bytes)

    def _delivered(self, hs: HttpSession, ex: Exchange) -> None:
        """Hook: a request's stream reached its client through the response: nobody resumes it again."""
        hs.forget_exchange(ex.number)

    # -- GET / DELETE ------------------------------------------------------------

    async def _known(self, request: web.Request) -> tuple[HttpSession | None, web.Response | None]:
        """Hook: the session a GET or DELETE names, or the answer refusing it."""
        sid = request.headers.get(H_SESSION)
        if sid is None:
            return None, _fail(400, "Bad Request: Mcp-Session-Id header is required")
        hs = self._live(sid)
        if hs is not None and not hmac.compare_digest(hs.identity, self._identity(request)):
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
        stream = hs.stream = _Stream(self.opts.notification_queue)
        hs.state.push = stream.push  # log messages (not list_changed, which the listing revision carries)
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
                hs.state.push = None
            hs.state.last_used = time.monotonic()
        return resp

    async def _follow_listing(
        self, resp: web.StreamResponse, hs: HttpSession, stream: _Stream, seen: int
    ) -> None:
        """One list_changed whenever the announced listing differs from what the client saw, until ended.

        Nothing is queued: however many announcements happen while a write waits on a slow client,
        the next write carries one list_changed for the latest.
        """
        view = hs.state.view
        revisions = self.svc.feature_revisions if view is None else view.lists_revisions
        features = dict(revisions)  # announced from the stream's opening on
        while not stream.ended and not self.svc.closing.is_set():
            stream.wake.clear()
            while stream.notes:
                await resp.write(frame(stream.notes.popleft()))
            for kind, moved in revisions.items():
                if features[kind] != moved:
                    features[kind] = moved
                    await resp.write(frame(notification(f"notifications/{kind}/list_changed", {})))
            revision = self._revision(hs.state.view)
            if revision != seen:
                await resp.write(frame(_LIST_CHANGED, revision))
                seen = hs.seen = revision
                await self._announced(hs, revision)
                continue
            try:
                async with asyncio.timeout(self.opts.sse_keepalive_s):
                    await stream.wake.wait()
            except TimeoutError:
                await resp.write(KEEPALIVE)
                if not await self._still_open(hs):
                    return  # ended on another edge (or expired): so is its stream

    async def _announced(self, hs: HttpSession, revision: int) -> None:
        """Hook: the session's stream announced the listing at `revision` (`hs.seen` says so here)."""

    async def _answer_elsewhere(self, hs: HttpSession, response: dict[str, Any]) -> None:
        """Hook: a client's response no request of this edge waits for (here: dropped; no other
        edge holds the session's requests)."""

    async def _still_open(self, hs: HttpSession) -> bool:
        """Hook: at an open stream's keepalive, whether its session still exists (here: it does,
        or its stream would have been ended with it)."""
        return True

    async def _resume(
        self, request: web.Request, hs: HttpSession, number: int, after: int
    ) -> web.StreamResponse:
        """Hook: GET with Last-Event-ID `<number>-<n>`: the rest of a request's stream, through its
        response."""
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
        """Hook: DELETE ends the session."""
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


def _outcome(task: asyncio.Task[dict[str, Any] | None], rid: Any) -> dict[str, Any]:
    if task.cancelled():
        return _cancelled(rid)
    return task.result() or _cancelled(rid)


def _status(resp: dict[str, Any], session: Session) -> int:
    error = resp.get("error")
    if error is None or session.era == HANDSHAKE:
        return 200
    return HTTP_STATUS.get(error.get("code", 0), 200)

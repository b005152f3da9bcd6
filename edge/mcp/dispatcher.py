"""The transport-independent MCP dispatcher: JSON-RPC messages in, responses and notifications out.

Both transports (Streamable HTTP, WebSocket) decode a message, hand it here
with a small `Session`, and write back what comes out. Nothing here does I/O:
tool calls go through the injected `execute` (the gateway), notifications go
through the `send` callback the transport passes with each request.

Two protocol eras are served side by side, as the official SDK speaks them:

- handshake era (2024-11-05 .. 2025-11-25): `initialize` fixes the session's
  version; `ping`; `notifications/cancelled` cancels an in-flight request;
  `notifications/tools/list_changed` is pushed to the session.
- 2026-07-28: no handshake; every request carries its protocol version,
  client info and capabilities in `params._meta` (checked against the HTTP
  headers when there are any); `server/discover`; results carry `resultType`
  (and `ttlMs`/`cacheScope` where cacheable); change notifications travel only
  on `subscriptions/listen` streams.

Each era has its method -> handler table, as the SDK's low-level `Server` keeps
`_request_handlers`: `request` admits the message to its era, looks its method up
(missing: -32601), runs the handler, and is the one place that turns what a
handler raises into a JSON-RPC error (ProtocolError as it is, MeshError through
`results.rpc_error`, anything else -32603). Handlers do only their method's
work; the one decision they keep is `tools/call`'s: which mesh errors are
isError results the model can act on (`results.is_result`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolscore.v1 import executor_pb2 as ex

from services.common import authority
from services.common.errors import MeshError, ResourceExhausted
from services.common.jsonvalue import JsonTooDeep, TooLarge, to_struct
from services.router.backchannel import Backchannel
from services.router.router import refuse_arguments

from . import client_requests, envelope, input_required, results
from ._protocol import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    H_VERSION,
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_HANDSHAKE,
    LIMIT_REACHED,
    LOG_LEVEL_KEY,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
    SUBSCRIPTION_ID_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    ProtocolError,
    RequestId,
    notification,
    result_response,
)
from .federation import Federation, ServerError
from .resource_subscriptions import ResourceSubscriptions
from .tool_list import Catalog, Listing, McpTool
from .tool_search import CALL, FIND
from .tool_sessions import SESSION_FIELD, Held, ToolSessions
from .views import ToolView, ViewSpec

log = logging.getLogger(__name__)

HANDSHAKE, MODERN = "handshake", "modern"
Send = Callable[[dict[str, Any]], None]
ExecuteFn = Callable[..., Awaitable[ex.ExecuteResponse]]


@dataclass(eq=False)
class Session:
    """What the dispatcher knows about one client: a WebSocket connection, an HTTP session, or one request."""

    id: str
    transport: str  # "http" | "ws"
    era: str = ""  # "", HANDSHAKE or MODERN; a WebSocket connection is locked to the era it opens with
    version: str = ""
    client_info: Any = None
    initialized: bool = False
    # Where unsolicited notifications (handshake-era list_changed) go; None: nowhere.
    push: Send | None = None
    inflight: dict[RequestId, asyncio.Task[Any]] = field(default_factory=dict)
    cancelled: set[RequestId] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)
    # The lowest level of installed servers' log messages it asked for (logging/setLevel); "": none.
    log_level: str = ""
    # Tool sessions (the executor's) its calls opened, ended with it; None once it has ended (then
    # no request of it starts any more).
    tool_sessions: dict[str, Held] | None = field(default_factory=dict)
    # What it lists and calls (edge/mcp/views.py): the endpoint it was opened on; None: `/mcp`,
    # listing the catalog as it is.
    view: ToolView | None = None
    # The capabilities its client declared at initialize (handshake era), and the requests of
    # installed servers waiting for its answers (edge/mcp/client_requests.py), once there are any.
    capabilities: dict[str, Any] | None = None
    asks: client_requests.ClientRequests | None = None
    # Its state lives in Redis, shared by every edge (sessions across edges): what one edge alone
    # holds for it (resource subscriptions) is not offered.
    shared: bool = False


@dataclass(frozen=True)
class ServerOptions:
    """What the server says about itself and how it pages and caches."""

    name: str = "toolscore-mesh"
    version: str = "0.1.0"
    instructions: str = (
        "ToolScore Mesh: every capability of every registered tool, named <tool_id>__<action>."
    )
    page_size: int = 100
    # 2026-07-28 cache hints. The tool list changes whenever the registry does, so its TTL is 0
    # (clients that want pushes open a subscriptions/listen stream); discover results are stable.
    tools_ttl_ms: int = 0
    discover_ttl_ms: int = 60_000
    # Arguments are checked against this before their Struct is built (hub.max_argument_bytes).
    max_argument_bytes: int = 1024 * 1024


# RFC 5424 severities, as MCP names them, lowest first.
_LEVELS = {
    name: rank
    for rank, name in enumerate(
        ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
    )
}


class _Cancelled(Exception):
    """The client cancelled this request: no response is owed (HTTP answers -32800 to end the exchange)."""


# What a request handler gets: the message, its session, where its notifications go (None: nowhere)
# and, in the 2026-07-28 era only, the HTTP headers that mirror its envelope.
Headers = Mapping[str, str] | None
Handler = Callable[[Message, Session, Send | None, Headers], Awaitable[dict[str, Any]]]
NotificationHandler = Callable[[Message, Session], None]
# Served in the handshake era before `initialize` has fixed the session's version.
_BEFORE_HANDSHAKE = frozenset({"initialize", "ping"})


@dataclass(frozen=True, slots=True)
class Method:
    """One entry of a method table: its handler and whether the request is `cancellable` (tracked
    while it runs, so that `notifications/cancelled` naming it cancels it, and its id is in flight)."""

    handler: Handler
    cancellable: bool = False


class Dispatcher:
    """Serves MCP requests and notifications for every transport.

    A request is looked up in its era's method table (a method missing from it is -32601) and run
    by its handler, which does only its method's work; `request` alone turns what a handler raises
    into a JSON-RPC error, as the SDK's `Server._handle_request` does. Notifications are looked up
    in a table too; unknown ones are ignored, as JSON-RPC requires.
    """

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        execute: ExecuteFn,
        opts: ServerOptions | None = None,
        federation: Federation | None = None,
        subscriptions: ResourceSubscriptions | None = None,
    ) -> None:
        self._catalog = catalog
        # tools/call's name table, as of the catalog when `tools_moved` was last seen set; whoever
        # follows the registry sets it at each change (McpService), so a call reads a dict.
        self._by_name: Mapping[str, McpTool] = {}
        self.tools_moved = True
        self._execute = execute
        self.tool_sessions = ToolSessions(execute)
        # 2026-07-28 calls waiting for their client's input (edge/mcp/input_required.py).
        self.pending = input_required.PendingCalls()
        self.opts = opts or ServerOptions()
        self._info = {"name": self.opts.name, "version": self.opts.version}
        self._capabilities: dict[str, Any] = {"tools": {"listChanged": True}}
        self._pushed: set[Session] = set()  # handshake-era sessions that get list_changed
        # Open 2026-07-28 listen streams, with the view of their session.
        self._listens: dict[object, tuple[ToolView | None, Callable[[], None]]] = {}
        self._logging: set[Session] = set()  # handshake-era sessions that asked for log messages
        # 2026-07-28 requests in flight that asked for log messages: server -> {key: (lowest, send)}.
        self._log_routes: dict[str, dict[object, tuple[int, Send]]] = {}
        # The same streams' prompts and resources list_changed, by kind, with their session's view.
        self._feature_listens: dict[object, tuple[ToolView | None, dict[str, Callable[[], None]]]] = {}
        self._closed = asyncio.Event()
        # The method tables, one per era (docs/mcp.md, "Protocol eras").
        self._handshake: dict[str, Method] = {
            "initialize": Method(self._initialize),
            "ping": Method(self._ping),
            "tools/list": Method(self._list_tools),
            "tools/call": Method(self._call_tool, cancellable=True),
        }
        self._modern: dict[str, Method] = {
            "server/discover": Method(self._discover),
            "tools/list": Method(self._list_tools_cacheable),
            "tools/call": Method(self._call_tool, cancellable=True),
            "subscriptions/listen": Method(self._listen, cancellable=True),
        }
        # Installed servers' prompts, resources and completion (edge/mcp/federation.py), and their
        # resources' subscriptions (edge/mcp/resource_subscriptions.py).
        self.federation = federation
        self.subscriptions = subscriptions if federation is not None else None
        if federation is not None:
            listed = {"listChanged": True}
            self._capabilities.update(prompts=listed, resources=dict(listed), completions={})
            self._handshake["logging/setLevel"] = Method(self._set_level)
            if subscriptions is not None:  # 2026-07-28: on subscriptions/listen streams
                self._capabilities["resources"]["subscribe"] = True
                self._handshake["resources/subscribe"] = Method(self._subscribe, cancellable=True)
                self._handshake["resources/unsubscribe"] = Method(self._unsubscribe)
            for method, handler in self._federated(federation).items():
                self._handshake[method] = Method(handler, cancellable=True)
                # A read's contents may differ by caller on the server's side: private, as the SDK says.
                scope = "public" if method.endswith("/list") else ""
                scope = "private" if method == "resources/read" else scope
                wrapped = _cacheable(handler, 0, scope) if scope else handler
                self._modern[method] = Method(wrapped, cancellable=True)
        self._notifications: dict[str, NotificationHandler] = {
            "notifications/initialized": self._initialized,
            "notifications/cancelled": self._cancel,
        }

    # -- entry points --------------------------------------------------------

    async def request(
        self,
        msg: Message,
        session: Session,
        send: Send | None = None,
        headers: Headers = None,
    ) -> dict[str, Any] | None:
        """The response to one request, or None when the client cancelled it (no response is owed)."""
        session.last_used = time.monotonic()
        try:
            modern = msg.method != "initialize" and self._is_modern(msg, session, headers)
            if modern:
                self._admit_modern(msg, session, headers)
                methods = self._modern
            else:
                self._admit_handshake(msg, session)
                methods, headers = self._handshake, None  # headers mirror only a 2026-07-28 envelope
            method = methods.get(msg.method)
            if method is None:
                raise ProtocolError(METHOD_NOT_FOUND, f"Method not found: {msg.method}", msg.method)
            if method.cancellable:
                result = await self._tracked(method.handler, msg, session, send, headers)
            else:
                result = await method.handler(msg, session, send, headers)
            if modern:
                self._stamp(result)
            return result_response(msg.id, result)
        except ProtocolError as exc:
            return exc.response(msg.id)
        except MeshError as exc:
            return results.rpc_error(exc).response(msg.id)
        except _Cancelled:
            return None
        except Exception:
            log.exception("MCP request %s failed", msg.method)
            return ProtocolError(INTERNAL_ERROR, "Internal error").response(msg.id)
        finally:  # idle time (mcp_session_ttl_s) counts from when the last request ended
            session.last_used = time.monotonic()

    def notification(self, msg: Message, session: Session) -> None:
        """Apply a client notification; unknown ones are ignored, as JSON-RPC requires."""
        session.last_used = time.monotonic()
        handler = self._notifications.get(msg.method)
        if handler is None:
            return
        try:
            handler(msg, session)
        except Exception:  # a notification has no answer to carry a fault: the transport goes on
            log.exception("MCP notification %s failed", msg.method)

    @staticmethod
    def _backchannel(
        session: Session, send: Send | None, on_progress: Callable[[ex.Progress], None] | None
    ) -> Callable[[ex.Progress], None]:
        """A call's progress hook, carrying how installed servers' requests reach its client
        (services/router/backchannel.py): asked on the call's own stream, or refused saying why."""
        caps = session.capabilities
        if session.era == HANDSHAKE and client_requests.declared(caps):
            if send is not None and session.id:
                assert caps is not None
                if session.asks is None:
                    session.asks = client_requests.ClientRequests()
                return Backchannel(on_progress, session.asks.asker(send, caps))
            refuse = client_requests.NO_WAY_BACK
        else:  # a 2026-07-28 client that can be asked runs its call as a pending one instead
            refuse = client_requests.UNDECLARED
        # No allocation on the common path (no progress token): the refusal is shared.
        return refuse if on_progress is None else Backchannel(on_progress, refuse.ask)

    @staticmethod
    def may_ask(msg: Message, session: Session) -> bool:
        """Whether a request may carry requests of a server to the client (a tools/call of a
        handshake-era session whose client declared sampling, elicitation or roots): a transport
        answers it where it can carry them (Streamable HTTP: an SSE stream)."""
        return (
            msg.method == "tools/call"
            and session.era == HANDSHAKE
            and bool(session.id)
            and client_requests.declared(session.capabilities)
        )

    def response(self, msg: Message, session: Session) -> bool:
        """A client's response to a request the edge sent it (edge/mcp/client_requests.py): it
        answers a request of this session only; False when none here waits for it."""
        session.last_used = time.monotonic()
        return session.asks is not None and msg.params is not None and session.asks.answer(msg.params)

    def tools_changed(self, view: ToolView | None = None) -> None:
        """Tell every subscriber of `view`'s endpoint (None: `/mcp` unfiltered) that its tool list
        changed."""
        note = notification("notifications/tools/list_changed", {})
        for s in list(self._pushed):
            if s.push is not None and s.view is view:
                s.push(note)
        for of, fire in list(self._listens.values()):
            if of is view:
                fire()

    def lists_changed(self, kind: str, servers: Collection[str]) -> None:
        """Tell every subscriber whose endpoint's view holds one of `servers` that the federated
        servers' `kind` list ("prompts" or "resources") changed."""
        note = notification(f"notifications/{kind}/list_changed", {})
        for s in list(self._pushed):
            if s.push is not None and _holds(s.view, servers):
                s.push(note)
        for view, fires in list(self._feature_listens.values()):
            fire = fires.get(kind)
            if fire is not None and _holds(view, servers):
                fire()

    def server_log(self, tool_id: str, params: dict[str, Any]) -> None:
        """An installed server's log message, to every session that asked for its level."""
        rank = _LEVELS.get(params.get("level"))  # type: ignore[arg-type]
        if rank is None:
            return
        logger = params.get("logger")
        note = notification(
            "notifications/message",
            {**params, "logger": f"{tool_id}/{logger}" if isinstance(logger, str) and logger else tool_id},
        )
        for s in list(self._logging):
            if s.push is not None and rank >= _LEVELS[s.log_level]:
                s.push(note)
        for lowest, send in list(self._log_routes.get(tool_id, {}).values()):
            if rank >= lowest:
                send(note)

    def hear_logs(self, session: Session, level: str) -> None:
        """`session` hears installed servers' log messages at `level` and above (logging/setLevel;
        a session kept on Redis: its level as recorded there)."""
        session.log_level = level
        if session.id:  # a session that outlives the request (a one-off request has nowhere to hear)
            self._logging.add(session)

    def _route_logs(self, tool_id: str, msg: Message, send: Send | None) -> Callable[[], None] | None:
        """A 2026-07-28 request that carries a log level: server `tool_id`'s log messages at that
        level and above go to its stream until the returned function is called (None: it carries none)."""
        meta = (msg.params or {}).get("_meta")
        level = meta.get(LOG_LEVEL_KEY) if isinstance(meta, dict) else None
        rank = _LEVELS.get(level) if isinstance(level, str) else None
        if rank is None or send is None:
            return None
        routes, key = self._log_routes.setdefault(tool_id, {}), object()
        routes[key] = (rank, send)

        def done() -> None:
            routes.pop(key, None)
            if not routes and self._log_routes.get(tool_id) is routes:
                del self._log_routes[tool_id]

        return done

    def forget(self, session: Session) -> None:
        """The session is gone: stop pushing to it and cancel what it still runs."""
        self._pushed.discard(session)
        self._logging.discard(session)
        if self.subscriptions is not None:
            self.subscriptions.forget(session)
        self.tool_sessions.release(session.tool_sessions)
        session.tool_sessions = None
        if session.asks is not None:
            session.asks.close()
        for rid, task in list(session.inflight.items()):
            session.cancelled.add(rid)  # ends as "cancelled" (HTTP: -32800), not as a crash
            task.cancel()

    def close(self) -> None:
        """Shutting down: end every listen stream gracefully, cancel the calls waiting for input."""
        self._closed.set()
        self.pending.close()

    def served(self) -> dict[str, frozenset[str]]:
        """What it serves, by its tables: the requests of each era (HANDSHAKE, MODERN) and the
        client notifications it applies ("notifications"); docs/mcp.md's table of every method
        says the same (tests/edge/mcp/test_method_table.py)."""
        return {
            HANDSHAKE: frozenset(self._handshake),
            MODERN: frozenset(self._modern),
            "notifications": frozenset(self._notifications),
        }

    # -- eras ------------------------------------------------------------------

    def _is_modern(self, msg: Message, session: Session, headers: Headers) -> bool:
        if session.era == MODERN:
            return True
        meta = msg.params.get("_meta") if msg.params else None
        if isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta:
            return True
        if headers is not None:
            v = headers.get(H_VERSION)
            return v is not None and v not in HANDSHAKE_VERSIONS
        return False

    def _admit_handshake(self, msg: Message, session: Session) -> None:
        if session.era == HANDSHAKE or msg.method in _BEFORE_HANDSHAKE:
            return
        raise ProtocolError(
            INVALID_REQUEST,
            "not initialized: send initialize first, or use protocol "
            f"2026-07-28 with {PROTOCOL_VERSION_KEY!r} in params._meta",
        )

    def _admit_modern(self, msg: Message, session: Session, headers: Headers) -> None:
        version, meta = envelope.admit(msg, headers)
        if session.era == HANDSHAKE:
            raise ProtocolError(
                INVALID_REQUEST,
                "this connection completed the initialize handshake; "
                "2026-07-28 requests need a connection of their own",
            )
        session.era, session.version = MODERN, version
        session.client_info = meta.get(CLIENT_INFO_KEY)

    def _stamp(self, result: dict[str, Any]) -> None:
        """What every 2026-07-28 result carries: its type and the server's info."""
        result.setdefault("resultType", "complete")  # or "input_required" (input_required.py)
        meta = result.get("_meta")
        result["_meta"] = {**meta, SERVER_INFO_KEY: self._info} if meta else {SERVER_INFO_KEY: self._info}

    async def _tracked(
        self, handler: Handler, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        """Run a request so that `notifications/cancelled` naming it can cancel it."""
        rid = msg.id
        assert rid is not None
        if session.tool_sessions is None:
            # Forgotten before this request first ran (a transport runs some as tasks of their own):
            # nothing would cancel it, and a tool session it opened would outlive the MCP session.
            raise _Cancelled
        if rid in session.inflight:
            raise ProtocolError(INVALID_REQUEST, f"request id {rid!r} is already in flight")
        task = asyncio.current_task()
        assert task is not None
        session.inflight[rid] = task
        try:
            return await handler(msg, session, send, headers)
        except asyncio.CancelledError:
            if rid not in session.cancelled:
                raise
            session.cancelled.discard(rid)
            task.uncancel()
            raise _Cancelled from None
        finally:
            session.inflight.pop(rid, None)
            session.cancelled.discard(rid)

    # -- request handlers: each does its method's work and raises what it refuses -------

    async def _initialize(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        params = msg.params or {}
        requested = params.get("protocolVersion")
        if session.era == MODERN:
            raise ProtocolError(
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version: this connection "
                "speaks 2026-07-28, which has no initialize handshake",
                {"supported": list(MODERN_VERSIONS), "requested": str(requested)},
            )
        if session.era == HANDSHAKE and session.transport == "ws":
            raise ProtocolError(INVALID_REQUEST, "this connection is already initialized")
        if not isinstance(requested, str):
            raise ProtocolError(INVALID_PARAMS, "params.protocolVersion must be a string")
        session.era = HANDSHAKE
        session.version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        session.client_info = params.get("clientInfo")
        caps = params.get("capabilities")
        session.capabilities = caps if isinstance(caps, dict) else None
        if session.push is not None:
            self._pushed.add(session)
        caps = self._capabilities
        if self.federation is not None:  # logging/setLevel is of this era only
            caps = {**caps, "logging": {}}
            if session.shared and self.subscriptions is not None:  # held by one edge only: not offered
                caps["resources"] = {"listChanged": True}
        return {
            "protocolVersion": session.version,
            "capabilities": caps,
            "serverInfo": self._info,
            "instructions": _instructions(session.view, self.opts.instructions),
        }

    async def _set_level(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        level = (msg.params or {}).get("level")
        if level not in _LEVELS:
            raise ProtocolError(INVALID_PARAMS, f"params.level must be one of {', '.join(_LEVELS)}")
        self.hear_logs(session, level)
        return {}

    async def _ping(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        return {}

    async def _subscribe(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        uri = _uri(msg)
        if not session.id or session.shared:
            raise ProtocolError(
                INVALID_REQUEST,
                "resources/subscribe needs a session of this edge (initialize first, over the WebSocket "
                "or HTTP with its Mcp-Session-Id and a GET stream open to hear the updates)",
            )
        assert self.federation is not None and self.subscriptions is not None
        tool_id, original = await self.federation.resource_owner(uri, _spec(session))

        def deliver(name: str) -> None:
            if session.push is not None:
                session.push(notification("notifications/resources/updated", {"uri": name}))

        await _held(self.subscriptions.subscribe(session, deliver, uri, tool_id, original))
        return {}

    async def _unsubscribe(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        uri = _uri(msg)
        if self.subscriptions is not None:
            self.subscriptions.unsubscribe(session, uri)
        return {}

    async def _discover(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self._capabilities,
            "instructions": _instructions(session.view, self.opts.instructions),
            "ttlMs": self.opts.discover_ttl_ms,
            "cacheScope": "public",
        }

    async def _list_tools(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        cursor = (msg.params or {}).get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ProtocolError(INVALID_PARAMS, "params.cursor must be a string")
        view = session.view
        listing: Listing
        if view is None:
            listing = self._catalog()
        else:
            listing = view.search.listing if view.search is not None else view.current()
        try:
            tools, nxt = listing.page(cursor, self.opts.page_size)
        except ValueError as exc:
            raise ProtocolError(INVALID_PARAMS, f"Invalid cursor: {exc}") from None
        result: dict[str, Any] = {"tools": tools}
        if nxt is not None:
            result["nextCursor"] = nxt
        return result

    async def _list_tools_cacheable(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        """`tools/list` with the 2026-07-28 cache hints."""
        result = await self._list_tools(msg, session, send, headers)
        result["ttlMs"], result["cacheScope"] = self.opts.tools_ttl_ms, "public"
        return result

    async def _call_tool(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        params = msg.params or {}
        if session.era == MODERN and "requestState" in params:  # a retry with the client's input
            return await self._resume(msg, session, send, headers)
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(INVALID_PARAMS, "params.name must be a string")
        args = params.get("arguments")
        view = session.view
        if view is None:
            if self.tools_moved:
                self.tools_moved = False
                self._by_name = self._catalog().by_name
            tool = self._by_name.get(name)
        elif view.search is None:
            tool = view.get(name)
        else:  # tool search: find_tools answers here; call_tool's call goes on as a direct call
            if name == FIND:
                return await view.search.find(args, authority.caller_is_admin())
            tool = None
            if name == CALL:
                target = view.search.target(args)
                if isinstance(target, dict):
                    return target  # call_tool's own arguments are unusable: the model reads why
                name, args = target
                tool = view.get(name)
        if tool is None:
            raise ProtocolError(INVALID_PARAMS, f"Unknown tool: {name}", {"name": name})
        if args is None:
            args = {}
        elif not isinstance(args, dict):
            raise ProtocolError(INVALID_PARAMS, "params.arguments must be an object")
        if headers is not None and tool.header_schema is not None:
            envelope.check_param_headers(tool.header_schema, args, headers)
        # JSON-RPC ids repeat across clients: the mesh's idempotency key must not.
        scope = session.id or os.urandom(6).hex()
        req = ex.ExecuteRequest(tool_id=tool.tool_id, action=tool.action)
        req.request_id = f"mcp:{scope}:{msg.id}"
        token = msg.progress
        on_progress: Callable[[ex.Progress], None] | None = None
        if token is not None and send is not None:
            on_progress = _progress_sender(token, send)
        on_progress = self._backchannel(session, send, on_progress)
        try:
            arguments = None
            if args:
                limit = self.opts.max_argument_bytes
                try:  # bounds first: an oversized Struct is never built
                    arguments = to_struct(args, limit, req.arguments)
                except (JsonTooDeep, TooLarge) as exc:
                    raise refuse_arguments(exc, limit) from None
                except (ValueError, TypeError, OverflowError) as exc:
                    raise ProtocolError(INVALID_PARAMS, f"arguments cannot be represented: {exc}") from None
            caps = _envelope_capabilities(msg) if session.era == MODERN else None
            if caps is not None:  # input requests answer this call as InputRequiredResult
                return await self._start_pending(msg, session, headers, caps, req, on_progress, arguments)
            # 2026-07-28: a request that opts in hears its server's log messages while it runs.
            route = self._route_logs(tool.tool_id, msg, send) if session.era == MODERN else None
            try:
                resp = await self._execute(req, on_progress=on_progress, arguments=arguments)
            finally:
                if route is not None:
                    route()
        except MeshError as exc:
            if not results.is_result(exc):
                raise  # a protocol fault: `request` answers it
            return results.error_result(exc)  # the model reads why and can correct the call
        # Only a call that names a tool session or opens one has any for the MCP session to hold.
        if session.id and (SESSION_FIELD in req.arguments.fields or SESSION_FIELD in resp.structured.fields):
            self.tool_sessions.note(session.tool_sessions, self._catalog, req, resp)
        return results.call_result(resp, session.era == MODERN)

    async def _start_pending(
        self,
        msg: Message,
        session: Session,
        headers: Headers,
        caps: dict[str, Any],
        req: ex.ExecuteRequest,
        on_progress: Callable[[ex.Progress], None] | None,
        arguments: Any,
    ) -> dict[str, Any]:
        """A 2026-07-28 call of a client that can give input: it runs as a pending call, and this
        request answers with its result or its first input requests (edge/mcp/input_required.py)."""
        who = input_required.identity_of(headers, session.id, session.view.key if session.view else "")

        async def run(pending: input_required.Pending) -> ex.ExecuteResponse:
            hook = Backchannel(pending.on_progress, pending.ask)
            return await self._execute(req, on_progress=hook, arguments=arguments)

        pending = self.pending.start(who, caps, run)
        return await self._collect(pending, on_progress)

    async def _resume(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        """A retry of a pending call with the client's `inputResponses`."""
        params = msg.params or {}
        who = input_required.identity_of(headers, session.id, session.view.key if session.view else "")
        pending = self.pending.resume(params.get("requestState"), who)
        pending.answer(params.get("inputResponses"))
        token = msg.progress
        on_progress = _progress_sender(token, send) if token is not None and send is not None else None
        return await self._collect(pending, on_progress)

    async def _collect(
        self, pending: input_required.Pending, on_progress: Callable[[ex.Progress], None] | None
    ) -> dict[str, Any]:
        """This round's answer of a pending call: its input requests, or its result."""
        pending.progress = on_progress
        try:
            asking = await self.pending.next(pending)
        except asyncio.CancelledError:  # the client left while the call ran: it ends with it
            self.pending.drop(pending.key)
            raise
        finally:
            pending.progress = None
        if asking is not None:
            return asking
        task = pending.task
        assert task is not None
        if task.cancelled():
            raise ProtocolError(INTERNAL_ERROR, "the call was cancelled before it answered")
        try:
            resp: ex.ExecuteResponse = task.result()
        except MeshError as exc:
            if not results.is_result(exc):
                raise
            return results.error_result(exc)
        return results.call_result(resp)

    async def _listen(
        self, msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        if send is None:
            raise ProtocolError(INVALID_REQUEST, "subscriptions/listen needs a transport that can stream")
        wanted = (msg.params or {}).get("notifications")
        if not isinstance(wanted, dict):
            raise ProtocolError(INVALID_PARAMS, "params.notifications must be an object")
        honored: dict[str, Any] = {"toolsListChanged": True} if wanted.get("toolsListChanged") is True else {}
        kinds = [k for k in ("prompts", "resources") if self.federation is not None]
        kinds = [k for k in kinds if wanted.get(f"{k}ListChanged") is True]
        honored.update({f"{k}ListChanged": True for k in kinds})
        meta: dict[str, Any] = {SUBSCRIPTION_ID_KEY: msg.id}
        key = object()
        try:
            uris = await self._listen_resources(key, wanted.get("resourceSubscriptions"), session, send, meta)
            if uris:
                honored["resourceSubscriptions"] = uris
            return await self._listening(key, session, send, honored, kinds, meta)
        finally:
            if self.subscriptions is not None:
                self.subscriptions.forget(key)

    async def _listen_resources(
        self, key: object, uris: Any, session: Session, send: Send, meta: dict[str, Any]
    ) -> list[str]:
        """Subscribe listen stream `key` to `uris` (`resourceSubscriptions`); those honoured. A URI
        no server has is left out; past the subscription bounds the listen is refused."""
        if uris is None or self.federation is None or self.subscriptions is None:
            return []
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise ProtocolError(INVALID_PARAMS, "params.notifications.resourceSubscriptions must be strings")
        wanted = list(dict.fromkeys(uris))
        limit = self.subscriptions.per_holder
        if len(wanted) > limit:
            err = ResourceExhausted(
                f"{len(wanted)} resource subscriptions asked; a listen stream holds at most {limit}",
                reason="TOO_MANY_SUBSCRIPTIONS",
                metadata={"max_subscriptions": str(limit)},
            )
            raise ProtocolError(LIMIT_REACHED, err.message, err.to_json())

        def deliver(name: str) -> None:
            send(notification("notifications/resources/updated", {"uri": name, "_meta": meta}))

        honored = []
        for uri in wanted:
            try:
                tool_id, original = await self.federation.resource_owner(uri, _spec(session))
                await _held(self.subscriptions.subscribe(key, deliver, uri, tool_id, original))
            except ProtocolError as exc:
                if exc.code == LIMIT_REACHED:
                    raise
                log.debug("listen: no subscription to %s: %s", uri[:200], exc.message)
                continue
            except MeshError as exc:
                log.debug("listen: no subscription to %s: %s", uri[:200], exc.message)
                continue
            honored.append(uri)
        return honored

    async def _listening(
        self,
        key: object,
        session: Session,
        send: Send,
        honored: dict[str, Any],
        kinds: list[str],
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        """Acknowledge the listen stream `key`, then hold it until the edge stops."""
        send(
            notification(
                "notifications/subscriptions/acknowledged", {"notifications": honored, "_meta": meta}
            )
        )
        if "toolsListChanged" in honored:
            changed = notification("notifications/tools/list_changed", {"_meta": meta})
            self._listens[key] = (session.view, lambda: send(changed))
        if kinds:
            self._feature_listens[key] = (
                session.view,
                {k: _sender(send, f"notifications/{k}/list_changed", meta) for k in kinds},
            )
        try:
            await self._closed.wait()
        finally:
            self._listens.pop(key, None)
            self._feature_listens.pop(key, None)
        return {"_meta": dict(meta)}

    @staticmethod
    def _federated(federation: Federation) -> dict[str, Handler]:
        """The handlers of the federated servers' methods, each a call of `federation`."""

        def lists(method: str) -> Handler:
            async def handler(
                msg: Message, session: Session, send: Send | None, headers: Headers
            ) -> dict[str, Any]:
                return await federation.list(method, msg.params or {}, _spec(session))

            return handler

        def calls(fn: Callable[[dict[str, Any], ViewSpec | None], Awaitable[dict[str, Any]]]) -> Handler:
            async def handler(
                msg: Message, session: Session, send: Send | None, headers: Headers
            ) -> dict[str, Any]:
                return await fn(msg.params or {}, _spec(session))

            return handler

        return {
            "prompts/list": lists("prompts/list"),
            "prompts/get": calls(federation.get_prompt),
            "resources/list": lists("resources/list"),
            "resources/templates/list": lists("resources/templates/list"),
            "resources/read": calls(federation.read_resource),
            "completion/complete": calls(federation.complete),
        }

    # -- notification handlers -------------------------------------------------------

    def _initialized(self, msg: Message, session: Session) -> None:
        session.initialized = True

    def _cancel(self, msg: Message, session: Session) -> None:
        rid = (msg.params or {}).get("requestId")
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            task = session.inflight.get(rid)
            if task is not None:
                session.cancelled.add(rid)
                task.cancel()


def _envelope_capabilities(msg: Message) -> dict[str, Any] | None:
    """The client capabilities a 2026-07-28 request's envelope declares, when they include
    anything an installed server may ask for (sampling, elicitation, roots); else None."""
    meta = (msg.params or {}).get("_meta")
    caps = meta.get(CLIENT_CAPABILITIES_KEY) if isinstance(meta, dict) else None
    return caps if client_requests.declared(caps) else None


def _instructions(view: ToolView | None, default: str) -> str:
    """What `initialize` and `server/discover` say of the endpoint `view` serves."""
    if view is None:
        return default
    spec = view.spec
    if spec.instructions:
        return spec.instructions
    if view.search is not None:
        return (
            "ToolScore Mesh tool search: find_tools(query, limit) finds the tools that fit a task "
            "(with their input schemas); call_tool(name, arguments) calls one."
        )
    if spec.server:
        return f"ToolScore Mesh: the tools of {spec.server}, under their own names."
    return default


def _uri(msg: Message) -> str:
    uri = (msg.params or {}).get("uri")
    if not isinstance(uri, str):
        raise ProtocolError(INVALID_PARAMS, "params.uri must be a string")
    return uri


async def _held(subscribing: Awaitable[None]) -> None:
    """A subscription made; a server's refusal passed on as it sent it."""
    try:
        await subscribing
    except ServerError as exc:
        raise ProtocolError(exc.code, exc.message, exc.data) from None


def _holds(view: ToolView | None, servers: Collection[str]) -> bool:
    """Whether the endpoint of `view` (None: `/mcp` unfiltered) lists items of any of `servers`."""
    return view is None or any(view.spec.holds(t) for t in servers)


def _spec(session: Session) -> ViewSpec | None:
    """The view the session's endpoint lists federated items through (None: `/mcp` unfiltered)."""
    return session.view.spec if session.view is not None else None


def _sender(send: Send, method: str, meta: dict[str, Any]) -> Callable[[], None]:
    note = notification(method, {"_meta": meta})
    return lambda: send(note)


def _cacheable(handler: Handler, ttl_ms: int, scope: str) -> Handler:
    """A 2026-07-28 handler whose result carries the cache hints (as `tools/list`'s do)."""

    async def with_hints(
        msg: Message, session: Session, send: Send | None, headers: Headers
    ) -> dict[str, Any]:
        result = await handler(msg, session, send, headers)
        result["ttlMs"], result["cacheScope"] = ttl_ms, scope
        return result

    return with_hints


def _progress_sender(token: RequestId, send: Send) -> Callable[[ex.Progress], None]:
    def on_progress(p: ex.Progress) -> None:
        params: dict[str, Any] = {"progressToken": token, "progress": p.progress}
        if p.total:
            params["total"] = p.total
        if p.message:
            params["message"] = p.message
        send(notification("notifications/progress", params))

    return on_progress

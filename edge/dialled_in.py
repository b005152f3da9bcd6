"""Servers that dialled in over the ToolScore WebSocket, callable from every path.

A server that registers itself on `/websocket` with `tool_type: "mcp_server"`
is called back over that same connection (`execute_tool_action`, answered by
`execute_tool_action_response`, matched by `request_id`). So that the hub and
every other router can reach it like any tool server, the edge serves
ToolExecutorService on a Unix socket (`edge.relay_uds`) and registers such tools
with kind TOOL_KIND_WEBSOCKET_SERVER and that socket as their endpoint; the
edge's own Router serves the socket in-process (mounted with `HubGateway.mount`
while the relay runs). When the
connection drops, its pending calls fail at once (SERVER_DISCONNECTED, which the Router reports
as an is_error NetworkError result, as for any tool server that goes away) and its tools are
deregistered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_pb2

from edge.gateway import HubGateway
from edge.registry_cache import RegistryCache, Unsubscribe
from edge.rest.shapes import ERROR_TYPES_BY_NAME, dumps, tool_from_json
from services.common.config import Config
from services.common.errors import AlreadyExists, DeadlineExceeded, MeshError, Unavailable
from services.common.grpc_server import MeshServer, ServiceBinding
from services.common.jsonvalue import dict_to_struct, struct_to_dict, too_deep
from services.common.streams import Correlator, Expired, TooManyPending, add_tool_executor
from services.library.registry import Entry
from services.router.channels import ProgressFn
from services.router.failures import failure_result, stream_call_result
from services.router.router import Unmount
from services.toolkit.server import CallStream, Progress

log = logging.getLogger(__name__)
# The owner of a dialled-in server's tools is this prefix and its connection id, as the original
# protocol showed it: an owner string, never an endpoint (their endpoint is the relay socket).
OWNER_PREFIX = "ws-session://"
# How many calls may wait for their answers on one dialled-in server's connection.
_MAX_WAITING = 10_000


class _Gone(Exception):
    """The server's connection ended while the call waited."""


def result_response(msg: dict[str, Any]) -> ex.ExecuteResponse:
    """An `execute_tool_action_response` as an ExecuteResponse (a failing tool stays a result)."""
    result = msg.get("result")
    if not isinstance(result, dict):
        result = msg
    success = bool(result.get("success", "error" not in result or not result.get("error")))
    data = result.get("data", result.get("result"))
    resp = ex.ExecuteResponse(is_error=not success)
    if not success:
        message = result.get("error") or result.get("error_message") or "the tool failed"
        message = message if isinstance(message, str) else json.dumps(message, default=str)
        kind = ERROR_TYPES_BY_NAME.get(str(result.get("error_type")), tool_pb2.ERROR_TYPE_TOOL_ERROR)
        resp.error.type = kind
        resp.error.message = message
        resp.content.add().text.text = message
        return resp
    # Past the depth bound a Struct may not survive the messages that carry results on (the
    # hub's ExecuteStream); the text block below still has all of it.
    if isinstance(data, dict) and not too_deep(data):
        with contextlib.suppress(ValueError, TypeError):
            resp.structured.CopyFrom(dict_to_struct(data))
    if data is not None:
        resp.content.add().text.text = (
            data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
        )
    return resp


def _disconnected(tool_id: str, what: str) -> Unavailable:
    """The server's connection is gone: a tool-side failure, reported like any unreachable tool
    server (an is_error NetworkError result, services.router.failures), whether the call was in
    flight or arrived after."""
    return Unavailable(
        f"the server of tool {tool_id!r} {what}", reason="SERVER_DISCONNECTED", metadata={"tool_id": tool_id}
    )


class ServerSession:
    """One ToolScore WebSocket connection, as a server the edge can call."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.id = uuid.uuid4().hex[:16]
        self.peer = peer
        self.owner = OWNER_PREFIX + self.id
        self.tools: set[str] = set()
        self.definitions: dict[
            str, tool_pb2.Tool
        ] = {}  # as registered, to register again after a hub restart
        self.closed = False
        self._ids = itertools.count(1)
        self._pending: Correlator[str, dict[str, Any]] = Correlator(_MAX_WAITING)

    async def call(
        self, request: ex.ExecuteRequest, timeout_s: float, arguments: dict[str, Any] | None = None
    ) -> ex.ExecuteResponse:
        """Send execute_tool_action and wait (at most `timeout`) for its response. `arguments`:
        the request's, already converted to a dict (by the router), else converted here."""
        if self.closed:
            raise _disconnected(request.tool_id, "disconnected")
        rid = f"{self.id}-{next(self._ids)}"
        try:
            fut = await self._pending.request(
                rid,
                timeout_s,
                None,
                self.ws.send_str,
                dumps(
                    {
                        "type": "execute_tool_action",
                        "request_id": rid,
                        "tool_id": request.tool_id,
                        "action": request.action,
                        "parameters": struct_to_dict(request.arguments) if arguments is None else arguments,
                    }
                ),
            )
            msg = await fut
        except TooManyPending as exc:
            raise Unavailable(
                f"the server of tool {request.tool_id!r} is not keeping up: {exc}",
                reason="TOOL_SERVER_UNAVAILABLE",
                metadata={"tool_id": request.tool_id},
            ) from None
        except Expired:  # as for any tool server that hangs: an is_error TimeoutError result
            raise DeadlineExceeded(
                f"the tool's server did not answer within {timeout_s:.3g}s",
                reason="TOOL_TIMEOUT",
                metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout_s:.3g}"},
            ) from None
        except (ConnectionError, RuntimeError, _Gone):
            raise _disconnected(request.tool_id, "disconnected during the call") from None
        finally:
            self._pending.finish(rid)
        return result_response(msg)

    def resolve(self, msg: dict[str, Any]) -> bool:
        """Deliver an execute_tool_action_response; False when nothing waits for it."""
        return self._pending.resolve(str(msg.get("request_id")), msg)

    def fail_pending(self) -> None:
        self.closed = True
        self._pending.fail_all(_Gone())


def _timeout_s(request: ex.ExecuteRequest, remaining: float | None) -> float:
    timeout = request.timeout.ToNanoseconds() / 1e9 if request.HasField("timeout") else 30.0
    if remaining is not None:
        timeout = min(timeout, remaining)
    return max(timeout, 0.001)


class _Servicer(ex_grpc.ToolExecutorServiceServicer):  # type: ignore[misc]  # generated *_grpc.py has no stubs
    """ToolExecutorService on the relay socket: how the hub reaches dialled-in servers."""

    def __init__(self, relay: RelayServer) -> None:
        self._relay = relay

    async def Execute(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        return await self._relay.call(request, _timeout_s(request, context.time_remaining()))

    async def ExecuteStream(
        self, requests: AsyncIterator[ex.ExecuteStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Many calls over one stream (the routers' fast path), matched by call_id, cancellable."""

        async def run_call(request: ex.ExecuteRequest, progress: Progress) -> ex.ExecuteResponse:
            try:
                return await self._relay.call(request, _timeout_s(request, None))
            except MeshError as err:  # one call's fault travels as its result, not the stream's
                return stream_call_result(err)
            except asyncio.CancelledError:
                return failure_result(tool_pb2.ERROR_TYPE_UNKNOWN, "call cancelled by the caller")

        await CallStream(context, run_call, self._relay.cfg.hub.max_message_bytes).serve(requests)


class RelayServer:
    """The relay socket, the dialled-in sessions, and their registrations."""

    def __init__(self, cfg: Config, gateway: HubGateway, registry: RegistryCache) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.registry = registry
        self._stop_resync: Unsubscribe | None = None
        self._unmount: Unmount | None = None
        self.endpoint = f"unix://{cfg.path(cfg.edge.relay_uds)}"
        self.sessions: dict[str, ServerSession] = {}
        self.by_tool: dict[str, ServerSession] = {}
        self._server: MeshServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sweep, registering again: cancelled at exit
        self._closers: set[asyncio.Task[None]] = set()  # deregistrations: awaited at exit

    async def __aenter__(self) -> RelayServer:
        self._server = MeshServer(
            [
                ServiceBinding(
                    "toolscore.v1.ToolExecutorService",
                    _Servicer(self),
                    add_tool_executor,
                )
            ],
            [self.endpoint],
            max_message_bytes=self.cfg.hub.max_message_bytes,
            grace_s=1.0,
        )
        await self._server.__aenter__()
        self._unmount = self.gateway.mount(self.endpoint, self._handle)
        self._stop_resync = self.registry.on_resync(self._on_resync)
        self._spawn(self._sweep())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stop_resync is not None:
            self._stop_resync()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._closers, return_exceptions=True)
        if self._unmount is not None:
            self._unmount()
        for session in list(self.sessions.values()):
            await self.close_session(session)
        if self._server is not None:
            await self._server.stop()

    async def _handle(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout_s: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> ex.ExecuteResponse:
        """The relay socket's mount on the edge's own Router: the call, with no hop."""
        return await self.call(request, timeout_s, arguments)

    async def call(
        self, request: ex.ExecuteRequest, timeout_s: float, arguments: dict[str, Any] | None = None
    ) -> ex.ExecuteResponse:
        """A call to the dialled-in server of `request.tool_id` (SERVER_DISCONNECTED if none)."""
        session = self.by_tool.get(request.tool_id)
        if session is None:
            raise _disconnected(request.tool_id, "is not connected to this edge")
        return await session.call(request, timeout_s, arguments)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_resync(self) -> None:
        self._spawn(self._register_again())

    async def _register_again(self) -> None:
        """The hub came back (maybe with an empty registry): register every connected server's tools again."""
        for session in list(self.sessions.values()):
            for tool_id, tool in list(session.definitions.items()):
                if self.by_tool.get(tool_id) is not session or tool_id in self.registry:
                    continue
                try:
                    await self.gateway.register(tool)
                    log.info("registered %s again after the hub came back", tool_id)
                except MeshError as err:
                    log.warning("could not register %s again: %s", tool_id, err.message)

    async def _sweep(self) -> None:
        """Deregister dialled-in tools left by an earlier run of the edge (their connections are gone)."""
        await self.registry.synced.wait()
        for entry in list(self.registry.entries.values()):
            tool = entry.tool
            if (
                tool.endpoint == self.endpoint
                and tool.owner.startswith(OWNER_PREFIX)
                and not self._live(tool.owner)
            ):
                with contextlib.suppress(MeshError):
                    await self.gateway.deregister(tool.tool_id)
                    log.info(
                        "deregistered %s: its server's connection ended before this edge started",
                        tool.tool_id,
                    )

    def _live(self, owner: str) -> bool:
        return owner.removeprefix(OWNER_PREFIX) in self.sessions

    def open_session(self, ws: web.WebSocketResponse, peer: str) -> ServerSession:
        session = ServerSession(ws, peer)
        self.sessions[session.id] = session
        return session

    async def register(self, session: ServerSession, spec: dict[str, Any]) -> lib.RegisterToolResponse:
        """Register a tool served over `session`'s connection."""
        tool = tool_from_json(
            spec,
            where="tool_spec",
            kind=tool_pb2.TOOL_KIND_WEBSOCKET_SERVER,
            endpoint=self.endpoint,
            owner=session.owner,
        )
        if isinstance(spec.get("endpoint"), str) and spec["endpoint"]:
            tool.metadata["advertised_endpoint"] = spec["endpoint"]
        holder = self.by_tool.get(tool.tool_id)
        if holder is not None and holder is not session:
            raise AlreadyExists(
                f"tool {tool.tool_id!r} is served by another connected server",
                reason="TOOL_OWNED_BY_ANOTHER",
                metadata={"tool_id": tool.tool_id},
            )
        existing = self.registry.get(tool.tool_id)
        if (
            existing is not None
            and existing.tool.owner.startswith(OWNER_PREFIX)
            and not self._live(existing.tool.owner)
        ):
            with contextlib.suppress(MeshError):  # a dead session's leftover: take it over
                await self.gateway.deregister(tool.tool_id)
        known = tool.tool_id in session.tools
        self.by_tool[tool.tool_id] = session
        # Counted as the session's before the hub answers: if the connection drops meanwhile
        # (this task is cancelled), close_session still deregisters whatever the hub registered.
        session.tools.add(tool.tool_id)
        session.definitions[tool.tool_id] = tool
        try:
            return await self.gateway.register(tool)
        except MeshError:
            if not known:
                session.tools.discard(tool.tool_id)
                session.definitions.pop(tool.tool_id, None)
                self.by_tool.pop(tool.tool_id, None)
            raise

    def detach(self, session: ServerSession) -> list[str]:
        """The connection ended: fail its calls and stop routing to it, at once (no await)."""
        if self.sessions.pop(session.id, None) is None:
            return []
        session.fail_pending()
        for tool_id in session.tools:
            if self.by_tool.get(tool_id) is session:
                del self.by_tool[tool_id]
        return sorted(session.tools)

    def close_later(self, session: ServerSession) -> asyncio.Task[None]:
        """close_session in a task owned by the relay (awaited at shutdown at the latest)."""
        task = asyncio.get_running_loop().create_task(self.close_session(session))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
        return task

    async def close_session(self, session: ServerSession) -> None:
        """Detach the session, then deregister its tools (unless a new connection serves them now)."""
        for tool_id in self.detach(session) or sorted(session.tools):
            if tool_id in self.by_tool:
                continue  # the server reconnected and registered it again meanwhile
            entry = self.registry.get(tool_id)
            if entry is not None and entry.tool.owner != session.owner:
                continue
            try:
                await self.gateway.deregister(tool_id, timeout_s=5.0)
                log.info("deregistered %s: its server (%s) disconnected", tool_id, session.peer)
            except MeshError as err:
                log.warning("could not deregister %s after its server disconnected: %s", tool_id, err.message)


RELAY = web.AppKey("relay", RelayServer)


def mount(app: web.Application, cfg: Config, gateway: HubGateway, registry: RegistryCache) -> RelayServer:
    """Serve the relay socket while `app` runs (app[RELAY]); the ToolScore WebSocket opens its sessions."""
    relay = app[RELAY] = RelayServer(cfg, gateway, registry)

    async def relaying(_app: web.Application) -> AsyncIterator[None]:
        async with relay:
            yield

    app.cleanup_ctx.append(relaying)
    return relay

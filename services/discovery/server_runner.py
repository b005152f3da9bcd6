"""One MCP server's life: connect with the official SDK client, list its tools, keep it healthy.

A runner owns one task. That task connects (spawning the stdio process, or
opening a Streamable HTTP session), lists the tools, hands them to
`on_tools`, then watches: the process ending, a failed health check, or a
`notifications/tools/list_changed`. When the connection ends it reconnects
with exponential backoff until stopped. Calls come from other tasks and use
the current client. The server's requests to the client (sampling, elicitation,
roots) go to the caller of the call that caused them (services/router/backchannel.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mcp_types as types
from mcp.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import (
    ListenNotSupportedError,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    SubscriptionLost,
)
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError
from toolscore.v1 import discovery_pb2 as pb

from services.common.config import DiscoveryConfig
from services.common.errors import FailedPrecondition, Unavailable
from services.discovery.sandbox import Jail
from services.discovery.stdio import StdioTransport
from services.router import backchannel

log = logging.getLogger(__name__)
_CLIENT_INFO = types.Implementation(name="toolscore-mesh", version="0.1.0")
_MAX_TOOL_PAGES = 50
# Health checks in a row left unanswered while calls are in flight that are taken as the server
# being busy with them, not as it being gone (_watch).
BUSY_MISSES = 3
_R = TypeVar("_R", bound=BaseModel)


@dataclass(eq=False, slots=True)
class _Call:
    """A tools/call in flight: how to ask its caller (None: it cannot be asked) and until when."""

    ask: backchannel.Ask | None
    deadline: float


# The call whose task runs now: a 2026-07-28 server's input requests (InputRequiredResult) are
# answered inside the call's own task, so they are attributed to it exactly.
_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("mcp_call", default=None)


class StartFailed(FailedPrecondition):
    """The server did not come up as an MCP server (exited, never answered, spoke garbage)."""

    reason = "SERVER_START_FAILED"


@dataclass
class LaunchSpec:
    """How to reach a server: a stdio command, or a Streamable HTTP URL."""

    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    log_path: Path | None = None
    pid_path: Path | None = None
    url: str = ""
    jail: Jail | None = None  # the sandbox a stdio server runs in


ToolsFn = Callable[["ServerRunner", list[types.Tool]], Awaitable[None]]
StateFn = Callable[["ServerRunner"], Awaitable[None]]


class ServerRunner:
    """Supervises one server. `start()` returns once the first connection is up (or raises)."""

    def __init__(
        self, name: str, spec: LaunchSpec, cfg: DiscoveryConfig, on_tools: ToolsFn, on_state: StateFn
    ) -> None:
        self.name, self.spec, self.cfg = name, spec, cfg
        self._on_tools, self._on_state = on_tools, on_state
        self.client: Client | None = None
        self.transport: StdioTransport | None = None
        self.state = pb.SERVER_STATE_STARTING
        self.message = "starting"
        self.restarts = 0
        self.protocol_version = ""
        self._kick = asyncio.Event()
        self._relist = False
        self._stopping = False
        self._was_running = False
        self._down = asyncio.Event()  # set while no connection is up, once one has ended
        self.last_end = ""  # why the last connection ended
        self.actions: dict[str, str] = {}  # capability name -> MCP tool name
        # What the current connection's server declared, set before its tools are registered.
        self.capabilities: types.ServerCapabilities | None = None
        # Moves at each connection and each prompts or resources list_changed: the edge rereads
        # its lists of them when the revision its tool's metadata names moves (fleet.py).
        self.lists_revision = 0
        # Where the server's log messages and resource updates go (the fleet): method, params.
        self.on_notice: Callable[[str, dict[str, Any]], None] | None = None
        self._calls: list[_Call] = []  # tools/call in flight, oldest first
        # The resource URIs to subscribe to at each connection (resource_subscriptions.py).
        self.resource_uris: Callable[[], list[str]] = list
        # The current connection's resource subscriptions: URI -> its task (2026-07-28: the
        # `subscriptions/listen` stream of that URI; handshake era: the subscribe request).
        self._resources: dict[str, asyncio.Task[None]] = {}
        self._chores: set[asyncio.Task[None]] = set()  # unsubscribe requests under way
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, strict: bool) -> None:
        """Start supervising. strict: a failed first start raises StartFailed and stops everything;
        otherwise the runner keeps retrying in the background and this returns after the first attempt."""
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._lifetime(first, strict), name=f"mcp-runner-{self.name}")
        try:
            await asyncio.shield(first)
        except StartFailed:
            if strict:
                await self.stop()
                raise
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Disconnect, stop the process (its whole group) and end the task."""
        self._stopping = True
        self._kick.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state, self.message = pb.SERVER_STATE_STOPPED, "stopped"

    def connected(self) -> Client:
        """The current connection's client; Unavailable (`MCP_SERVER_DOWN`) when there is none."""
        client = self.client
        if client is None:
            raise Unavailable(
                f"MCP server {self.name} is not connected ({self.message})",
                reason="MCP_SERVER_DOWN",
                metadata={"server": self.name},
            )
        return client

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        deadline_s: float,
        progress: ProgressFnT | None = None,
        ask: backchannel.Ask | None = None,
    ) -> types.CallToolResult:
        """One tools/call on the current connection; Unavailable when there is none. `ask`: how the
        server's requests during the call (sampling, elicitation, roots) reach its caller."""
        client = self.connected()
        call = _Call(ask, time.monotonic() + deadline_s)
        self._calls.append(call)
        token = _CALL.set(call)
        try:
            return await client.call_tool(
                name, arguments, read_timeout_seconds=deadline_s, progress_callback=progress
            )
        finally:
            _CALL.reset(token)
            self._calls.remove(call)
            if self.transport is not None:  # what the call wrote is measured now, not at the next tick
                self.transport.check_work_dir_soon()

    # -- the server's requests to the client (backchannel.py) -------------------------

    def _caller(self, method: str) -> _Call:
        """The call a server's request belongs to. A handshake-era request names none (stdio has
        nothing to tie it to the request that caused it): it is the one call in flight, and with
        none or several in flight it is refused, never guessed (THREAT_MODEL.md). A 2026-07-28
        server's input request runs in its call's own task: that call, exactly."""
        call = _CALL.get()
        if call is not None:
            return call
        if len(self._calls) == 1:
            return self._calls[0]
        log.warning(
            "MCP server %s sent %s with %d calls in flight: refused (no way to tell which call asked)",
            self.name,
            method,
            len(self._calls),
        )
        why = "no call is in flight" if not self._calls else f"{len(self._calls)} calls are in flight"
        raise backchannel.ClientError(
            backchannel.INTERNAL_ERROR, f"cannot tell which call asked for {method}: {why}"
        )

    async def _ask(self, method: str, params: BaseModel | None, result: type[_R]) -> _R | types.ErrorData:
        try:
            call = self._caller(method)
            if call.ask is None:
                raise backchannel.refusal(method, "its caller has no way back to an MCP client")
            body = {} if params is None else params.model_dump(by_alias=True, mode="json", exclude_none=True)
            body.pop("_meta", None)  # the hub's own envelope, not the client's
            answer = await call.ask(method, body, max(call.deadline - time.monotonic(), 0.0))
            return result.model_validate(answer)
        except backchannel.ClientError as err:
            return types.ErrorData(code=err.code, message=err.message, data=err.data)
        except ValidationError as exc:
            return types.ErrorData(
                code=backchannel.INTERNAL_ERROR,
                message=f"the client answered {method} with an invalid result: {exc.error_count()} errors",
            )

    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        tools = params.tools is not None or params.tool_choice is not None
        result = types.CreateMessageResultWithTools if tools else types.CreateMessageResult
        return await self._ask("sampling/createMessage", params, result)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._ask("elicitation/create", params, types.ElicitResult)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        return await self._ask("roots/list", None, types.ListRootsResult)

    async def subscribe_resource(self, uri: str, timeout_s: float) -> None:
        """Subscribe to `uri` on the current connection: a `resources/subscribe` request in the
        handshake era, a `subscriptions/listen` stream of that URI in 2026-07-28 (held until
        `release_resource` or the connection ends). Raises the server's MCPError, TimeoutError, or
        Unavailable (`MCP_SERVER_DOWN`)."""
        client = self.connected()
        old = self._resources.get(uri)
        if old is not None and not old.done():
            return
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resources[uri] = self._resource_task(client, uri, acked)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(acked)
        except BaseException:
            task = self._resources.pop(uri, None)
            if task is not None:
                task.cancel()
            raise

    def release_resource(self, uri: str) -> None:
        """Let `uri` go on the current connection (a subscription of the handshake era is ended by
        a `resources/unsubscribe` request, sent in the background)."""
        task = self._resources.pop(uri, None)
        if task is None:
            return
        task.cancel()
        client = self.client
        if client is not None and client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            chore = asyncio.get_running_loop().create_task(self._unsubscribe(client, uri))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    def _resource_task(self, client: Client, uri: str, acked: asyncio.Future[None]) -> asyncio.Task[None]:
        if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            work = self._subscribe(client, uri, acked)
        else:
            work = self._listen_resource(client, uri, acked)
        task = asyncio.get_running_loop().create_task(work, name=f"mcp-resource-{self.name}")
        ended = Unavailable(
            f"MCP server {self.name}: the subscription to {uri[:200]} ended before it was made",
            reason="MCP_SERVER_DOWN",
            metadata={"server": self.name},
        )
        task.add_done_callback(lambda _: _settle(acked, ended))
        return task

    async def _subscribe(self, client: Client, uri: str, acked: asyncio.Future[None]) -> None:
        request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
        try:
            await client.session.send_request(
                request, types.EmptyResult, request_read_timeout_seconds=self.cfg.health_timeout_s
            )
        except Exception as exc:
            _settle(acked, exc)
            return
        _settle(acked, None)

    async def _unsubscribe(self, client: Client, uri: str) -> None:
        request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
        try:
            await client.session.send_request(
                request, types.EmptyResult, request_read_timeout_seconds=self.cfg.health_timeout_s
            )
        except (MCPError, TimeoutError, OSError) as exc:
            log.info("MCP server %s: resources/unsubscribe %s failed: %s", self.name, uri[:200], exc)

    async def _listen_resource(self, client: Client, uri: str, acked: asyncio.Future[None]) -> None:
        """The 2026-07-28 subscription to one URI: a listen stream whose updates go to `on_notice`."""
        try:
            async with client.listen(resource_subscriptions=[uri]) as subscription:
                _settle(acked, None)
                async for event in subscription:
                    if isinstance(event, ResourceUpdated) and self.on_notice is not None:
                        self.on_notice("notifications/resources/updated", {"uri": event.uri})
            log.info("MCP server %s: it closed the subscription to %s", self.name, uri[:200])
        except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as exc:
            if not _settle(acked, exc):
                log.info("MCP server %s: the subscription to %s ended: %s", self.name, uri[:200], exc)

    def _resubscribe(self, client: Client) -> None:
        """A new connection: subscribe again to every URI held (each in its own task, not waited for)."""
        for uri in self.resource_uris():
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            acked.add_done_callback(_log_refusal(self.name, uri))
            self._resources[uri] = self._resource_task(client, uri, acked)

    async def _end_resources(self) -> None:
        """The connection ended: its subscriptions with it (subscribed again at the next)."""
        tasks = [*self._resources.values(), *self._chores]
        self._resources.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def why_down(self, within_s: float) -> str | None:
        """Why a stdio server's connection went down, once the runner has seen it end (None if it
        did not within `within_s`, or for a remote server, whose connection drops say nothing)."""
        if self.transport is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._down.wait()
            return self.last_end
        return None

    # -- the runner's task ------------------------------------------------------

    async def _lifetime(self, first: asyncio.Future[None], strict: bool) -> None:
        delay = self.cfg.restart_backoff_s
        while not self._stopping:
            self._was_running = False
            try:
                await self._connection(first)
                reason = self.message
            except Exception as exc:  # anything the connection raised ends this attempt
                reason = _describe(exc, self.transport)
            self.client = None
            self.last_end = reason
            self._down.set()
            if not first.done():
                first.set_exception(
                    StartFailed(
                        f"MCP server {self.name} failed to start: {reason}", metadata={"server": self.name}
                    )
                )
                first.exception()  # retrieved: the waiter may be gone
                if strict:
                    return
            if self._stopping:
                return
            if self._was_running:  # it ran before dying: start the backoff over
                delay = self.cfg.restart_backoff_s
            self.state, self.message = pb.SERVER_STATE_RESTARTING, f"restarting: {reason}"
            log.warning("MCP server %s: %s; restarting in %.1fs", self.name, reason, delay)
            await self._notify_state()
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._kick.wait()
            delay = min(delay * 2, self.cfg.restart_backoff_max_s)
            self.restarts += 1

    async def _connection(self, first: asyncio.Future[None]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            self.state, self.message = pb.SERVER_STATE_STARTING, "connecting"
            async with asyncio.timeout(self.cfg.start_timeout_s):
                client = await stack.enter_async_context(
                    Client(
                        self._transport(),
                        mode="auto",
                        message_handler=self._on_message,
                        cache=None,
                        client_info=_CLIENT_INFO,
                        # 2026-07-28 servers log only for requests that opt in: info and above
                        # (forwarded to the edge's sessions that asked, services/discovery/notices.py).
                        log_level="info",
                        # Relayed to the client whose call asked (backchannel.py), refused when
                        # that client cannot answer: declared so that servers ask at all.
                        sampling_callback=self._on_sampling,
                        elicitation_callback=self._on_elicitation,
                        list_roots_callback=self._on_list_roots,
                    )
                )
                tools = await _list_all(client)
            self.protocol_version = client.protocol_version
            self.capabilities = client.server_capabilities
            self.lists_revision += 1
            await self._on_tools(self, tools)
            self.client = client
            self._down.clear()
            self.state, self.message = pb.SERVER_STATE_RUNNING, "running"
            self._was_running = True
            await self._notify_state()
            if not first.done():
                first.set_result(None)
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                listener = asyncio.create_task(self._listen(client), name=f"mcp-listen-{self.name}")
                stack.push_async_callback(_cancel, listener)
            stack.push_async_callback(self._end_resources)
            self._resubscribe(client)
            await self._watch(client)

    def _transport(self) -> Any:
        spec = self.spec
        if spec.url:
            self.transport = None
            return streamable_http_client(spec.url)
        assert spec.log_path is not None
        self.transport = StdioTransport(
            spec.command,
            spec.args,
            env=spec.env,
            cwd=spec.cwd,
            log_path=spec.log_path,
            max_line_bytes=self.cfg.max_line_bytes,
            max_invalid_lines=self.cfg.max_invalid_lines,
            stop_grace_s=self.cfg.stop_grace_s,
            on_close=self._kick.set,
            pid_path=spec.pid_path,
            jail=spec.jail,
            log_max_bytes=self.cfg.log_max_bytes,
            work_dir=spec.jail.work_dir if spec.jail is not None else None,
            work_max_bytes=self.cfg.work_max_bytes,
            work_check_interval_s=self.cfg.work_check_interval_s,
        )
        return self.transport

    async def _watch(self, client: Client) -> None:
        """Return when the connection should end (stop, process gone, failed health check).

        A health check left unanswered while calls are in flight is taken as the server being
        busy with them (a one-thread server answers nothing else meanwhile), up to BUSY_MISSES in a
        row: ending the connection then would fail every caller's call, and each call has its own
        deadline. An error answer, or a miss with no call in flight, ends it as before."""
        misses = 0
        while True:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.health_interval_s):
                    await self._kick.wait()
            if self._stopping:
                self.message = "stopping"
                return
            if self.transport is not None and self.transport.closed.is_set():
                await self.transport.wait_exit(1.0)
                self.message = self.transport.describe_end()
                return
            try:
                async with asyncio.timeout(self.cfg.health_timeout_s):
                    if self._relist:
                        self._relist = False
                        await self._on_tools(self, await _list_all(client))
                    elif client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                        await client.session.send_ping()
                    else:
                        await client.session.list_tools()
            except TimeoutError as exc:
                if self._calls and misses < BUSY_MISSES and not self.transport_ended():
                    misses += 1
                    log.info(
                        "MCP server %s did not answer a health check within %gs while %d calls run: "
                        "taken as busy (%d of %d in a row)",
                        self.name,
                        self.cfg.health_timeout_s,
                        len(self._calls),
                        misses,
                        BUSY_MISSES,
                    )
                    continue
                self.message = f"health check failed: {_describe(exc, self.transport, 'a health check')}"
                return
            except (MCPError, OSError) as exc:
                self.message = f"health check failed: {_describe(exc, self.transport)}"
                return
            misses = 0

    def transport_ended(self) -> bool:
        """Whether the server's process closed its side (then a miss is no longer busyness)."""
        return self.transport is not None and (
            self.transport.closed.is_set() or self.transport.ended_by_server
        )

    async def _listen(self, client: Client) -> None:
        """2026-07-28 sessions announce list changes (tools, prompts, resources) only on a
        `subscriptions/listen` stream."""
        caps = client.server_capabilities
        tools = caps.tools is not None and bool(caps.tools.list_changed)
        prompts = caps.prompts is not None and bool(caps.prompts.list_changed)
        resources = caps.resources is not None and bool(caps.resources.list_changed)
        if not (tools or prompts or resources):
            return
        try:
            async with client.listen(
                tools_list_changed=tools, prompts_list_changed=prompts, resources_list_changed=resources
            ) as subscription:
                async for event in subscription:
                    if isinstance(event, PromptsListChanged | ResourcesListChanged):
                        self.lists_revision += 1
                    self._relist = True
                    self._kick.set()
        except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as exc:
            log.info("MCP server %s: no tool-list subscription (%s)", self.name, exc)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.LoggingMessageNotification):
            if self.on_notice is not None:
                self.on_notice(
                    message.method, message.params.model_dump(by_alias=True, mode="json", exclude_none=True)
                )
        elif isinstance(message, types.ResourceUpdatedNotification):  # the fleet keeps those held
            # (in 2026-07-28 they come on the URI's listen stream, which hands them on itself)
            if self.on_notice is not None and self.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                self.on_notice(
                    message.method, message.params.model_dump(by_alias=True, mode="json", exclude_none=True)
                )
        elif isinstance(message, types.ToolListChangedNotification):
            self._relist = True
            self._kick.set()
        elif isinstance(message, types.PromptListChangedNotification | types.ResourceListChangedNotification):
            self.lists_revision += 1  # registered again with the tools, at the next watch round
            self._relist = True
            self._kick.set()

    async def _notify_state(self) -> None:
        try:
            await self._on_state(self)
        except Exception:
            log.exception("state callback failed for %s", self.name)


def _settle(acked: asyncio.Future[None], exc: BaseException | None) -> bool:
    """Answer the subscriber waiting for `acked` (False: it had its answer already)."""
    if acked.done():
        return False
    if exc is None:
        acked.set_result(None)
    else:
        acked.set_exception(exc)
    return True


def _log_refusal(name: str, uri: str) -> Callable[[asyncio.Future[None]], None]:
    def done(acked: asyncio.Future[None]) -> None:
        if not acked.cancelled() and acked.exception() is not None:
            log.info("MCP server %s: no subscription to %s again: %s", name, uri[:200], acked.exception())

    return done


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _list_all(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.session.list_tools(
            params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _describe(exc: BaseException, transport: StdioTransport | None, waited: str = "the MCP handshake") -> str:
    if transport is not None and transport.failure:
        return transport.failure
    if isinstance(exc, TimeoutError):
        if transport is not None and transport.ended_by_server:
            return transport.describe_end()
        return f"no answer to {waited} in time"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e, transport) for e in exc.exceptions)
    if transport is not None and transport.ended_by_server:
        return transport.describe_end()
    return f"{type(exc).__name__}: {exc}"[:500]

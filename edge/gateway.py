"""The edge's view of the hub: a live registry cache and the direct data path.

The hub stays the source of truth. The gateway lists the registry once, then
follows `WatchToolEvents`, so its cache is current within one event's latency;
it reconnects (and resyncs) when the hub restarts. Calls to gRPC tool servers
go straight from the edge to the server through the same Router the hub uses
(one hop instead of two); usage is counted here and reported to the hub in
batches with `ReportUsage`, so the registry's figures stay right. Anything the
edge cannot reach itself (in-process function tools, MCP servers the hub
supervises) is relayed through the hub's `ExecuteTool`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_library_pb2 as lib
from toolscore.v1 import tool_library_pb2_grpc as lib_grpc
from toolscore.v1 import tool_pb2
from toolscore.v1 import toolscore_pb2_grpc as ts_grpc

from services.common import authority
from services.common.credentials import CredentialFile
from services.common.errors import MeshError, Unavailable, from_rpc_error
from services.library.registry import WATCH_REVISION_KEY, Entry, make_entry
from services.router.channels import ChannelPool, ProgressFn, channel_options
from services.router.router import Router

log = logging.getLogger(__name__)
Listener = Callable[[tool_pb2.ToolEvent], None]
# (tool_id or "_unknown", outcome: "ok" | "tool_error" | a fault's reason, seconds)
CallObserver = Callable[[str, str, float], None]
REMOVED = tool_pb2.TOOL_EVENT_TYPE_REMOVED


class _Unreadable(Exception):
    """A message from the hub that this edge could not parse."""


@dataclass
class _Usage:
    calls: int = 0
    successes: int = 0
    seconds: float = 0.0
    last_used: float = 0.0


@dataclass
class GatewayOptions:
    hub_target: str
    direct: bool = True
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    max_argument_bytes: int = 1024 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    usage_flush_s: float = 1.0
    event_buffer: int = 10000
    admin_token: str = field(default="", repr=False)
    # The hub's service credential file (auth.service_credential_path): usage reports prove with it.
    service_credential_path: str = ""


class HubGateway:
    """Async context manager: registry cache + router + usage reporter, all owned here."""

    def __init__(self, opts: GatewayOptions) -> None:
        self.opts = opts
        self._admin_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {opts.admin_token}"),) if opts.admin_token else ()
        )
        self._credential = (
            CredentialFile(Path(opts.service_credential_path)) if opts.service_credential_path else None
        )
        self.entries: dict[str, Entry] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        # Why the cache may be behind the hub ("" while it follows the hub's events): any failure of
        # the watch sets it until a fresh listing and a new watch have caught up. /health shows it.
        self.problem = ""
        # Set once the cache holds the hub's state as of when the current watch started (the listing
        # and the events the watch replays up to that revision), and while it follows; cleared with
        # a problem. /health says healthy only while it is set.
        self.following = asyncio.Event()
        self.troubled = asyncio.Event()  # set while `problem` is
        self._catch_up_to = 0  # the hub's revision when the current watch started
        self.listeners: list[Listener] = []
        # Recent events (revision order) for clients that resume with ?since=.
        self.recent: collections.deque[tool_pb2.ToolEvent] = collections.deque(maxlen=opts.event_buffer)
        self.call_observers: list[CallObserver] = []
        # Called after the cache was rebuilt from a fresh listing (the hub restarted, or came back).
        self.resync_listeners: list[Callable[[], None]] = []
        self._usage: dict[str, _Usage] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def __aenter__(self) -> HubGateway:
        o = self.opts
        self.channel = grpc.aio.insecure_channel(
            o.hub_target, options=channel_options(o.max_message_bytes, o.hub_target.startswith("unix:"))
        )
        self.library = lib_grpc.ToolLibraryServiceStub(self.channel)
        self.toolscore = ts_grpc.ToolScoreServiceStub(self.channel)
        self._relay = self.channel.unary_unary(
            "/toolscore.v1.ToolScoreService/ExecuteTool",
            request_serializer=ex.ExecuteRequest.SerializeToString,
            response_deserializer=ex.ExecuteResponse.FromString,
        )
        self.pool = ChannelPool(o.max_message_bytes)
        self.router = Router(
            self.entries.get,
            self.pool,
            default_timeout_s=o.default_timeout_s,
            max_timeout_s=o.max_timeout_s,
            max_argument_bytes=o.max_argument_bytes,
            record=self._record,
            service_proof=self._service_proof,
        )
        self._tasks = [
            asyncio.create_task(self._follow(), name="gateway-watch"),
            asyncio.create_task(self._report_loop(), name="gateway-usage"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await self.flush_usage(timeout_s=1.0)
        await self.pool.close()
        await self.channel.close()

    # -- the registry cache --------------------------------------------------

    def tools(self) -> list[tool_pb2.Tool]:
        """Every known tool (with health as last reported), in id order."""
        return [self.entries[k].snapshot() for k in sorted(self.entries)]

    async def _follow(self) -> None:
        """List, then follow the hub's events; on any failure list again, until cancelled."""
        delay = 0.1
        while True:
            try:
                await self._resync()
                watch = self.library.WatchToolEvents(lib.WatchToolEventsRequest(since_revision=self.revision))
                started = await self._watch_started(watch)
                if started is not None:  # None: it ended before it started; iterating raises why
                    self._catch_up_to = started
                    self._check_caught_up()
                delay = 0.1
                async for resp in watch:
                    if resp is None:  # grpc hands back None for a message it could not parse
                        raise _Unreadable("an event from the hub could not be parsed")
                    self._apply(resp.event)
                    self._check_caught_up()
                self._fell_behind("the hub closed the event stream")
                continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.synced.clear()  # unreachable; any other status: reachable, but we are behind
                self._fell_behind(f"event stream failed: {exc.code().name}: {exc.details()}")
            except Exception as exc:  # anything else: the cache may be stale, so never just stop
                self._fell_behind(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _watch_started(self, watch: Any) -> int | None:
        """The hub's revision when `watch` started (its initial metadata says; docs/grpc.md), or
        None when the watch ended before it started (the hub never had it in place).

        A hub that does not say (one older than this metadata, which sends it only with its first
        event): the listing's revision.
        """
        metadata = await watch.initial_metadata()
        for key, value in metadata or ():
            if key == WATCH_REVISION_KEY:
                return int(value)
        return None if watch.done() else self.revision

    def _check_caught_up(self) -> None:
        if self.revision >= self._catch_up_to and not self.following.is_set():
            self._caught_up()

    def _caught_up(self) -> None:
        log.info("caught up with the hub at revision %d", self.revision)  # once per watch that gets here
        self.problem = ""
        self.troubled.clear()
        self.following.set()

    def _fell_behind(self, why: str) -> None:
        if why != self.problem:  # one line per distinct failure, not per retry
            log.warning("registry cache may be stale (%s); resyncing", why)
        self.problem = why
        self.following.clear()
        self.troubled.set()

    async def _resync(self) -> None:
        """Replace the cache with a fresh listing; emit the differences as events to listeners."""
        tools: list[tool_pb2.Tool] = []
        token, revision = "", 0
        while True:
            page = await self.library.ListTools(
                lib.ListToolsRequest(page_size=1000, page_token=token), wait_for_ready=True, timeout=30
            )
            if page is None:  # as for events: a listing grpc could not parse
                raise _Unreadable("a page of the hub's listing could not be parsed")
            tools.extend(page.tools)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                break
        fresh = {}
        for t in tools:
            with contextlib.suppress(MeshError):
                fresh[t.tool_id] = self._entry(t)
        first = not self.synced.is_set() and not self.entries and self.revision == 0
        old = dict(self.entries)
        self.entries.clear()
        self.entries.update(fresh)
        self.revision = revision
        self.synced.set()
        self._wake_waiters()
        if first:
            log.info("synced with the hub: %d tools at revision %d", len(fresh), revision)
            return
        for tool_id, entry in fresh.items():  # tell listeners what changed while we were away
            prev = old.get(tool_id)
            if prev is None or prev.tool.SerializeToString() != entry.tool.SerializeToString():
                kind = (
                    tool_pb2.TOOL_EVENT_TYPE_INSTALLED if prev is None else tool_pb2.TOOL_EVENT_TYPE_UPDATED
                )
                self._notify(tool_pb2.ToolEvent(revision=revision, type=kind, tool=entry.snapshot()))
        for tool_id, entry in old.items():
            if tool_id not in fresh:
                self._notify(tool_pb2.ToolEvent(revision=revision, type=REMOVED, tool=entry.snapshot()))
        for callback in list(self.resync_listeners):
            try:
                callback()
            except Exception:
                log.exception("resync listener failed")

    def _entry(self, tool: tool_pb2.Tool) -> Entry:
        entry = make_entry(tool)
        entry.health = tool.health
        entry.calls, entry.successes = tool.stats.usage_count, tool.stats.success_count
        return entry

    def _apply(self, event: tool_pb2.ToolEvent) -> None:
        if event.revision <= self.revision:
            return
        self.revision = event.revision
        if event.type == REMOVED:
            self.entries.pop(event.tool.tool_id, None)
        else:
            try:
                self.entries[event.tool.tool_id] = self._entry(event.tool)
            except MeshError:
                log.warning("ignoring tool %s: its definition does not validate here", event.tool.tool_id)
        self.recent.append(event)
        self._notify(event)
        self._wake_waiters()

    async def wait_revision(self, revision: int, timeout_s: float = 5.0) -> bool:
        """Wait until the cache reflects `revision` (read-your-writes after a registration)."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot = (revision, fut)
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(slot)

    def _wake_waiters(self) -> None:
        for revision, fut in self._waiters:
            if revision <= self.revision and not fut.done():
                fut.set_result(None)

    def _notify(self, event: tool_pb2.ToolEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    # -- the data path ---------------------------------------------------------

    async def execute(
        self,
        request: ex.ExecuteRequest,
        *,
        deadline_s: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> ex.ExecuteResponse:
        """Run a call: direct to a gRPC tool server when possible, else relayed through the hub.

        Tool failures come back as `is_error` responses; protocol faults raise MeshError.
        Every call, whatever its outcome, is reported to `call_observers`.
        """
        if not self.call_observers:
            return await self._execute(request, deadline_s, on_progress)
        start = time.perf_counter()
        outcome = "CANCELLED"
        try:
            resp = await self._execute(request, deadline_s, on_progress)
            outcome = "tool_error" if resp.is_error else "ok"
            return resp
        except MeshError as err:
            outcome = err.reason
            raise
        finally:
            tool_id = request.tool_id if request.tool_id in self.entries else "_unknown"
            elapsed = time.perf_counter() - start
            for observe in self.call_observers:
                observe(tool_id, outcome, elapsed)

    async def _execute(
        self, request: ex.ExecuteRequest, deadline_s: float | None, on_progress: ProgressFn | None
    ) -> ex.ExecuteResponse:
        entry = self.entries.get(request.tool_id)
        if entry is not None and self.opts.direct and self.router.reaches(entry):
            return await self.router.execute(request, deadline_s=deadline_s, on_progress=on_progress)
        if entry is None:
            # Not in this cache (yet): the hub decides, so it must hear the caller's own rights,
            # neither less (an admin refused) nor more (anyone acting as admin).
            return await self._relay_call(request, deadline_s, authority.caller_is_admin())
        await self.router.resolve(request, deadline_s)  # checked here first: bad calls cost no hop
        return await self._relay_call(request, deadline_s, request.action in entry.admin_actions)

    async def _relay_call(
        self, request: ex.ExecuteRequest, deadline_s: float | None, admin: bool = False
    ) -> ex.ExecuteResponse:
        timeout = self.router.timeout_for(request, deadline_s)
        # `admin`: the caller proved admin rights here; the hub hears them as the edge's token.
        metadata = self._admin_metadata if admin else ()
        try:
            return await self._relay(request, timeout=timeout + 0.5, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._hub_error(exc) from None

    # -- registry writes (the hub decides; the cache follows its events) ------------

    async def register(self, tool: tool_pb2.Tool, *, timeout_s: float = 10.0) -> lib.RegisterToolResponse:
        """RegisterTool on the hub; returns once this cache reflects the change."""
        return await self._write(self.library.RegisterTool, lib.RegisterToolRequest(tool=tool), timeout_s)

    async def deregister(self, tool_id: str, *, timeout_s: float = 10.0) -> lib.DeregisterToolResponse:
        """DeregisterTool on the hub; returns once this cache reflects the change."""
        return await self._write(
            self.library.DeregisterTool, lib.DeregisterToolRequest(tool_id=tool_id), timeout_s
        )

    async def _write(self, rpc: Any, request: Any, timeout_s: float) -> Any:
        """An admin write on the hub (with the admin token), then wait for this cache to catch up."""
        try:
            resp = await rpc(request, metadata=self._admin_metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._hub_error(exc) from None
        await self.wait_revision(resp.revision)
        return resp

    async def history(self, since: int, until: int, *, timeout_s: float = 10.0) -> list[tool_pb2.ToolEvent]:
        """Events (since, until] from the hub's own history (OutOfRange when compacted)."""
        events: list[tool_pb2.ToolEvent] = []
        if until <= since:
            return events
        call = self.library.WatchToolEvents(
            lib.WatchToolEventsRequest(since_revision=since), timeout=timeout_s
        )
        try:
            async for resp in call:
                if resp.event.revision > until:
                    break
                events.append(resp.event)
                if resp.event.revision >= until:
                    break
        except grpc.aio.AioRpcError as exc:
            raise self._hub_error(exc) from None
        finally:
            call.cancel()
        return events

    @staticmethod
    def _hub_error(exc: grpc.aio.AioRpcError) -> MeshError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"hub unreachable: {exc.details()}", reason="HUB_UNAVAILABLE")
        return from_rpc_error(exc)

    def _credential_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._credential.metadata() if self._credential else ()

    def _service_proof(self) -> tuple[tuple[str, str], ...]:
        """What proves this edge is the mesh's: the hub's credential, or where this edge cannot read
        its file (another machine, another root) the admin token (docs/config/auth.md)."""
        return self._credential_metadata() or self._admin_metadata

    def _record(self, entry: Entry, ok: bool, seconds: float) -> None:
        u = self._usage.get(entry.tool.tool_id)
        if u is None:
            u = self._usage[entry.tool.tool_id] = _Usage()
        u.calls += 1
        u.successes += ok
        u.seconds += seconds
        u.last_used = time.time()
        entry.record(ok, seconds)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.usage_flush_s)
            try:
                await self.flush_usage()
            except grpc.aio.AioRpcError as exc:
                log.info("usage report deferred (%s)", exc.code().name)

    async def flush_usage(self, timeout_s: float = 5.0) -> None:
        """Send the usage counted since the last report to the hub (kept for later on failure)."""
        if not self._usage:
            return
        batch, self._usage = self._usage, {}
        req = lib.ReportUsageRequest(
            usage=[
                lib.ToolUsage(
                    tool_id=k,
                    calls=u.calls,
                    successes=u.successes,
                    total_seconds=u.seconds,
                    last_used_unix=u.last_used,
                )
                for k, u in batch.items()
            ]
        )
        try:
            # Only the mesh may report usage: the credential (re-read after a hub restart) or the token.
            proof = (*self._admin_metadata, *self._credential_metadata())
            await self.library.ReportUsage(req, metadata=proof, timeout=timeout_s)
        except BaseException:
            for k, u in batch.items():  # keep the figures for the next report: nothing is lost
                mine = self._usage.setdefault(k, _Usage())
                mine.calls += u.calls
                mine.successes += u.successes
                mine.seconds += u.seconds
                mine.last_used = max(mine.last_used, u.last_used)
            raise


__all__ = ["GatewayOptions", "HubGateway"]

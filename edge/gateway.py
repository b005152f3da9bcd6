"""The edge's call path to the hub and to tool servers.

Calls to gRPC tool servers go straight from the edge to the server through the
same Router the hub uses (one hop instead of two); anything the edge cannot
reach itself (in-process function tools, MCP servers the hub supervises) is
relayed to the hub over its `ExecuteStream` (services.router.link: one stream for plain callers,
another, carrying the admin token, for callers who proved admin rights here; progress and
cancellation ride on it). Registry writes go to the hub and return
once the edge's registry cache (edge.registry_cache) reflects them. The gateway
owns the hub channel and lends it, for its lifetime, to its two collaborators:
the registry cache, which follows the hub's events, and the usage reporter
(edge.usage), which reports the calls made on the direct path.
"""

from __future__ import annotations

import contextlib
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

from edge.registry_cache import RegistryCache, Unsubscribe, hub_error
from edge.usage import UsageReporter
from services.common import authority
from services.common.credentials import CredentialFile
from services.common.errors import MeshError, Unavailable
from services.library.registry import Entry
from services.router.channels import ChannelPool, ProgressFn, StreamBroken, channel_options
from services.router.link import RouterLink
from services.router.router import Handler, Router, Unmount, set_duration

# (tool_id or "_unknown", action, outcome: "ok" | "tool_error" | a fault's reason, seconds)
CallObserver = Callable[[str, str, str, float], None]


@dataclass
class GatewayOptions:
    hub_target: str
    direct: bool = True
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    max_argument_bytes: int = 1024 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    admin_token: str = field(default="", repr=False)
    # The hub's service credential file (auth.service_credential_path): usage reports prove with it.
    service_credential_path: str = ""
    # The cluster node this edge runs on (`[cluster] node_id`, the same as its hub's): a replica
    # held by that node is called directly; a call none of them can take goes through the hub.
    node: str = ""


class HubGateway:
    """Async context manager: the hub channel, the router, and the call path over them.

    `cache` and `usage` (fresh ones when not given) follow the hub and report usage
    while the gateway is open.
    """

    def __init__(
        self, opts: GatewayOptions, cache: RegistryCache | None = None, usage: UsageReporter | None = None
    ) -> None:
        self.opts = opts
        self.cache = cache if cache is not None else RegistryCache()
        self.usage = usage if usage is not None else UsageReporter()
        self._lookup = self.cache.get
        self._admin_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {opts.admin_token}"),) if opts.admin_token else ()
        )
        self._credential = (
            CredentialFile(Path(opts.service_credential_path)) if opts.service_credential_path else None
        )
        self._call_observers: list[CallObserver] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> HubGateway:
        o = self.opts
        self.channel = grpc.aio.insecure_channel(
            o.hub_target, options=channel_options(o.max_message_bytes, o.hub_target.startswith("unix:"))
        )
        self.library = lib_grpc.ToolLibraryServiceStub(self.channel)
        self.toolscore = ts_grpc.ToolScoreServiceStub(self.channel)
        self._link = RouterLink(self.channel, o.hub_target, o.max_message_bytes, admin=self._admin_metadata)
        self.pool = ChannelPool(o.max_message_bytes)
        self.router = Router(
            self._lookup,
            self.pool,
            default_timeout_s=o.default_timeout_s,
            max_timeout_s=o.max_timeout_s,
            max_argument_bytes=o.max_argument_bytes,
            record=self.usage.record,
            service_proof=self._service_proof,
            node=o.node,
            # In a cluster, a tool no replica of this node can take goes to the hub, which forwards it.
            forward=self._relay_to_node if o.node else None,
        )
        # Entered in this order so the watch stops first and the last usage report goes out before
        # the channel closes.
        await self._stack.enter_async_context(self.usage.reporting(self.library, self._usage_proof))
        await self._stack.enter_async_context(self.cache.follow(self.library))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        await self._link.close()
        await self.pool.close()
        await self.channel.close()

    def mount(self, endpoint: str, handler: Handler) -> Unmount:
        """Serve `endpoint` in this process on the direct path (Router.mount, while the gateway is
        open): its tools' calls reach `handler` with no hop. Returns the call that undoes it."""
        return self.router.mount(endpoint, handler)

    def observe_calls(self, observer: CallObserver) -> Unsubscribe:
        """Report every call to `observer` (tool id, action, outcome, seconds); returns the call that
        stops it. Observers run in the caller's context, at the end of its call."""
        self._call_observers.append(observer)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._call_observers.remove(observer)

        return stop

    # -- the data path ---------------------------------------------------------

    async def execute(
        self,
        request: ex.ExecuteRequest,
        *,
        deadline_s: float | None = None,
        on_progress: ProgressFn | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> ex.ExecuteResponse:
        """Run a call: direct to a gRPC tool server when possible, else relayed through the hub.

        `arguments`: the request's arguments as jsonvalue.to_struct returned them while the caller
        built them (Router.execute). Tool failures come back as `is_error` responses; protocol
        faults raise MeshError. Every call, whatever its outcome, is reported to the observers
        (`observe_calls`).
        """
        if not self._call_observers:
            return await self._execute(request, deadline_s, on_progress, arguments)
        start = time.perf_counter()
        outcome = "CANCELLED"
        try:
            resp = await self._execute(request, deadline_s, on_progress, arguments)
            outcome = "tool_error" if resp.is_error else "ok"
            return resp
        except MeshError as err:
            outcome = err.reason
            raise
        finally:
            tool_id = request.tool_id if self._lookup(request.tool_id) is not None else "_unknown"
            elapsed = time.perf_counter() - start
            for observe in self._call_observers:
                observe(tool_id, request.action, outcome, elapsed)

    async def _execute(
        self,
        request: ex.ExecuteRequest,
        deadline_s: float | None,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any] | None,
    ) -> ex.ExecuteResponse:
        entry = self._lookup(request.tool_id)
        if entry is not None and self.opts.direct:
            # The router checks the call, then runs it or, when it cannot reach the tool itself,
            # hands it back to be relayed (checked here: bad calls cost no hop).
            return await self.router.execute(
                request,
                deadline_s=deadline_s,
                on_progress=on_progress,
                arguments=arguments,
                elsewhere=self._relay_checked,
            )
        if entry is None:
            # Not in this cache (yet): the hub decides, so it must hear the caller's own rights,
            # neither less (an admin refused) nor more (anyone acting as admin).
            return await self._relay_call(request, deadline_s, authority.caller_is_admin(), on_progress)
        refused = await self.router.precheck(request, deadline_s)  # checked here: bad calls cost no hop
        if refused is not None:
            return refused
        return await self._relay_call(request, deadline_s, request.action in entry.admin_actions, on_progress)

    async def _relay_checked(
        self, entry: Entry, request: ex.ExecuteRequest, timeout_s: float, on_progress: ProgressFn | None
    ) -> ex.ExecuteResponse:
        """A call the router checked but cannot run itself, relayed through the hub."""
        return await self._relay_call(request, timeout_s, request.action in entry.admin_actions, on_progress)

    async def _relay_call(
        self,
        request: ex.ExecuteRequest,
        deadline_s: float | None,
        admin: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> ex.ExecuteResponse:
        timeout = self.router.timeout_for(request, deadline_s)
        set_duration(request.timeout, timeout)  # the hub's deadline for the call: no RPC carries one
        # `admin`: the caller proved admin rights here; the hub hears them as the edge's token (the
        # link's admin stream), and every other call goes on the stream that carries no token.
        try:
            return await self._link.call(request, timeout + 0.5, admin, on_progress)
        except StreamBroken as exc:
            raise Unavailable(f"hub unreachable: {exc.message}", reason="HUB_UNAVAILABLE") from None
        except grpc.aio.AioRpcError as exc:  # a hub without ExecuteStream, called with unary ExecuteTool
            raise hub_error(exc) from None

    async def _relay_to_node(
        self,
        node: str,
        request: ex.ExecuteRequest,
        timeout_s: float,
        admin: bool,
        on_progress: ProgressFn | None,
    ) -> ex.ExecuteResponse:
        """A call for a tool held by another node (or by none of this node's replicas that could
        take it): relayed to this edge's hub, which sends it on to a node that holds the tool."""
        return await self._relay_call(request, timeout_s, admin, on_progress)

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
            raise hub_error(exc) from None
        await self.cache.wait_revision(resp.revision)
        return resp

    def _credential_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._credential.metadata() if self._credential else ()

    def _service_proof(self) -> tuple[tuple[str, str], ...]:
        """What proves this edge is the mesh's: the hub's credential, or where this edge cannot read
        its file (another machine, another root) the admin token (docs/config/auth.md)."""
        return self._credential_metadata() or self._admin_metadata

    def _usage_proof(self) -> tuple[tuple[str, str], ...]:
        """Only the mesh may report usage: the credential (re-read after a hub restart) or the token."""
        return (*self._admin_metadata, *self._credential_metadata())


__all__ = ["GatewayOptions", "HubGateway"]

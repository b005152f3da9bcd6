"""The hub as one async context manager: store, registry, router, servers and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from toolscore.v1 import executor_pb2, tool_library_pb2_grpc, tool_pb2

from services.common import credentials
from services.common.config import Config
from services.common.grpc_server import CallerProof, MeshServer, ServiceBinding
from services.hub import health
from services.hub.function_tools import FunctionTool
from services.hub.servicer import SERVICE as TOOLSCORE_SERVICE
from services.hub.servicer import ToolScoreServicer, add_to_server
from services.library import servicer as library
from services.library.feed import InProcessFeed
from services.library.registry import Entry, Registry
from services.library.store import SqliteStore
from services.library.validation import tool_bytes_limit
from services.router.channels import ChannelPool, ProgressFn
from services.router.router import Router

log = logging.getLogger(__name__)
HUB_OWNER = "toolscore-hub"


def _admin_rights(proof: CallerProof) -> Callable[[grpc.aio.ServicerContext], bool]:
    """Whether an ExecuteTool caller has admin rights: everyone without a token, else its holders."""
    if not proof.token_set:
        return lambda context: True
    return proof.admin


class Hub:
    """Everything the hub process runs. `listen` overrides the configured addresses (tests use port 0)."""

    def __init__(self, cfg: Config, listen: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self._listen = (
            list(listen)
            if listen is not None
            else [
                f"unix://{cfg.path(cfg.hub.uds)}" if cfg.hub.uds else "",
                cfg.hub.tcp,
            ]
        )
        self._stack = contextlib.AsyncExitStack()
        self._wake = asyncio.Event()
        self.functions: list[FunctionTool] = []

    async def __aenter__(self) -> Hub:
        cfg = self.cfg
        try:
            store = await SqliteStore(cfg.path(cfg.store.sqlite_path), cfg.hub.event_retention).open()
            self._stack.push_async_callback(store.close)
            self.feed = InProcessFeed(cfg.feed.subscriber_queue)
            self._stack.callback(self.feed.close)
            # A new credential per start: the executor and the edge read it from its private file.
            self.service_credential = credentials.mint(cfg.path(cfg.auth.service_credential_path))
            proof = CallerProof(cfg.auth.admin_token, self.service_credential)
            self.registry = await Registry(
                store,
                self.feed,
                credentials.RESERVED_OWNERS,
                max_tool_bytes=tool_bytes_limit(cfg.hub.max_message_bytes),
            ).open()
            self.registry.listeners.append(self._on_event)
            self._stack.push_async_callback(self.registry.flush_stats)
            self.pool = ChannelPool(cfg.hub.max_message_bytes)
            self._stack.push_async_callback(self.pool.close)
            self.router = Router(
                self.registry.entry,
                self.pool,
                default_timeout_s=cfg.hub.default_timeout_s,
                max_timeout_s=cfg.hub.max_timeout_s,
                max_argument_bytes=cfg.hub.max_argument_bytes,
                service_proof=lambda: ((credentials.METADATA_KEY, self.service_credential),),
            )
            await self._register_functions()
            if cfg.executor.use_inprocess_python_executor:
                await self._attach_inprocess_executor()
            extra, protected = {}, set(library.PROTECTED)
            if cfg.discovery.enabled:  # installed MCP servers come back before the hub serves
                from services.discovery import servicer as discovery_rpc
                from services.discovery.discovery import Discovery

                self.discovery = await self._stack.enter_async_context(
                    Discovery(cfg, self.registry, self.router)
                )
                extra = discovery_rpc.method_handlers(discovery_rpc.DiscoveryServicer(self.discovery))
                protected |= discovery_rpc.PROTECTED
            self.server = MeshServer(
                [
                    ServiceBinding(
                        library.SERVICE,
                        library.ToolLibraryServicer(self.registry, proof.service, cfg.hub.max_message_bytes),
                        tool_library_pb2_grpc.add_ToolLibraryServiceServicer_to_server,
                    ),
                    ServiceBinding(
                        TOOLSCORE_SERVICE,
                        ToolScoreServicer(self.router, extra, is_admin=_admin_rights(proof)),
                        add_to_server,  # type: ignore[arg-type]
                    ),
                ],
                self._listen,
                admin_token=cfg.auth.admin_token,
                protected_methods=protected,
                service_credential=self.service_credential,
                service_methods=library.SERVICE_ONLY,
                max_message_bytes=cfg.hub.max_message_bytes,
            )
            await self._stack.enter_async_context(self.server)
            # On exit, end every watch stream first so the server's drain does not wait on them.
            self._stack.callback(self.feed.close)
            self._tasks = [asyncio.create_task(self._flush_loop(), name="stats-flush")]
            if cfg.hub.health_interval_s > 0:  # 0 disables health checks
                self._tasks.append(
                    asyncio.create_task(
                        health.run(
                            self.pool,
                            self.registry,
                            cfg.hub.health_interval_s,
                            cfg.hub.health_timeout_s,
                            self._wake,
                        ),
                        name="health",
                    )
                )
            self._stack.push_async_callback(self._stop_tasks)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def uds_target(self) -> str | None:
        return self.server.uds_address()

    @property
    def tcp_target(self) -> str | None:
        return self.server.tcp_address()

    def _on_event(self, event: tool_pb2.ToolEvent) -> None:
        if event.type in (tool_pb2.TOOL_EVENT_TYPE_INSTALLED, tool_pb2.TOOL_EVENT_TYPE_UPDATED):
            self._wake.set()

    async def _register_functions(self) -> None:
        wanted = set()
        for fc in self.cfg.function_tools:
            tool = FunctionTool(fc)
            self.functions.append(tool)
            self._stack.callback(self.router.mount(f"inproc://{tool.endpoint_name}", tool.handle))
            await self.registry.register(tool.definition(HUB_OWNER), reclaim=True)
            wanted.add(fc.tool_id)
        for entry in self.registry.entries():  # drop function tools no longer configured
            if entry.tool.owner == HUB_OWNER and entry.tool.tool_id not in wanted:
                await self.registry.deregister(entry.tool.tool_id)

    async def _attach_inprocess_executor(self) -> None:
        from services.executor.service import INPROC_NAME, make_server, tool_definition

        server = make_server(self.cfg)
        await server.start()  # probe the sandbox and warm the pool now, not on the first call

        async def handle(
            entry: Entry,
            request: executor_pb2.ExecuteRequest,
            timeout_s: float,
            on_progress: ProgressFn | None,
            arguments: dict[str, Any],
        ) -> executor_pb2.ExecuteResponse:
            progress = (
                (lambda p, t, m: on_progress(executor_pb2.Progress(progress=p, total=t, message=m)))
                if on_progress
                else None
            )
            return await server.call(request, progress)

        endpoint = f"inproc://{INPROC_NAME}"
        self._stack.push_async_callback(server.close)
        self._stack.callback(self.router.mount(endpoint, handle))
        await self.registry.register(tool_definition(self.cfg, endpoint), reclaim=True)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.hub.stats_flush_s)
            try:
                await self.registry.flush_stats()
            except Exception:
                log.exception("stats flush failed")

    async def _stop_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

"""The hub as one async context manager: store, registry, router, servers and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from toolscore.v1 import executor_pb2, tool_library_pb2_grpc, tool_pb2

from services.common import config as config_mod
from services.common import credentials, listening
from services.common.config import Config
from services.common.errors import Unavailable
from services.common.grpc_server import CallerProof, MeshServer, ServiceBinding
from services.common.streams import SERVICE as EXECUTOR_SERVICE
from services.common.streams import add_tool_executor
from services.hub import health
from services.hub.function_tools import FunctionTool
from services.hub.servicer import SERVICE as TOOLSCORE_SERVICE
from services.hub.servicer import CallExecutor, ToolScoreServicer, add_to_server
from services.library import servicer as library
from services.library.feed import InProcessFeed
from services.library.placement import stale_here
from services.library.registry import Entry, Registry
from services.library.search_index import SearchIndex
from services.library.store import SqliteStore
from services.library.validation import tool_bytes_limit
from services.router.channels import ChannelPool, ProgressFn
from services.router.forward import Forwarder
from services.router.router import Router

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from services.library.redis_feed import RedisFeed
    from services.library.redis_nodes import NodeDirectory
    from services.library.redis_sessions import SessionOwners

log = logging.getLogger(__name__)
HUB_OWNER = "toolscore-hub"
# grpc.health.v1 name that is SERVING while the shared registry store can be followed (redis backend).
STORE_HEALTH = "toolscore.registry-store"


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
            config_mod.check(cfg)
            # A new credential per start: the executor and the edge read it from its private file.
            self.service_credential = credentials.mint(cfg.path(cfg.auth.service_credential_path))
            proof = CallerProof(cfg.auth.admin_token, self.service_credential)
            self.registry = await self._open_registry()
            self.registry.listeners.append(self._on_event)
            self._stack.push_async_callback(self._last_flush)
            self.pool = ChannelPool(cfg.hub.max_message_bytes)
            self._stack.push_async_callback(self.pool.close)
            forwarder = self._forwarder()
            self.router = Router(
                self.registry.entry,
                self.pool,
                default_timeout_s=cfg.hub.default_timeout_s,
                max_timeout_s=cfg.hub.max_timeout_s,
                max_argument_bytes=cfg.hub.max_argument_bytes,
                service_proof=lambda: ((credentials.METADATA_KEY, self.service_credential),),
                node=self.registry.node,
                forward=forwarder,
                spread=cfg.cluster.replicas == "round_robin",
                session_owner=self.session_owners.owner if self.session_owners is not None else None,
            )
            await self._register_functions()
            if cfg.executor.use_inprocess_python_executor:
                await self._attach_inprocess_executor()
            extra, protected = {}, set(library.PROTECTED)
            if cfg.discovery.enabled:  # installed MCP servers come back before the hub serves
                from services.discovery import servicer as discovery_rpc
                from services.discovery.discovery import Discovery

                self.discovery = await self._stack.enter_async_context(
                    Discovery(cfg, self.registry, self.router, self.nodes, self.redis)
                )
                extra = discovery_rpc.method_handlers(discovery_rpc.DiscoveryServicer(self.discovery))
                protected |= discovery_rpc.PROTECTED
            calls = CallExecutor(
                self.router,
                is_admin=_admin_rights(proof),
                cluster=self.nodes is not None,
                max_message_bytes=cfg.hub.max_message_bytes,
            )
            where = cfg.path(cfg.paths.run_dir) / listening.FILE  # the addresses it binds, for the banner
            self.server = MeshServer(
                [
                    ServiceBinding(
                        library.SERVICE,
                        library.ToolLibraryServicer(
                            self.registry, proof.service, cfg.hub.max_message_bytes, index=self.index
                        ),
                        tool_library_pb2_grpc.add_ToolLibraryServiceServicer_to_server,
                    ),
                    ServiceBinding(TOOLSCORE_SERVICE, ToolScoreServicer(calls, extra), add_to_server),  # type: ignore[arg-type]
                    # The edge's relay and other hubs' forwards: calls over ExecuteStream.
                    ServiceBinding(EXECUTOR_SERVICE, calls, add_tool_executor),
                ],
                self._listen,
                admin_token=cfg.auth.admin_token,
                protected_methods=protected,
                service_credential=self.service_credential,
                service_methods=library.SERVICE_ONLY,
                max_message_bytes=cfg.hub.max_message_bytes,
                # Before serving: whoever got an answer from this hub reads this hub's addresses.
                on_bound=lambda addresses: listening.write(where, addresses),
            )
            self._stack.callback(listening.remove, where)
            await self._stack.enter_async_context(self.server)
            # On exit, end every watch stream first so the server's drain does not wait on them.
            self._stack.callback(self.feed.close)
            self._tasks = [asyncio.create_task(self._flush_loop(), name="stats-flush")]
            if self.redis_feed is not None:
                self._tasks.append(asyncio.create_task(self._report_store_health(), name="store-health"))
            await self._announce()
            if self.nodes is not None:  # on exit, before the announcement goes
                self._stack.push_async_callback(self._withdraw_replicas)
            if cfg.hub.health_interval_s > 0:  # 0 disables health checks
                self._tasks.append(
                    asyncio.create_task(
                        health.run(
                            self.pool,
                            self.registry,
                            cfg.hub.health_interval_s,
                            cfg.hub.health_timeout_s,
                            self._wake,
                            self.nodes.nodes if self.nodes is not None else None,
                            cfg.cluster.node_ttl_s,
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

    async def _open_registry(self) -> Registry:
        """The registry over the configured store and feed (embedded, or shared on Redis)."""
        cfg = self.cfg
        self.redis_feed: RedisFeed | None = None
        self.nodes: NodeDirectory | None = None
        self.session_owners: SessionOwners | None = None
        self.redis: aioredis.Redis | None = None
        limit = tool_bytes_limit(cfg.hub.max_message_bytes)
        if cfg.store.backend != "redis":
            store = await SqliteStore(cfg.path(cfg.store.sqlite_path), cfg.hub.event_retention).open()
            self._stack.push_async_callback(store.close)
            self.feed: InProcessFeed | RedisFeed = InProcessFeed(cfg.feed.subscriber_queue)
            self._stack.callback(self.feed.close)
            registry = await Registry(
                store, self.feed, credentials.RESERVED_OWNERS, max_tool_bytes=limit
            ).open()
            await self._open_index(registry)
            return registry
        from services.common.redis_calls import redis_client  # Redis only when a cluster is configured
        from services.library.redis_feed import RedisFeed
        from services.library.redis_nodes import NodeDirectory
        from services.library.redis_sessions import SessionOwners
        from services.library.redis_store import RedisStore

        c = cfg.cluster
        # One bounded pool for every component's short commands (the follower's XREAD has its own).
        self.redis = redis_client(
            c.redis_url,
            timeout_s=c.redis_timeout_s,
            max_connections=c.redis_max_connections,
            name="toolscore-hub:" + re.sub(r"[^\w.:-]", "_", c.node()),  # SETNAME takes no spaces
        )
        self._stack.push_async_callback(self.redis.aclose)  # closed after every user of it
        shared = RedisStore(
            c.redis_url,
            client=self.redis,
            key_prefix=c.key_prefix,
            retention=cfg.hub.event_retention,
            timeout_s=c.redis_timeout_s,
            block_s=c.follow_block_s,
        )
        self._stack.push_async_callback(shared.close)
        await shared.open()
        self.feed = self.redis_feed = RedisFeed(
            shared,
            queue_size=cfg.feed.subscriber_queue,
            apply_timeout_s=c.apply_timeout_s,
            backoff_s=c.reconnect_backoff_s,
            backoff_max_s=c.reconnect_backoff_max_s,
        )
        self._stack.callback(self.feed.close)
        self.nodes = NodeDirectory(
            c.redis_url,
            key_prefix=c.key_prefix,
            node=c.node(),
            ttl_s=c.node_ttl_s,
            timeout_s=c.redis_timeout_s,
            secret=cfg.auth.admin_token,
            client=self.redis,
        )
        self._stack.push_async_callback(self.nodes.close)
        self.session_owners = SessionOwners(
            c.redis_url,
            key_prefix=c.key_prefix,
            node=c.node(),
            ttl_s=c.node_ttl_s,
            timeout_s=c.redis_timeout_s,
            client=self.redis,
        )
        self._stack.push_async_callback(self.session_owners.close)
        registry = Registry(
            shared,
            self.feed,
            credentials.RESERVED_OWNERS,
            max_tool_bytes=limit,
            follower=self.feed,
            node=self.nodes.node,
            stale=functools.partial(stale_here, hostname=socket.gethostname(), me=os.getpid()),
        )
        await registry.open()
        await self._open_index(registry)  # before the follower applies anything: it misses nothing
        self.feed.start(registry)
        self._stack.push_async_callback(self.feed.stop)
        log.info("registry shared on %s as node %s", shared.where, c.node())
        return registry

    async def _open_index(self, registry: Registry) -> None:
        """The search index of `registry`: every tool it loaded, then every event it applies."""
        self.index = await SearchIndex().open()
        self._stack.push_async_callback(self.index.close)
        await self.index.replace(e.full() for e in registry.entries())
        registry.listeners.append(self.index.apply)

    def _forwarder(self) -> Forwarder | None:
        """In a cluster, what sends calls to the node that holds their tool (else None)."""
        if self.nodes is None:
            return None
        forwarder = Forwarder(
            self.nodes.node,
            self.nodes.address,
            admin_token=self.cfg.auth.admin_token,
            max_message_bytes=self.cfg.hub.max_message_bytes,
        )
        self._stack.push_async_callback(forwarder.close)
        return forwarder

    async def _announce(self) -> None:
        """In a cluster, announce this node's address (its heartbeat) once the server listens."""
        if self.nodes is None:
            return
        address = self.cfg.cluster.advertise or self.tcp_target
        if not address:
            log.warning(
                "node %s has no address to advertise ([cluster] advertise or [hub] tcp)", self.nodes.node
            )
            return
        stop = asyncio.Event()
        beat = asyncio.create_task(self.nodes.heartbeat(address, stop), name="node-heartbeat")

        async def withdraw() -> None:  # on exit, first thing: other nodes stop forwarding here
            stop.set()
            await beat
            await nodes.withdraw()

        nodes = self.nodes
        self._stack.push_async_callback(withdraw)
        await nodes.started()  # a hub that has started can be found by the others
        log.info("node %s advertises %s", self.nodes.node, address)

    async def _withdraw_replicas(self) -> None:
        """A clean stop in a cluster: this node's replicas of tools other nodes also serve are
        withdrawn, so no call is tried here meanwhile; a tool only this node serves stays listed
        (it is this node's to serve again when it is back, as on one hub)."""
        assert self.nodes is not None
        for entry in self.registry.entries():
            try:
                await self.registry.withdraw(entry.tool.tool_id, keep_last=True)
            except Unavailable as exc:  # Redis away: calls pass the replica on while it is unannounced
                log.warning("replicas of node %s not withdrawn: %s", self.nodes.node, exc.message)
                return

    async def _report_store_health(self) -> None:
        """STORE_HEALTH follows the shared store: NOT_SERVING while it cannot be followed."""
        from grpc_health.v1 import health_pb2

        feed = self.redis_feed
        assert feed is not None
        while True:
            # Cleared before the status is read: a change while the status is being set (an await)
            # is then still pending at the wait. Cleared after, it was lost, and the health kept
            # saying NOT_SERVING after Redis was back (CI, tests/cluster/test_redis_restart.py).
            feed.problem_changed.clear()
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if feed.problem
                else health_pb2.HealthCheckResponse.SERVING
            )
            await self.server.health.set(STORE_HEALTH, status)
            await feed.problem_changed.wait()

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
                # In a cluster only this node's replica: another hub's list is its own.
                await self.registry.withdraw(entry.tool.tool_id)

    async def _attach_inprocess_executor(self) -> None:
        from services.executor import session_owners
        from services.executor.actions import INPROC_NAME, make_server, tool_definition

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
        await self._stack.enter_async_context(session_owners.claimed(self.cfg, server.sessions))
        self._stack.callback(self.router.mount(endpoint, handle))
        await self.registry.register(tool_definition(self.cfg, endpoint), reclaim=True)

    async def _flush_loop(self) -> None:
        away = False  # a shared store away: one line when it goes, one when it is back
        while True:
            await asyncio.sleep(self.cfg.hub.stats_flush_s)
            try:
                await self.registry.flush_stats()
            except Unavailable as exc:
                if not away:
                    log.warning("stats not flushed, kept for the next flush: %s", exc.message)
                away = True
                continue
            except Exception:
                log.exception("stats flush failed")
                continue
            if away:
                log.info("stats flushed again")
                away = False

    async def _last_flush(self) -> None:
        try:
            await self.registry.flush_stats()
        except Exception:  # e.g. a shared store unreachable at shutdown: the hub still stops
            log.exception("last stats flush failed")

    async def _stop_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

"""Discovery: the async context manager the hub owns.

It holds the catalog (curated + remote registries), the installer, one
ServerRunner per installed or federated server, and the fleet's handler mounted on
the hub's router for the `mcp` scheme (unmounted on exit). Entering it brings every
persisted server back (registered and connected, or marked unhealthy and retrying)
before the hub serves. In a cluster, installs and uninstalls run on every hub node and
each node converges to the installed set in Redis (cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp
import redis.asyncio as aioredis
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_pb2

from services.common import endpoints
from services.common.config import Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from services.discovery import catalog as catalog_mod
from services.discovery import disk, gap, identifiers, mapping, policy, ranking
from services.discovery.cluster import ClusterInstalls
from services.discovery.fleet import Fleet
from services.discovery.installed_set import InstalledSet
from services.discovery.installer import Installer, Progress
from services.discovery.peers import Peers
from services.discovery.remote_registry import RegistryUnreachable, RemoteRegistry
from services.discovery.sandbox import Sandboxes, probe
from services.discovery.server_runner import ServerRunner
from services.discovery.state import ServerRecord, StateFile
from services.library.redis_nodes import NodeDirectory
from services.library.registry import Registry
from services.router.router import Router

log = logging.getLogger(__name__)
_WATCH_QUEUE = 256


class Discovery:
    """Gap analysis, catalog search, install/uninstall and supervision of MCP servers."""

    def __init__(
        self,
        cfg: Config,
        registry: Registry,
        router: Router,
        nodes: NodeDirectory | None = None,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.cfg, self.dcfg = cfg, cfg.discovery
        # In a cluster (the hub's node directory and Redis client given): installs on every node
        # (cluster.py).
        self._nodes, self._redis = nodes, redis
        self.cluster: ClusterInstalls | None = None
        self.registry, self.router = registry, router
        self.install_dir = cfg.path(self.dcfg.install_dir)
        self.installer = Installer(self.dcfg, self.install_dir)
        self.state = StateFile(self.install_dir / "servers.json")
        self.records: dict[str, ServerRecord] = {}
        self.fleet: Fleet  # made on entry, once the sandbox is probed
        self.sandboxes: Sandboxes | None = None
        self.installing: dict[str, pb.InstalledServer] = {}  # name -> progress of an install under way
        self._watchers: set[asyncio.Queue[pb.WatchInstallsResponse | None]] = set()
        self.curated: list[pb.CatalogServer] = []
        self._curated_stamp = -1
        self.remotes: list[RemoteRegistry] = []
        self._seen: dict[str, pb.CatalogServer] = {}  # remote entries seen in searches, by name
        self._locks: dict[str, asyncio.Lock] = {}
        self._stack = contextlib.AsyncExitStack()
        self.llm: gap.LlmAnalyzer | None = None

    async def __aenter__(self) -> Discovery:
        try:
            self.sandboxes = await probe(self.dcfg)
            self._stack.push_async_callback(self.sandboxes.close)
            self.fleet = Fleet(self.dcfg, self.registry, self.install_dir, self.sandboxes)
            self._reload_curated()
            http = await self._stack.enter_async_context(aiohttp.ClientSession())
            self.remotes = [
                RemoteRegistry(
                    u,
                    http,
                    self.dcfg.registry_timeout_s,
                    self.dcfg.registry_cache_s,
                    self.dcfg.registry_max_pages,
                )
                for u in self.dcfg.registries
            ]
            if self.dcfg.llm_base_url and self.dcfg.llm_model:
                self.llm = gap.LlmAnalyzer(
                    self.dcfg.llm_base_url,
                    self.dcfg.llm_model,
                    self.dcfg.llm_api_key,
                    self.dcfg.llm_timeout_s,
                )
                self._stack.push_async_callback(self.llm.close)
            self._stack.callback(self.router.mount(endpoints.MCP, self.fleet.handle))
            self._stack.push_async_callback(self.fleet.stop_all)
            self._stack.callback(self._close_watchers)
            self.records = _one_record_per_tool_id(self.state.load())
            self._adopt_curated_env()
            await self.fleet.restore(self.records.values())
            if self._nodes is not None:
                self._join_cluster(self._nodes)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "discovery: %d curated entries, %d registries, %d servers installed",
            len(self.curated),
            len(self.remotes),
            len(self.records),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _join_cluster(self, nodes: NodeDirectory) -> None:
        """Install on every node from now on, and converge to the cluster's installed set in the
        background (this node serves meanwhile with what it restored)."""
        c = self.cfg.cluster
        installed = InstalledSet(
            c.redis_url, key_prefix=c.key_prefix, timeout_s=c.redis_timeout_s, client=self._redis
        )
        self._stack.push_async_callback(installed.close)
        peers = Peers(
            nodes.node,
            nodes.nodes,
            admin_token=self.cfg.auth.admin_token,
            max_message_bytes=self.cfg.hub.max_message_bytes,
        )
        self._stack.push_async_callback(peers.close)
        cluster = self.cluster = ClusterInstalls(
            self,
            installed,
            peers,
            replicas=c.install_replicas,
            backoff_s=c.reconnect_backoff_s,
            backoff_max_s=c.reconnect_backoff_max_s,
        )
        self.registry.listeners.append(cluster.on_event)
        self._stack.callback(self.registry.listeners.remove, cluster.on_event)
        task = asyncio.create_task(cluster.run(), name="installs-reconcile")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._stack.push_async_callback(stop)

    @property
    def runners(self) -> dict[str, ServerRunner]:
        """Running servers by tool id."""
        return self.fleet.runners

    # -- catalog ---------------------------------------------------------------

    async def search(
        self, query: str, limit: int = 10, curated_only: bool = False
    ) -> tuple[list[pb.ServerCandidate], int, list[str]]:
        """Ranked candidates from the curated catalog and every reachable registry."""
        entries, unreachable = await self._catalog(query, curated_only)
        ranked, total = ranking.rank(query, entries, max(1, min(limit or 10, 100)))
        return [self._candidate(r) for r in ranked], total, unreachable

    def _adopt_curated_env(self) -> None:
        """Give installed curated servers the environment defaults their catalog entry has gained
        since they were installed (same version); values already recorded are kept."""
        entries = {(c.name, c.version): c for c in self.curated}
        changed = False
        for record in self.records.values():
            entry = entries.get((record.name, record.version))
            if entry is None or record.source != catalog_mod.CURATED:
                continue
            for pkg in entry.packages:
                if (pkg.registry_type, pkg.identifier) != (record.registry_type, record.identifier):
                    continue
                with contextlib.suppress(FailedPrecondition):
                    for key, value in _package_env(pkg).items():
                        if key not in record.env:
                            record.env[key] = value
                            changed = True
        if changed:
            self.state.save(self.records)

    def _reload_curated(self) -> None:
        """Re-read the curated catalog when a file in it was added, removed or edited."""
        d = self.cfg.path(self.dcfg.catalog_dir)
        try:
            stamp = max([d.stat().st_mtime_ns, *(f.stat().st_mtime_ns for f in d.glob("*.json"))])
        except OSError:
            stamp = 0
        if stamp != self._curated_stamp:
            self._curated_stamp = stamp
            self.curated = catalog_mod.load_dir(d)

    async def _catalog(
        self, query: str, curated_only: bool = False
    ) -> tuple[list[pb.CatalogServer], list[str]]:
        self._reload_curated()
        if curated_only or not self.remotes:
            return list(self.curated), []
        results = await asyncio.gather(*(r.search_terms(query) for r in self.remotes), return_exceptions=True)
        remote: list[pb.CatalogServer] = []
        unreachable = []
        for reg, res in zip(self.remotes, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("registry %s: %s", reg.base_url, res)
                unreachable.append(reg.base_url)
                continue
            remote.extend(res)
            for s in res:
                self._seen[s.name] = s
        return catalog_mod.merge(self.curated, remote), unreachable

    def _candidate(self, r: ranking.Ranked) -> pb.ServerCandidate:
        return pb.ServerCandidate(
            server=r.server,
            score=r.score,
            why_matched=r.why,
            installed=r.server.name in self.records,
            policy_denial=policy.denial(self.dcfg, r.server),
        )

    async def find(self, name: str) -> pb.CatalogServer:
        """A catalog entry by exact name (curated, then seen, then asked of each registry)."""
        self._reload_curated()
        for s in self.curated:
            if s.name == name:
                return s
        if name in self._seen:
            return self._seen[name]
        for reg in self.remotes:
            try:
                for s in await reg.search(name):
                    self._seen.setdefault(s.name, s)
            except RegistryUnreachable as exc:
                log.warning("%s", exc)
        if name in self._seen:
            return self._seen[name]
        raise NotFound(
            f"no catalog entry named {name!r}; search first (POST /mcp/search)",
            reason="SERVER_NOT_IN_CATALOG",
            metadata={"name": name},
        )

    # -- gap analysis ----------------------------------------------------------

    async def analyze_gap(
        self, task: str, tools: Sequence[tool_pb2.Tool], context: str = "", max_recommendations: int = 5
    ) -> pb.AnalyzeGapResponse:
        if not task.strip():
            raise InvalidRequest("task_description is required", reason="MISSING_TASK")
        tools = list(tools) or self.registry.tools()
        entries, _ = await self._catalog(task)
        result: gap.GapResult | None = None
        reason = "no LLM configured (discovery.llm_base_url / llm_model)"
        if self.llm is not None:
            try:
                result = await self.llm.analyze(task, context, tools)
            except gap.InvalidAnswer as exc:
                reason = str(exc)
                log.warning("gap analysis: %s; using the lexical matcher", reason)
        if result is None:
            result = gap.lexical_gap(task, tools, entries, reason)
        resp = pb.AnalyzeGapResponse(
            has_sufficient_tools=result.has_sufficient_tools,
            missing_capabilities=result.missing,
            confidence=result.confidence,
            reasoning=result.reasoning,
            analyzer=result.analyzer,
            fallback_reason=result.fallback_reason,
        )
        if not result.has_sufficient_tools and result.keywords:
            ranked, _ = ranking.rank(result.keywords, entries, max(1, min(max_recommendations or 5, 50)))
            resp.recommendations.extend(self._candidate(r) for r in ranked)
        return resp

    # -- install / uninstall ---------------------------------------------------

    def lock(self, tool_id: str) -> asyncio.Lock:
        """The lock an install or uninstall of `tool_id` holds here: by tool id, so two names with
        one id never install side by side."""
        return self._locks.setdefault(tool_id, asyncio.Lock())

    async def install(
        self, name: str, version: str = "", remote_url: str = "", *, forwarded: bool = False
    ) -> pb.InstallServerResponse:
        """Install (or federate) and start a server; on any failure nothing is left behind. In a
        cluster, on every hub node (cluster.py), unless another node `forwarded` it here."""
        if not name:
            raise InvalidRequest("name is required", reason="MISSING_NAME")
        if self.cluster is not None and not forwarded:
            return await self.cluster.install(name, version, remote_url)
        tool_id = catalog_mod.tool_id_for(name)
        async with self.lock(tool_id):
            server = await self.resolve(name, remote_url)
            return await self.install_locked(server, version, remote_url)

    async def resolve(self, name: str, remote_url: str = "") -> pb.CatalogServer:
        """The catalog entry an install of `name` uses (an ad-hoc one for a remote URL)."""
        return self._adhoc_remote(name, remote_url) if remote_url else await self.find(name)

    async def install_locked(
        self, server: pb.CatalogServer, version: str, remote_url: str = ""
    ) -> pb.InstallServerResponse:
        """`install` of the entry `server` on this node, under `lock(tool id)`."""
        tool_id = catalog_mod.tool_id_for(server.name)
        steps: list[pb.InstallProgress] = []
        existing = self.records.get(server.name)
        self._refuse_id_collision(server.name, tool_id)
        pkg = policy.choose_package(self.dcfg, server)
        wanted = version or (pkg.version if pkg else server.version)
        if existing is not None:
            if existing.version == wanted or not version:
                return pb.InstallServerResponse(server=self._describe(existing), already_installed=True)
            raise FailedPrecondition(
                f"{server.name} is installed at {existing.version}; uninstall it before installing {wanted}",
                reason="ALREADY_INSTALLED_OTHER_VERSION",
                metadata={"installed": existing.version},
            )
        if pkg is not None:  # before the policy: a glob must never match a URL or an option
            identifiers.check(pkg.registry_type, pkg.identifier)
        if not remote_url:
            denied = policy.denial(self.dcfg, server, version)
            if denied:
                raise FailedPrecondition(
                    f"installing {server.name} is not allowed: {denied}",
                    reason="INSTALL_NOT_ALLOWED",
                    metadata={"name": server.name},
                )
        if pkg is not None and self.sandboxes is not None:
            self.sandboxes.check(server.name)  # before fetching anything
        owner = self.registry.entry(tool_id)
        if owner is not None and owner.tool.owner != mapping.OWNER:
            raise FailedPrecondition(
                f"tool id {tool_id} is already registered by {owner.tool.owner}",
                reason="TOOL_ID_TAKEN",
                metadata={"tool_id": tool_id},
            )
        live = pb.InstalledServer(
            name=server.name,
            tool_id=tool_id,
            endpoint=f"mcp://{tool_id}",
            version=wanted,
            state=pb.SERVER_STATE_INSTALLING,
        )
        self.installing[server.name] = live

        def progress(p: float, message: str, server_now: pb.InstalledServer | None = None) -> None:
            live.progress, live.status_message = p, message
            step = pb.InstallProgress(progress=p, message=message)
            step.time.GetCurrentTime()
            steps.append(step)
            log.info("install %s: %3.0f%% %s", server.name, p * 100, message)
            self._publish(pb.WatchInstallsResponse(server=server_now or live, step=step))

        try:
            record = await self._install(server, pkg, wanted, tool_id, progress, live)
        except BaseException as exc:
            live.state = pb.SERVER_STATE_STOPPED
            progress(live.progress, f"failed: {getattr(exc, 'message', None) or type(exc).__name__}")
            raise
        finally:
            self.installing.pop(server.name, None)
        done = self._describe(record)
        progress(1.0, f"running with {len(done.tools)} tools", done)
        done.status_message = live.status_message
        return pb.InstallServerResponse(server=done, progress=steps)

    def _refuse_id_collision(self, name: str, tool_id: str) -> None:
        """AlreadyExists when another installed server has the tool id `name` maps to (`a.b/c` and
        `a/b.c` both map to `a.b.c`): the id names its directory, its tool and its runner."""
        other = next((r for r in self.records.values() if r.tool_id == tool_id and r.name != name), None)
        if other is not None:
            raise AlreadyExists(
                f"{name} would get tool id {tool_id}, which installed server {other.name} already has; "
                f"uninstall {other.name} first",
                reason="TOOL_ID_COLLISION",
                metadata={"tool_id": tool_id, "server": other.name},
            )

    def subscribe_installs(self) -> asyncio.Queue[pb.WatchInstallsResponse | None]:
        """A queue that receives every install step from now on; pass it to `installs` and `unsubscribe`."""
        queue: asyncio.Queue[pb.WatchInstallsResponse | None] = asyncio.Queue(maxsize=_WATCH_QUEUE)
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[pb.WatchInstallsResponse | None]) -> None:
        self._watchers.discard(queue)

    async def installs(
        self, queue: asyncio.Queue[pb.WatchInstallsResponse | None], name: str = ""
    ) -> AsyncIterator[pb.WatchInstallsResponse]:
        """Installs under way, then every step from `queue` as it happens (for `name`, or all)."""
        for live in list(self.installing.values()):
            if not name or live.name == name:
                step = pb.InstallProgress(progress=live.progress, message=live.status_message)
                step.time.GetCurrentTime()
                yield pb.WatchInstallsResponse(server=live, step=step)
        while (item := await queue.get()) is not None:
            if not name or item.server.name == name:
                yield item

    def _publish(self, item: pb.WatchInstallsResponse) -> None:
        snapshot = pb.WatchInstallsResponse()
        snapshot.CopyFrom(item)
        for queue in list(self._watchers):
            try:
                queue.put_nowait(snapshot)
            except asyncio.QueueFull:  # a watcher that does not read is dropped, never waited for
                self._watchers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    def _close_watchers(self) -> None:
        for queue in list(self._watchers):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def _install(
        self,
        server: pb.CatalogServer,
        pkg: pb.ServerPackage | None,
        version: str,
        tool_id: str,
        progress: Progress,
        live: pb.InstalledServer,
    ) -> ServerRecord:
        remote = next((r for r in server.remotes if r.transport_type == "streamable-http"), None)
        record = ServerRecord(
            name=server.name,
            tool_id=tool_id,
            registry_type="",
            identifier="",
            version=version,
            title=server.title,
            description=server.description,
            tags=list(server.tags),
            installed_at=time.time(),
            source=server.source,
            wants_network=server.wants_network,
        )
        if pkg is not None:
            env = _package_env(pkg)
            installed = await self.installer.install(tool_id, pkg, version, progress)
            record.registry_type, record.identifier = pkg.registry_type, pkg.identifier
            record.command, record.args, record.cwd, record.env = (
                installed.command,
                installed.args,
                installed.cwd,
                env,
            )
            record.artifacts = [
                {"name": a.name, "version": a.version, "hash": a.hash} for a in installed.artifacts
            ]
        elif remote is not None:
            record.registry_type, record.identifier, record.url = "remote", remote.url, remote.url
        else:
            raise FailedPrecondition(f"{server.name} has nothing to install", reason="INSTALL_NOT_ALLOWED")
        progress(0.7, "starting the server")
        live.state = pb.SERVER_STATE_STARTING
        runner = await self.fleet.runner(record)
        try:
            await runner.start(strict=True)
            self.records[record.name] = record
            self.state.save(self.records)
        except BaseException:
            self.records.pop(record.name, None)
            await self.fleet.discard(tool_id)
            self.installer.remove(tool_id)
            raise
        return record

    def _adhoc_remote(self, name: str, url: str) -> pb.CatalogServer:
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"remote_url must be an http(s) URL: {url!r}", reason="INVALID_REMOTE_URL")
        if not catalog_mod.NAME.fullmatch(name):
            raise InvalidRequest(f"name {name!r} must look like namespace/name", reason="INVALID_NAME")
        if not (self.dcfg.allow_remotes):
            raise FailedPrecondition(
                "federating remote servers is disabled (discovery.allow_remotes)",
                reason="INSTALL_NOT_ALLOWED",
            )
        s = pb.CatalogServer(name=name, description=f"MCP server at {url}", source="admin")
        s.remotes.add(transport_type="streamable-http", url=url)
        return s

    def record_named(self, name: str) -> ServerRecord | None:
        """The server installed here under `name` (or with `name` as its tool id)."""
        return self.records.get(name) or next((r for r in self.records.values() if r.tool_id == name), None)

    async def uninstall(self, name: str, *, forwarded: bool = False) -> pb.UninstallServerResponse:
        """Stop a server, remove its tool and its files. In a cluster, on every hub node
        (cluster.py), unless another node `forwarded` it here."""
        if self.cluster is not None and not forwarded:
            return await self.cluster.uninstall(name)
        record = self.record_named(name)
        if record is None:
            raise NotFound(
                f"no installed server named {name!r}", reason="SERVER_NOT_INSTALLED", metadata={"name": name}
            )
        async with self.lock(record.tool_id):
            return await self.uninstall_locked(record)

    async def uninstall_locked(self, record: ServerRecord) -> pb.UninstallServerResponse:
        """`uninstall` of `record` on this node (its replica), under `lock(its tool id)`."""
        described = self._describe(record)
        removed = await self.fleet.discard(record.tool_id)
        self.records.pop(record.name, None)
        self.state.save(self.records)
        self.installer.remove(record.tool_id)
        described.state = pb.SERVER_STATE_STOPPED
        log.info("uninstalled %s", record.name)
        return pb.UninstallServerResponse(
            server=described, removed_tool_ids=[record.tool_id] if removed else []
        )

    async def server_log(self, name: str, max_bytes: int) -> pb.GetServerLogResponse:
        """The last `max_bytes` of an installed server's stderr log (NotFound when not installed).

        Read in a worker thread: up to 256 KiB from disk (two files after a rotation) must not stall
        the hub's event loop, which serves every call and registry read meanwhile."""
        record = self.records.get(name) or next((r for r in self.records.values() if r.tool_id == name), None)
        if record is None:
            raise NotFound(
                f"no installed server named {name!r}", reason="SERVER_NOT_INSTALLED", metadata={"name": name}
            )
        path = self.installer.dir_for(record.tool_id) / "server.log"
        data = await asyncio.to_thread(disk.log_tail, path, max_bytes + 1)
        return pb.GetServerLogResponse(
            name=record.name,
            text=data[-max_bytes:].decode(errors="replace") if max_bytes else "",
            truncated=len(data) > max_bytes,
        )

    def list_servers(self) -> list[pb.InstalledServer]:
        out = {r.name: self._describe(r) for r in self.records.values()}
        for name, live in self.installing.items():
            out.setdefault(name, live)
        return [out[k] for k in sorted(out)]

    def _describe(self, r: ServerRecord) -> pb.InstalledServer:
        runner = self.runners.get(r.tool_id)
        s = pb.InstalledServer(
            name=r.name,
            tool_id=r.tool_id,
            endpoint=f"mcp://{r.tool_id}",
            version=r.version,
            registry_type=r.registry_type,
            identifier=r.identifier,
            artifacts=[pb.ArtifactHash(**a) for a in r.artifacts],
        )
        s.installed_at.FromNanoseconds(int(r.installed_at * 1e9))
        if runner is not None:
            s.state, s.status_message, s.restarts = runner.state, runner.message, runner.restarts
            s.protocol_version = runner.protocol_version
            s.tools.extend(runner.actions.values())
            s.progress = 1.0 if runner.state == pb.SERVER_STATE_RUNNING else 0.8
            jail = runner.spec.jail
            s.isolation, s.network = (jail.level, jail.network) if jail else ("remote", False)
        return s


def _package_env(pkg: pb.ServerPackage) -> dict[str, str]:
    env = {}
    for v in pkg.environment_variables:
        if v.default and not v.is_secret:
            env[v.name] = v.default
        elif v.is_required:
            raise FailedPrecondition(
                f"{pkg.identifier} needs {v.name} ({v.description}), which the mesh cannot provide yet",
                reason="MISSING_ENVIRONMENT",
                metadata={"variable": v.name},
            )
    return env


def _one_record_per_tool_id(records: dict[str, ServerRecord]) -> dict[str, ServerRecord]:
    """Records by name with at most one per tool id. Older versions let two names that map to one id
    both be installed, the later one over the earlier's directory: the later one is kept (the
    directory holds its files), the earlier dropped, so no runner is ever started twice for an id."""
    latest: dict[str, ServerRecord] = {}
    for r in sorted(records.values(), key=lambda r: r.installed_at):
        if r.tool_id in latest:
            log.error(
                "dropping the record of %s: %s took its tool id %s", latest[r.tool_id].name, r.name, r.tool_id
            )
        latest[r.tool_id] = r
    return {r.name: r for r in latest.values()}

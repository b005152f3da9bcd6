"""Installs in a cluster: a server installed through one hub runs on every hub node, a replica each.

An install through a hub (not forwarded by another node):
1. is refused with UNAVAILABLE (`INSTALLS_UNAVAILABLE`) while Redis does not answer, before
   anything is fetched: the installed set could not record it, and nodes would diverge;
2. runs on this node as on one hub (a failure here is the caller's error, nothing left behind);
3. is recorded in the installed set (installed_set.py; if that fails, the install here is undone
   and the caller hears UNAVAILABLE);
4. is asked of every other node announced now (peers.py), each outcome in the answer's `nodes`
   (with `[cluster] install_replicas` N, of the first N-1 other nodes by node id).
A node that failed, was down or joins later converges: `reconcile` installs what the set has and
this node does not (with N replicas: while fewer than N nodes alive serve it), and uninstalls what
this node has and the set does not; it runs when the hub starts and whenever a discovery tool is
installed or removed in the registry (with N replicas, also changed: a replica withdrawn), from
the event feed every node follows, and again after a backoff while Redis is away.

An uninstall removes the server from the set first (refused while Redis is away), then here,
then on every other node, then removes the tool with any replica a node that is down still had.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import tool_pb2

from services.common.errors import MeshError, NotFound, Unavailable
from services.discovery import catalog as catalog_mod
from services.discovery import mapping
from services.discovery.installed_set import InstalledSet, InstallSpec
from services.discovery.peers import Peers

if TYPE_CHECKING:
    from services.discovery.discovery import Discovery

log = logging.getLogger(__name__)
_TRIGGERS = frozenset({tool_pb2.TOOL_EVENT_TYPE_INSTALLED, tool_pb2.TOOL_EVENT_TYPE_REMOVED})


class ClusterInstalls:
    """The cluster side of one node's discovery: the installed set, the other nodes, convergence."""

    def __init__(
        self,
        discovery: Discovery,
        installed: InstalledSet,
        peers: Peers,
        *,
        replicas: int = 0,
        backoff_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._discovery = discovery
        # How many nodes run each server (`[cluster] install_replicas`); 0: every node.
        self._replicas = replicas
        self.installed = installed
        self._peers = peers
        self._backoff, self._backoff_max = backoff_s, backoff_max_s
        self._changed = asyncio.Event()
        self._changed.set()  # converge once at start
        self.converged = asyncio.Condition()  # notified after each reconcile (tests wait on it)
        self.rounds = 0
        d = discovery.dcfg
        self._install_timeout_s = d.install_timeout_s + d.start_timeout_s + 5.0
        self._uninstall_timeout_s = d.stop_grace_s * 2 + 10.0

    def on_event(self, event: tool_pb2.ToolEvent) -> None:
        """A registry listener: a discovery tool installed or removed anywhere wakes `run`."""
        # With a number of replicas, a replica withdrawn (UPDATED) may leave too few: a spare node takes it.
        if (event.type in _TRIGGERS or self._replicas) and event.tool.owner == mapping.OWNER:
            self._changed.set()

    async def install(self, name: str, version: str, remote_url: str) -> pb.InstallServerResponse:
        """Install `name` here, record it in the set, then on every other node (module docstring)."""
        d = self._discovery
        await self.installed.check()
        async with d.lock(catalog_mod.tool_id_for(name)):
            server = await d.resolve(name, remote_url)
            response = await d.install_locked(server, version, remote_url)
            try:
                await self.installed.put(InstallSpec(server.name, version, remote_url, server))
            except Unavailable:
                record = d.records.get(server.name)
                if not response.already_installed and record is not None:
                    await d.uninstall_locked(record)
                raise
        request = pb.InstallServerRequest(name=server.name, version=version, remote_url=remote_url)
        ask = functools.partial(self._peers.install, limit=self._replicas - 1 if self._replicas else None)
        response.nodes.extend(await self._on_others(ask, request, self._install_timeout_s))
        return response

    async def uninstall(self, name: str) -> pb.UninstallServerResponse:
        """Uninstall `name` from the set, here, on every other node, and its tool everywhere."""
        d = self._discovery
        specs = await self.installed.all()
        record = d.record_named(name)
        spec = specs.get(name) or next(
            (s for s in specs.values() if catalog_mod.tool_id_for(s.name) == name), None
        )
        if record is None and spec is None:
            raise NotFound(
                f"no installed server named {name!r}", reason="SERVER_NOT_INSTALLED", metadata={"name": name}
            )
        server = record.name if record is not None else spec.name  # type: ignore[union-attr]
        tool_id = catalog_mod.tool_id_for(server)
        await self.installed.remove(server)
        async with d.lock(tool_id):
            if (record := d.records.get(server)) is not None:
                response = await d.uninstall_locked(record)
            else:
                response = pb.UninstallServerResponse(
                    server=pb.InstalledServer(
                        name=server,
                        tool_id=tool_id,
                        endpoint=f"mcp://{tool_id}",
                        state=pb.SERVER_STATE_STOPPED,
                    )
                )
        request = pb.UninstallServerRequest(name=server)
        response.nodes.extend(
            await self._on_others(self._peers.uninstall, request, self._uninstall_timeout_s)
        )
        entry = d.registry.entry(tool_id)
        if entry is not None and entry.tool.owner == mapping.OWNER:  # replicas of nodes now down
            await d.registry.deregister(tool_id)
        if tool_id not in response.removed_tool_ids:
            response.removed_tool_ids.append(tool_id)
        return response

    async def _on_others(
        self, ask: Callable[[Any, float], Awaitable[list[pb.NodeOutcome]]], request: Message, timeout_s: float
    ) -> list[pb.NodeOutcome]:
        """Each other node's outcome; when the nodes cannot be listed, none (they converge later)."""
        try:
            return list(await ask(request, timeout_s))
        except Unavailable as exc:
            log.warning("other nodes not asked (they converge when they hear of it): %s", exc.message)
            return []

    async def run(self) -> None:
        """Reconcile at start and after every change; while Redis is away, again after a backoff."""
        backoff = self._backoff
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.reconcile()
                backoff = self._backoff
            except Unavailable as exc:
                log.warning(
                    "installed servers not reconciled, trying again in %.3gs: %s", backoff, exc.message
                )
                self._changed.set()
                await asyncio.sleep(backoff)  # a retry's pause, not a wait for an event
                backoff = min(backoff * 2, self._backoff_max)

    async def reconcile(self) -> None:
        """Install here what the set has and this node does not; uninstall what it no longer has.
        A server that fails to install here is logged (and tried again on the next change)."""
        d = self._discovery
        specs = await self.installed.all()
        for spec in specs.values():
            if spec.name not in d.records and await self._wanted_here(spec):
                await self._converge_install(spec)
        for name in [n for n in d.records if n not in specs]:
            await self._converge_uninstall(name)
        async with self.converged:
            self.rounds += 1
            self.converged.notify_all()

    async def _wanted_here(self, spec: InstallSpec) -> bool:
        """Whether this node should run `spec`: always with every node; with N replicas, while
        fewer than N nodes alive serve it and this node is among the first of the others by node
        id to make up the number (the rule an install's fan-out follows: no two spares take one
        place while both are alive and agree on who is)."""
        if not self._replicas:
            return True
        entry = self._discovery.registry.entry(catalog_mod.tool_id_for(spec.name))
        if entry is None:
            return True
        alive = await self._peers.alive()
        tool = entry.tool
        serving = {n for n in (tool.node_id, *(r.node_id for r in tool.replicas)) if n in alive}
        spare = sorted(alive - serving)
        return self._peers.node in spare[: max(self._replicas - len(serving), 0)]

    async def _converge_install(self, spec: InstallSpec) -> None:
        d = self._discovery
        async with d.lock(catalog_mod.tool_id_for(spec.name)):
            if spec.name in d.records:
                return
            try:
                await d.install_locked(await self._entry(spec), spec.version, spec.remote_url)
                log.info("installed %s here: the cluster has it", spec.name)
            except MeshError as exc:
                log.error(
                    "%s, installed in the cluster, not installed here: %s (%s)",
                    spec.name,
                    exc.message,
                    exc.reason,
                )
            except Exception:
                log.exception("%s, installed in the cluster, not installed here", spec.name)

    async def _entry(self, spec: InstallSpec) -> pb.CatalogServer:
        """The catalog entry this node installs `spec` from: its own (curated first, then its
        registries; a remote URL checked by its own rules), else the recorded one, never trusted
        as curated (this node's policy decides, whatever Redis says)."""
        try:
            return await self._discovery.resolve(spec.name, spec.remote_url)
        except NotFound:
            entry = pb.CatalogServer()
            entry.CopyFrom(spec.server)
            if entry.source == catalog_mod.CURATED:
                entry.source = "cluster"
            return entry

    async def _converge_uninstall(self, name: str) -> None:
        d = self._discovery
        record = d.records.get(name)
        if record is None:
            return
        async with d.lock(record.tool_id):
            # Read again under the lock: an install here may have recorded it since the set was read.
            if d.records.get(name) is not record or await self.installed.has(name):
                return
            await d.uninstall_locked(record)
            log.info("uninstalled %s here: the cluster no longer has it", name)

"""The running servers: one ServerRunner per installed or federated server, and the `mcp://` transport.

Registers each server's tools when it connects (and again when its tool list
changes), follows its health into the registry, and forwards calls routed to
`mcp://<tool id>` to the server's MCP session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.config import DiscoveryConfig
from services.common.errors import FailedPrecondition, MeshError
from services.discovery import mapping
from services.discovery.catalog import CURATED
from services.discovery.notices import Notices
from services.discovery.resource_subscriptions import UPDATED, ResourceSubscriptions
from services.discovery.sandbox import Sandboxes
from services.discovery.server_runner import LaunchSpec, ServerRunner
from services.discovery.state import ServerRecord
from services.discovery.stdio import kill_stale_group
from services.library.registry import Entry, Registry
from services.router import backchannel
from services.router.channels import ProgressFn
from services.router.router import error_response

log = logging.getLogger(__name__)
HEALTHY, UNHEALTHY = tool_pb2.HEALTH_STATUS_HEALTHY, tool_pb2.HEALTH_STATUS_UNHEALTHY
_INVALID_PARAMS = -32602


class Fleet:
    """Runners by tool id, over the registry. `install_dir/<tool_id>/` holds each server's files."""

    def __init__(
        self, cfg: DiscoveryConfig, registry: Registry, install_dir: Path, sandboxes: Sandboxes
    ) -> None:
        self.cfg, self.registry, self.install_dir = cfg, registry, install_dir
        self.sandboxes = sandboxes
        self.runners: dict[str, ServerRunner] = {}
        self.notices = Notices()  # the servers' log messages, for WatchServerNotifications
        # The edges' resource subscriptions, held once per (server, URI) on the servers.
        self.subscriptions = ResourceSubscriptions(self.notices, self.runners)

    async def runner(self, record: ServerRecord) -> ServerRunner:
        """A (not yet started) runner for `record`, now owned by the fleet. One runner per tool id:
        a runner it replaces is stopped first (its whole process group), so no process outlives it."""
        old = self.runners.pop(record.tool_id, None)
        if old is not None:
            await old.stop()
        if record.url:
            spec = LaunchSpec(url=record.url)
        else:
            d = self.install_dir / record.tool_id
            jail = self.sandboxes.jail(
                record.name,
                d,
                Path(record.cwd or d / "work"),
                declared=record.wants_network,
                curated=record.source == CURATED,
            )
            spec = LaunchSpec(
                command=record.command,
                args=list(record.args),
                env=dict(record.env),  # the sandbox adds PATH, HOME, TMPDIR, LANG; nothing of the hub's
                cwd=record.cwd,
                log_path=d / "server.log",
                pid_path=d / "server.pid",
                jail=jail,
            )
        runner = ServerRunner(
            record.name,
            spec,
            self.cfg,
            functools.partial(self._on_tools, record),
            functools.partial(self._on_state, record),
        )
        runner.on_notice = functools.partial(self._on_notice, record.tool_id)
        runner.resource_uris = functools.partial(self.subscriptions.uris, record.tool_id)
        self.runners[record.tool_id] = runner
        return runner

    async def discard(self, tool_id: str) -> bool:
        """Stop a server and withdraw its tool (in a cluster, this node's replica); True when
        something was removed."""
        runner = self.runners.pop(tool_id, None)
        if runner is not None:
            await runner.stop()
        entry = self.registry.entry(tool_id)
        if entry is None or entry.tool.owner != mapping.OWNER:
            return False
        return await self.registry.withdraw(tool_id)

    async def restore(self, records: Iterable[ServerRecord]) -> None:
        """Start every persisted server (each gets one bounded attempt, then retries in the background),
        after removing tools and directories no record owns."""
        records = list(records)
        owned = {r.tool_id for r in records}
        for entry in self.registry.entries():
            if entry.tool.owner == mapping.OWNER and entry.tool.tool_id not in owned:
                await self.registry.withdraw(entry.tool.tool_id)  # in a cluster: this node's replica
        if self.install_dir.is_dir():
            for d in self.install_dir.iterdir():
                if d.is_dir() and d.name not in owned:
                    log.warning("removing %s: no installed server owns it", d)
                    kill_stale_group(d / "server.pid", str(d / "work"))
                    shutil.rmtree(d, ignore_errors=True)
        runners = [await self.runner(r) for r in records]
        if self.sandboxes.refusal:  # stdio servers stay stopped, saying why; remotes still start
            for runner in runners:
                if runner.spec.jail is not None:
                    runner.state, runner.message = pb.SERVER_STATE_STOPPED, self.sandboxes.refusal
                    log.error("MCP server %s not started: %s", runner.name, self.sandboxes.refusal)
            runners = [r for r in runners if r.spec.jail is None]
        if runners:
            async with asyncio.TaskGroup() as tg:
                for runner in runners:
                    tg.create_task(runner.start(strict=False))

    async def stop_all(self) -> None:
        runners = list(self.runners.values())
        self.runners.clear()  # the same dict: the subscriptions look runners up in it
        if runners:
            await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)

    def _on_notice(self, tool_id: str, method: str, params: dict[str, Any]) -> None:
        if method == UPDATED:  # to the watches subscribed to it only
            self.subscriptions.updated(tool_id, params)
        else:
            self.notices.publish(tool_id, method, params)

    async def _on_tools(self, record: ServerRecord, runner: ServerRunner, tools: list[types.Tool]) -> None:
        if not tools:
            raise FailedPrecondition(f"MCP server {record.name} offers no tools", reason="NO_TOOLS")
        definition, actions = mapping.tool_definition(
            record.tool_id,
            record.title or record.name,
            record.description or record.name,
            record.version,
            tools,
            record.tags,
        )
        definition.metadata["registry_type"] = record.registry_type
        mapping.describe_features(definition, runner.capabilities, runner.lists_revision)
        await self.registry.register(definition)
        runner.actions = actions

    async def _on_state(self, record: ServerRecord, runner: ServerRunner) -> None:
        health = HEALTHY if runner.state == pb.SERVER_STATE_RUNNING else UNHEALTHY
        await self.registry.set_health(record.tool_id, health)

    async def handle(
        self,
        entry: Entry,
        request: ex.ExecuteRequest,
        timeout_s: float,
        on_progress: ProgressFn | None,
        arguments: dict[str, Any],
    ) -> ex.ExecuteResponse:
        """The router's mount for the `mcp` scheme: one tools/call (with the arguments the router
        checked), its result mapped to an ExecuteResponse."""
        runner = self.runners.get(entry.endpoint.address)
        if runner is None:
            raise MeshError(f"no MCP server runs behind {entry.tool.endpoint}", reason="NO_ROUTE")
        name = runner.actions.get(request.action, request.action)
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                result = await runner.call(
                    name, arguments, timeout_s, _progress(on_progress), backchannel.ask_of(on_progress)
                )
        except TimeoutError:
            return error_response(
                tool_pb2.ERROR_TYPE_TIMEOUT,
                f"{entry.tool.tool_id}.{request.action} took longer than {timeout_s:g}s",
            )
        except MCPError as exc:
            kind = (
                tool_pb2.ERROR_TYPE_INVALID_INPUT
                if exc.error.code == _INVALID_PARAMS
                else tool_pb2.ERROR_TYPE_TOOL_ERROR
            )
            if exc.error.code == types.CONNECTION_CLOSED:  # the server died under the call: say why
                why = await runner.why_down(min(2.0, max(deadline - time.monotonic(), 0.0)))
                if why is not None:
                    return error_response(
                        tool_pb2.ERROR_TYPE_SYSTEM,
                        f"MCP server {runner.name} stopped during the call ({why}); it is being restarted",
                    )
                kind = tool_pb2.ERROR_TYPE_SYSTEM
            return error_response(kind, f"MCP server {runner.name}: {exc.error.message}")
        except MeshError:
            raise
        except Exception as exc:  # a broken session is the server's failure, reported as a result
            log.warning("MCP call %s.%s failed: %r", runner.name, name, exc)
            return error_response(
                tool_pb2.ERROR_TYPE_SYSTEM, f"MCP server {runner.name} failed: {exc}"[:1000]
            )
        return mapping.to_response(result, self.cfg.max_line_bytes)


def _progress(on_progress: ProgressFn | None) -> ProgressFnT | None:
    """MCP `notifications/progress` of a call, forwarded as the router's Progress messages."""
    if on_progress is None:
        return None

    async def forward(progress: float, total: float | None, message: str | None) -> None:
        on_progress(ex.Progress(progress=progress, total=total or 0.0, message=message or ""))

    return forward

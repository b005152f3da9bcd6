"""`RuntimeHost`: what a running runtime owns (LLM, edge and hub clients, live catalog, event follower).

Shared by the CLI (one task) and the task workers (many): `run()` solves one
task with a fresh Agent and appends its trajectory record to the trajectory dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from services.common.config import Config
from services.runtime import trajectory
from services.runtime.edge_client import EdgeClient, EdgeUnavailable
from services.runtime.hub_client import HubClient, hub_target
from services.runtime.llm import LLM, LLMSettings
from services.runtime.llm_tools import Catalog
from services.runtime.loop import Agent, AgentSettings, Progress

log = logging.getLogger(__name__)


def edge_url(cfg: Config) -> str:
    """The configured edge, or the local one from [edge]."""
    host = cfg.edge.host if cfg.edge.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return cfg.runtime.edge_url or f"http://{host}:{cfg.edge.port}"


def llm_settings(cfg: Config, base_url: str, api_key: str) -> LLMSettings:
    rc = cfg.runtime
    return LLMSettings(
        base_url=base_url,
        api_key=api_key,
        model=rc.model,
        stream=rc.stream,
        temperature=rc.temperature,
        max_output_tokens=rc.max_output_tokens,
        timeout_s=rc.llm_timeout_s,
        retries=rc.llm_retries,
        backoff_s=rc.llm_backoff_s,
        backoff_max_s=rc.llm_backoff_max_s,
    )


class RuntimeHost:
    """Async context manager; `run(task)` -> the trajectory record (also appended to `trajectory_dir`)."""

    def __init__(
        self,
        llm: LLMSettings,
        edge: str,
        settings: AgentSettings,
        trajectory_dir: Path | None,
        *,
        events: bool = True,
        tool_timeout_s: float = 120.0,
        lazy: bool = False,
        admin_token: str = "",
        hub: str,
    ) -> None:
        self.llm_settings, self.edge_base, self.settings = llm, edge, settings
        self.trajectory_dir = trajectory_dir
        self.events = events
        # lazy: start even when the edge is not up yet (service mode inside the edge process itself).
        self.lazy = lazy
        self.loaded = False
        self.catalog = Catalog()
        self._edge = EdgeClient(edge, timeout_s=tool_timeout_s, admin_token=admin_token)
        self._hub = HubClient(hub, admin_token=admin_token, install_timeout_s=settings.install_wait_s)
        self._follower: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, cfg: Config, base_url: str, api_key: str, *, lazy: bool = False) -> RuntimeHost:
        return cls(
            llm_settings(cfg, base_url, api_key),
            edge_url(cfg),
            AgentSettings.from_config(cfg.runtime),
            cfg.path(cfg.runtime.trajectory_dir),
            events=cfg.runtime.events,
            tool_timeout_s=cfg.runtime.tool_timeout_s,
            lazy=lazy,
            admin_token=cfg.auth.admin_token,
            hub=hub_target(cfg),
        )

    @property
    def edge(self) -> EdgeClient:
        return self._edge

    async def __aenter__(self) -> RuntimeHost:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self.llm = await self._stack.enter_async_context(LLM(self.llm_settings))
            await self._stack.enter_async_context(self._edge)
            await self._stack.enter_async_context(self._hub)
            try:
                await self._edge.load(self.catalog)
                self.loaded = True
            except EdgeUnavailable:
                if not self.lazy:
                    raise
                log.info(
                    "the edge at %s is not reachable yet; tools are loaded on the first task", self.edge_base
                )
            if self.events:
                self._follower = asyncio.create_task(self._edge.follow(self.catalog), name="runtime-events")
                self._stack.push_async_callback(self._stop_follower)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _stop_follower(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def wait_events_connected(self, within_s: float = 10.0) -> bool:
        """True once the events WebSocket has welcomed us (tests and the CLI's first step use it)."""
        try:
            async with asyncio.timeout(within_s):
                await self._edge.connected.wait()
            return True
        except TimeoutError:
            return False

    async def run(
        self,
        task: str,
        task_id: str | None = None,
        context: dict[str, Any] | None = None,
        on_progress: Progress | None = None,
        *,
        admin: bool = False,
    ) -> dict[str, Any]:
        """Solve one task with the authority of whoever submitted it.

        `admin`: the submitter proved admin rights (or the mesh has no token). Only then do the
        task's calls carry the admin token, so an LLM steered by its input cannot install or run
        admin-only actions for a caller who could not.
        """
        if not self.loaded:  # raises EdgeUnavailable when the edge is still not there
            await self._edge.load(self.catalog)
            self.loaded = True
        agent = Agent(
            self.llm,
            self._edge.acting_for(admin),
            self.catalog,
            self.settings,
            on_progress,
            hub=self._hub.acting_for(admin),
        )
        record = await agent.run(task, task_id, context)
        record["admin"] = admin
        if self.trajectory_dir is not None:
            path = await trajectory.append(self.trajectory_dir, record)
            log.info("task %s %s; trajectory appended to %s", record["task_id"], record["status"], path)
        return record

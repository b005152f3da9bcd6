"""The executor's sandbox machinery: the machine probed on start, then the warm pool, sessions,
template and package environment it runs calls on; their status; a package installed into the
environment; all of it freed on close.

`Executor` (actions.py) is this machinery with the actions on it: nothing here runs on a
python_execute call's path but the first call's `start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.config import Config
from services.common.jsonvalue import text_result
from services.executor import envs
from services.executor.interpreter import Worker
from services.executor.pool import WarmPool
from services.executor.sandbox import Sandbox, probe
from services.executor.sessions import Sessions
from services.executor.template import TemplatePath
from services.sandbox import cgroups
from services.sandbox.capabilities import LEVELS, Capabilities

log = logging.getLogger(__name__)


class Machinery:
    """What the executor runs calls on; `start()` probes the machine and starts it, `close()` frees it."""

    def __init__(self, cfg: Config, host_env: dict[str, str]) -> None:
        self.cfg, self.xc = cfg, cfg.executor
        self._host_env = host_env
        self.env = envs.ExecutorEnv(self.xc, host_env)
        self.caps: Capabilities | None = None
        self.refusal = ""
        self.pool: WarmPool | None = None
        self.sessions: Sessions | None = None
        self._groups: cgroups.Cgroups | None = None
        self._template_groups: cgroups.Cgroups | None = None
        self.template: TemplatePath | None = None
        self.template_unavailable = ""  # why executor.template is on but cannot be used here
        self.running = 0  # calls running code now (the actions count them)
        self._start_lock = asyncio.Lock()
        self._env_task: asyncio.Task[bool] | None = None
        self._closed = False

    async def start(self) -> None:
        """Probe the machine, then start the warm pool (or record why the executor refuses to run)."""
        async with self._start_lock:
            if self.caps is not None or self._closed:
                return
            caps = await probe(self.xc, self.env.path)
            if self.xc.min_isolation not in LEVELS:
                self.refusal = (
                    f"unknown executor.min_isolation {self.xc.min_isolation!r} ({', '.join(LEVELS)})"
                )
            elif not caps.at_least(self.xc.min_isolation):
                self.refusal = (
                    f"refusing to run code: this machine only allows isolation level {caps.level!r} "
                    f"but executor.min_isolation is {self.xc.min_isolation!r} "
                    f"({'; '.join(caps.notes)}). Fix the machine, or allow the weaker level "
                    f"explicitly with TOOLSCORE_EXECUTOR__MIN_ISOLATION={caps.level}"
                )
            if self.refusal:
                log.error("%s", self.refusal)
            else:
                log.info(
                    "sandbox isolation level: %s%s",
                    caps.level,
                    f" ({'; '.join(caps.notes)})" if caps.notes else "",
                )
                if caps.cgroups is not None:
                    self._groups = cgroups.Cgroups(
                        caps.cgroups,
                        self.xc.pids_limit,
                        self.xc.memory_limit_bytes,
                        self.xc.cpu_limit,
                    )
                sandbox = Sandbox(self.xc, self.env.path, self._host_env, caps, self._groups)
                self.pool = WarmPool(
                    self._template_path(sandbox, caps), self.xc.pool_size, self.xc.spawn_parallelism
                )
                self.pool.start()
                self.sessions = Sessions(
                    self.pool,
                    self.xc.max_sessions,
                    self.xc.session_idle_ttl_s,
                    self.xc.session_max_lifetime_s,
                )
                if self.xc.env_autocreate and not self.env.ready:
                    self._env_task = asyncio.get_running_loop().create_task(self._create_env())
            self.caps = caps

    def _template_path(self, sandbox: Sandbox, caps: Capabilities) -> Callable[[], Awaitable[Worker]]:
        """The pool's spawn function: the template's when `executor.template` is on and this machine
        runs it (bwrap, seccomp and cgroups, the executor as root), else a fresh interpreter each."""
        if not self.xc.template:
            return sandbox.spawn
        if caps.level != "full" or os.geteuid() != 0:
            self.template_unavailable = (
                "the template needs isolation level full and the executor running as root "
                f"(level {caps.level}, euid {os.geteuid()}); calls use a fresh interpreter each"
            )
            log.warning("executor.template: %s", self.template_unavailable)
            return sandbox.spawn
        assert caps.cgroups is not None
        x = self.xc
        # The template, each call's init (one per live interpreter), first children for a moment
        # and each interpreter until it joins its own group: bounded by how many can be alive.
        pids = 8 + 2 * (x.pool_size + x.max_concurrent_calls + x.max_sessions + x.spawn_parallelism)
        self._template_groups = cgroups.Cgroups(caps.cgroups, pids, x.memory_limit_bytes)
        self.template = TemplatePath(
            x,
            sandbox,
            self._groups,
            self._template_groups,
            on_ready=self._template_ready,
            on_lost=self._template_ready,
        )
        self.template.start()
        return self.template.spawn

    def _template_ready(self) -> None:
        """A template came up (the fresh interpreters started meanwhile give way to forked ones) or
        died (the interpreters forked from it died with it)."""
        if self.pool is not None:
            self.pool.recycle()

    async def _create_env(self) -> bool:
        try:
            created = await self.env.ensure()
        except Exception:
            return False
        if created and self.pool is not None:
            if self.template is not None:
                self.template.rebuild()
            self.pool.recycle()  # ready workers were started without the env mounted
        return created

    async def install(self, spec: str) -> ex.ExecuteResponse:
        """python_install_package: an allowlisted package into the environment every sandbox mounts,
        then the template rebuilt and the ready interpreters replaced, so that the next calls see it."""
        try:
            envs.check_requirement(spec, self.xc.install_allowlist)
        except envs.InstallRefused as exc:
            return text_result(
                str(exc),
                {"installed": False, "package": spec},
                is_error=True,
                error_type=tool_pb2.ERROR_TYPE_INVALID_INPUT,
            )
        try:
            log.info("installing %s into %s", spec, self.env.path)
            output = await self.env.install(spec)
        except envs.InstallRefused as exc:  # another version of an installed distribution
            return text_result(
                str(exc),
                {"installed": False, "package": spec},
                is_error=True,
                error_type=tool_pb2.ERROR_TYPE_INVALID_INPUT,
            )
        except (envs.InstallFailed, OSError) as exc:
            return text_result(
                f"installing {spec} failed: {exc}",
                {"installed": False, "package": spec},
                is_error=True,
                error_type=tool_pb2.ERROR_TYPE_TOOL_ERROR,
            )
        if self.template is not None:
            self.template.rebuild()
        if self.pool is not None:
            self.pool.recycle()
        return text_result(f"installed {spec}", {"installed": True, "package": spec, "output": output})

    async def close(self) -> None:
        self._closed = True
        if self._env_task is not None:
            self._env_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._env_task
        if self.sessions is not None:
            await self.sessions.close()
        if self.pool is not None:
            await self.pool.close()
        if self.template is not None:
            await self.template.close()
        if self._template_groups is not None:
            await self._template_groups.close()
        if self._groups is not None:
            await self._groups.close()

    def status(self) -> dict[str, Any]:
        return {
            "isolation": self.caps.describe() if self.caps else {"level": "not probed yet"},
            "running": self.running,
            "min_isolation": self.xc.min_isolation,
            "refusing": bool(self.refusal),
            "reason": self.refusal,
            "pool": self.pool.status() if self.pool else {},
            "sessions": self.sessions.status() if self.sessions is not None else {},
            "environment": self.env.status(),
            "template": self._template_status(),
        }

    def _template_status(self) -> dict[str, Any]:
        if self.template is not None:
            return self.template.status()
        why = self.template_unavailable or ("" if self.xc.template else "executor.template is off")
        return {"enabled": self.xc.template, "path": "fresh interpreter", "last_error": why}

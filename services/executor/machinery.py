"""The executor's sandbox machinery: the machine probed on start, then the warm pools, sessions,
templates and package environment it runs calls on; their status; a package installed into the
environment; all of it freed on close.

`Executor` (actions.py) is this machinery with the actions on it: nothing here runs on a
python_execute call's path but the first call's `start()` and `pool_for` (which pool a one-call
run takes: imports.py).
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
from services.executor import envs, imports
from services.executor.interpreter import Worker
from services.executor.pool import WarmPool
from services.executor.sandbox import Sandbox, probe
from services.executor.sessions import Sessions
from services.executor.template import PRELOAD, TemplatePath
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
        self.pool: WarmPool | None = None  # sessions, tasks, and calls that import beyond the stdlib
        self.bare_pool: WarmPool | None = None  # calls that import only the stdlib (`bare_template`)
        self.sessions: Sessions | None = None
        self._groups: cgroups.Cgroups | None = None
        self._template_groups: cgroups.Cgroups | None = None
        self.template: TemplatePath | None = None
        self.bare_template: TemplatePath | None = None
        self.template_unavailable = ""  # why executor.template or bare_template is on but cannot be used
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
                if self.template is not None and self.bare_template is not None:
                    self.bare_pool = WarmPool(
                        self.bare_template.spawn, self.xc.bare_pool_size, self.xc.spawn_parallelism
                    )
                    self.bare_pool.start()
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
        """The main pool's spawn function: the heavy template's when `executor.template` is on and
        this machine runs templates (bwrap, seccomp and cgroups, the executor as root), else the
        bare template's when `executor.bare_template` is, else a fresh interpreter each. With both
        templates on, the bare one serves a pool of its own (`bare_pool`: stdlib-only calls)."""
        x = self.xc
        if not (x.template or x.bare_template):
            return sandbox.spawn
        if caps.level != "full" or os.geteuid() != 0:
            self.template_unavailable = (
                "templates need isolation level full and the executor running as root "
                f"(level {caps.level}, euid {os.geteuid()}); calls use a fresh interpreter each"
            )
            log.warning("executor.template: %s", self.template_unavailable)
            return sandbox.spawn
        assert caps.cgroups is not None
        # A template, each call's init (one per live interpreter), first children for a moment and
        # each interpreter until it joins its own group: bounded by how many can be alive.
        pool = max(x.pool_size, x.bare_pool_size if x.template and x.bare_template else 0)
        pids = 8 + 2 * (pool + x.max_concurrent_calls + x.max_sessions + x.spawn_parallelism)
        self._template_groups = cgroups.Cgroups(caps.cgroups, pids, x.memory_limit_bytes)
        groups = (self._groups, self._template_groups)
        if x.bare_template:
            ready = self._bare_template_ready
            self.bare_template = TemplatePath(x, sandbox, *groups, (), on_ready=ready, on_lost=ready)
        if x.template:
            ready = self._template_ready
            preload = (*PRELOAD, *x.template_preload)
            self.template = TemplatePath(x, sandbox, *groups, preload, on_ready=ready, on_lost=ready)
        main = self.template or self.bare_template
        assert main is not None
        for path in (self.template, self.bare_template):
            if path is not None:
                path.start()
        return main.spawn

    def _template_ready(self) -> None:
        """A template came up (the fresh interpreters started meanwhile give way to forked ones) or
        died (the interpreters forked from it died with it): its pool's ready ones are replaced."""
        if self.pool is not None:
            self.pool.recycle()

    def _bare_template_ready(self) -> None:
        """The same for the bare template: its own pool's, or the main pool's when it serves that."""
        pool = self.bare_pool if self.template is not None else self.pool
        if pool is not None:
            pool.recycle()

    def pool_for(self, code: str) -> WarmPool:
        """The warm pool a one-call run of `code` takes: the bare one for code that imports only the
        standard library (when there is one), else the main one."""
        assert self.pool is not None
        if self.bare_pool is None or imports.needs_heavy(code):
            return self.pool
        return self.bare_pool

    def _environment_changed(self) -> None:
        """Rebuild the templates (their sandboxes mount the environment as it was) and replace the
        ready interpreters, so that the next calls see the environment as it is now."""
        for path in (self.template, self.bare_template):
            if path is not None:
                path.rebuild()
        for pool in (self.pool, self.bare_pool):
            if pool is not None:
                pool.recycle()

    async def _create_env(self) -> bool:
        try:
            created = await self.env.ensure()
        except Exception:
            return False
        if created and self.pool is not None:
            self._environment_changed()  # ready workers were started without the env mounted
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
        self._environment_changed()
        return text_result(f"installed {spec}", {"installed": True, "package": spec, "output": output})

    async def close(self) -> None:
        self._closed = True
        if self._env_task is not None:
            self._env_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._env_task
        if self.sessions is not None:
            await self.sessions.close()
        for pool in (self.pool, self.bare_pool):
            if pool is not None:
                await pool.close()
        for path in (self.template, self.bare_template):
            if path is not None:
                await path.close()
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
            "bare_pool": self.bare_pool.status() if self.bare_pool else {},
            "sessions": self.sessions.status() if self.sessions is not None else {},
            "environment": self.env.status(),
            "template": _path_status(self.template, self.xc.template, "template", self.template_unavailable),
            "bare_template": _path_status(
                self.bare_template, self.xc.bare_template, "bare_template", self.template_unavailable
            ),
        }


def _path_status(path: TemplatePath | None, enabled: bool, key: str, unavailable: str) -> dict[str, Any]:
    """A template's status (`TemplatePath.status`), or which path its calls take without it and why."""
    if path is not None:
        return path.status()
    why = unavailable if enabled else f"executor.{key} is off"
    return {"enabled": enabled, "path": "fresh interpreter", "last_error": why}

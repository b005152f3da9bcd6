"""Starts the mesh's processes, restarts them when they die, and stops them cleanly.

Each child runs in its own session (so a timeout or stop can kill its whole
tree) and gets SIGTERM if the supervisor itself dies (no orphans). Stopping
sends SIGTERM in reverse start order, waits for the grace period, then kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.config import MeshConfig
from services.common.process import die_with_parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]  # arguments after `python`


class Child:
    def __init__(self, spec: ChildSpec, mesh: MeshConfig, env: dict[str, str]) -> None:
        self.spec, self._mesh, self._env = spec, mesh, env
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.started = asyncio.Event()
        self.restarts = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.spec.argv,
            env=self._env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started.set()
        log.info("started %s (pid %d)", self.spec.name, self.proc.pid)

    async def keep_alive(self) -> None:
        """Restart the child with backoff whenever it exits unexpectedly."""
        delay = self._mesh.restart_backoff_s
        while not self.stopping:
            await self.start()
            assert self.proc is not None
            began = time.monotonic()
            code = await self.proc.wait()
            if self.stopping:
                return
            if time.monotonic() - began > 10:
                delay = self._mesh.restart_backoff_s
            log.warning("%s exited with %s; restarting in %.1fs", self.spec.name, code, delay)
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._mesh.restart_backoff_max_s)

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._mesh.stop_grace_s)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs; killing it", self.spec.name, self._mesh.stop_grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # and anything it left in its group
        if proc.returncode is None:
            await proc.wait()
        log.info("stopped %s", self.spec.name)


async def supervise(
    specs: Sequence[ChildSpec], mesh: MeshConfig, stop: asyncio.Event, env: dict[str, str] | None = None
) -> None:
    """Run every child until `stop` is set, then stop them in reverse order."""
    env = dict(os.environ if env is None else env)
    # Our processes spawn children (sandboxes, MCP servers) but never use gRPC across a fork:
    # gRPC's fork handlers would only log "skipping fork() handlers" on every spawn.
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    children = [Child(s, mesh, env) for s in specs]
    tasks = [asyncio.create_task(c.keep_alive(), name=c.spec.name) for c in children]
    try:
        await stop.wait()
    finally:
        for child in reversed(children):
            await child.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

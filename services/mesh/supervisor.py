"""Starts the mesh's processes, restarts them when they die, and stops them cleanly.

Each child runs in its own session (so a timeout or stop can kill its whole
tree) and gets SIGTERM if the supervisor itself dies (no orphans). Stopping
sends SIGTERM in reverse start order, waits for the grace period, then kills.

A child is a Python module by default, or any program (`make cluster` runs redis-server and
HAProxy under the same supervisor); it may get environment overrides of its own, a listening
socket the supervisor binds for it (`Listener`), and a readiness check the next children wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from services.common.config import MeshConfig
from services.common.process import die_with_parent

log = logging.getLogger(__name__)


class Listener:
    """A TCP address a child serves on, bound by the supervisor and handed over as an open socket.

    Port 0 gets a port from the system once, here, before any child starts (nothing can take it
    between choosing and binding), and keeps it across restarts. With `flag`, the child gets the
    socket's fd as `<flag> <fd>` and the socket is the child's alone: when the child dies the
    port refuses connections (a load balancer in front moves on), and a restart binds it again.
    Without `flag` the supervisor keeps the socket for the whole run and the child finds the fd
    in its own configuration (`fd`); connections wait in its backlog while the child restarts.
    """

    def __init__(self, host: str, port: int, flag: str | None = "--listen-fd") -> None:
        self.host, self.flag = host, flag
        self._sock: socket.socket | None = self._bind(port)
        self.port: int = self._sock.getsockname()[1]
        self.fd = self._sock.fileno()

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def take(self) -> socket.socket:
        """The socket for the child's next start (close it after the start when `flag` is set)."""
        if self._sock is None:
            return self._bind(self.port)
        sock = self._sock
        if self.flag is not None:
            self._sock = None
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]  # arguments after `python` (or after `program`)
    program: str = ""  # empty: this Python
    env: Mapping[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    listener: Listener | None = None
    # Returns once the child serves; the children after it start only then (raises: no start).
    ready: Callable[[], Awaitable[None]] | None = None
    # Children next to each other with different groups (a cluster's nodes) stop side by side,
    # each group in reverse order; the others one after another.
    group: str = ""


class Child:
    def __init__(self, spec: ChildSpec, mesh: MeshConfig, env: dict[str, str]) -> None:
        self.spec, self._mesh, self._env = spec, mesh, env
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.started = asyncio.Event()
        self.restarts = 0

    async def start(self) -> None:
        listener, argv = self.spec.listener, self.spec.argv
        fds: tuple[int, ...] = ()
        sock = listener.take() if listener is not None else None
        if sock is not None:
            fds = (sock.fileno(),)
            argv = (*argv, listener.flag, str(sock.fileno())) if listener and listener.flag else argv
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.spec.program or sys.executable,
                *argv,
                env={**self._env, **self.spec.env},
                start_new_session=True,
                preexec_fn=die_with_parent,
                pass_fds=fds,
            )
        finally:
            if sock is not None and listener is not None and listener.flag:
                sock.close()  # the child's now: its death closes the port
        self.started.set()
        log.info("started %s (pid %d)", self.spec.name, self.proc.pid)

    async def keep_alive(self) -> None:
        """Restart the child with backoff whenever it exits unexpectedly."""
        delay = self._mesh.restart_backoff_s
        while not self.stopping:
            began = time.monotonic()
            try:
                await self.start()
                assert self.proc is not None
                code: int | str = await self.proc.wait()
            except OSError as exc:  # its program is gone, its port taken meanwhile: try again later
                code = f"a failed start ({exc})"
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
    """Run every child until `stop` is set, then stop them in reverse order (groups side by side)."""
    env = dict(os.environ if env is None else env)
    # Our processes spawn children (sandboxes, MCP servers) but never use gRPC across a fork:
    # gRPC's fork handlers would only log "skipping fork() handlers" on every spawn.
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    children = [Child(s, mesh, env) for s in specs]
    tasks: list[asyncio.Task[None]] = []
    try:
        for c in children:
            tasks.append(asyncio.create_task(c.keep_alive(), name=c.spec.name))
            if c.spec.ready is not None and not await _unless_stopped(c.spec.ready(), stop):
                break
        await stop.wait()
    finally:
        for batch in _stop_batches(children):
            await asyncio.gather(*(_stop_in_turn(chain) for chain in batch))
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _unless_stopped(job: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await `job` unless `stop` is set first (then cancel it): whether it finished."""
    work, stopped = asyncio.ensure_future(job), asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (work, stopped):
            t.cancel()
    if not work.done() or work.cancelled():
        return False
    work.result()  # its failure is the supervisor's: everything started is stopped
    return True


def _stop_batches(children: Sequence[Child]) -> list[list[list[Child]]]:
    """The stop order: reverse start order, where a run of grouped children is one batch of chains
    (one per group, each in reverse order) stopped side by side."""
    batches: list[list[list[Child]]] = []
    grouped: dict[str, list[Child]] = {}
    for child in reversed(children):
        if child.spec.group:
            grouped.setdefault(child.spec.group, []).append(child)
            continue
        if grouped:
            batches.append(list(grouped.values()))
            grouped = {}
        batches.append([[child]])
    if grouped:
        batches.append(list(grouped.values()))
    return batches


async def _stop_in_turn(chain: Sequence[Child]) -> None:
    for child in chain:
        await child.stop()

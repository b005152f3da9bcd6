"""The warm pool: sandboxed interpreters started ahead of demand, each handed out exactly once.

A background filler keeps `size` workers ready (plus one per waiting caller),
starting at most `parallelism` at a time; a taken worker is replaced at once.
Callers that find the pool empty wait, in order, up to their deadline. Spawn
failures back off and are remembered, so a caller that times out is told why.
`run` is a one-call run from end to end: a worker taken, the code run on it, the
worker handed back for the caller to give back once its reply is out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services.common.config import ExecutorConfig
from services.executor.interpreter import RunResult, Worker, run_on
from services.executor.sandbox import SpawnError

log = logging.getLogger(__name__)


class PoolTimeout(Exception):
    """No worker became available before the caller's deadline."""


class WarmPool:
    """Owns every worker it started until it hands one out; `close()` frees them all."""

    def __init__(self, spawn: Callable[[], Awaitable[Worker]], size: int, parallelism: int) -> None:
        self._spawn, self.size, self._parallelism = spawn, max(size, 0), max(parallelism, 1)
        self._ready: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Worker]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()  # closing workers: never cancelled
        self._spawns: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._spawning = 0
        self._owed = 0  # workers taken whose replacement waits for the call to finish
        self._backoff = 0.0
        self.spawned = 0
        self.spawn_failures = 0
        self.last_error = ""
        self._filler: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._filler = asyncio.get_running_loop().create_task(self._fill(), name="warm-pool")

    @property
    def ready(self) -> int:
        return len(self._ready)

    def status(self) -> dict[str, object]:
        return {
            "size": self.size,
            "ready": len(self._ready),
            "starting": self._spawning,
            "waiting": len(self._waiters),
            "spawned": self.spawned,
            "spawn_failures": self.spawn_failures,
            "last_error": self.last_error,
        }

    async def run(
        self,
        code: str,
        timeout_s: float,
        cfg: ExecutorConfig,
        within_s: float,
        later: Callable[[Callable[[], None]], None],
    ) -> RunResult:
        """Run `code` on a worker of its own, ready now or as soon as one is started (PoolTimeout
        after `within_s` seconds); `later` gets the worker's give-back, to run once the caller's
        reply is out (killing a sandbox and starting the next cost loop time the call should not pay)."""
        while True:
            if self._ready:
                worker = self._ready.popleft()
                self._full.clear()
                self._owed += 1
            else:
                worker = await self._handed(within_s)
            try:
                # A worker that died waiting in the pool runs nothing: it is freed, the next one runs.
                result = await run_on(worker, code, timeout_s, cfg, fresh=True)
            except BaseException:
                later(functools.partial(self.give_back, worker))
                raise
            if result is not None:
                later(functools.partial(self.give_back, worker))
                return result
            self.give_back(worker)

    async def take(self, within_s: float) -> Worker:
        """A ready worker, now or as soon as one is started; PoolTimeout after `within_s` seconds."""
        while self._ready:
            worker = self._ready.popleft()
            self._full.clear()
            if worker.alive:
                # The replacement starts when the caller hands the worker back (discard), i.e. after
                # its reply is on the wire: spawning costs event-loop time the call should not pay.
                self._owed += 1
                return worker
            self.discard(worker)
        return await self._handed(within_s)

    async def _handed(self, within_s: float) -> Worker:
        """The next worker started, handed over as it comes up; PoolTimeout after `within_s` seconds."""
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        handed = False
        try:
            async with asyncio.timeout(within_s):
                worker = await fut
            handed = True
            return worker
        except TimeoutError:
            why = f"; the last sandbox start failed: {self.last_error}" if self.last_error else ""
            raise PoolTimeout(f"no sandbox became free within {within_s:.3g}s{why}") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if not handed and fut.done() and not fut.cancelled():
                self.give_back(fut.result())  # delivered just as the caller gave up

    def give_back(self, worker: Worker) -> None:
        """The caller is done with a worker it took: kill it in the background and start its replacement."""
        self.discard(worker)
        self.replace()

    def replace(self) -> None:
        """Start the replacement for a worker taken out (a session keeps its worker, so it calls this)."""
        self._owed = max(self._owed - 1, 0)
        self._wake.set()

    def discard(self, worker: Worker) -> None:
        """Kill and free a worker in the background."""
        self._own(worker.close())
        self._wake.set()

    def recycle(self) -> None:
        """Replace every ready worker (e.g. after the package environment changed)."""
        while self._ready:
            self.discard(self._ready.popleft())
        if self.size:
            self._full.clear()  # until the replacements are ready
        self._wake.set()

    async def wait_full(self) -> None:
        """Until `size` workers are ready (benchmarks use this to measure warm calls)."""
        await self._full.wait()

    def _own(self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]] | None = None) -> None:
        owner = self._tasks if tasks is None else tasks
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        owner.add(task)
        task.add_done_callback(owner.discard)

    async def _fill(self) -> None:
        while True:
            self._wake.clear()
            want = self.size - self._owed + len(self._waiters) - len(self._ready) - self._spawning
            while want > 0 and self._spawning < self._parallelism:
                self._spawning += 1
                want -= 1
                self._own(self._spawn_one(), self._spawns)
            if not self._ready and not self._spawning and self.size == 0 and not self._waiters:
                self._full.set()
            await self._wake.wait()

    async def _spawn_one(self) -> None:
        try:
            if self._backoff:
                await asyncio.sleep(self._backoff)
            worker = await self._spawn()
        except SpawnError as exc:
            self.spawn_failures += 1
            self.last_error = str(exc)
            self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
            log.error("could not start a sandbox: %s", exc)
            return
        finally:
            self._spawning -= 1
            self._wake.set()
        self._backoff = 0.0
        self.spawned += 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                self._owed += 1
                return
        self._ready.append(worker)
        if len(self._ready) >= self.size:
            self._full.set()

    async def close(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        for fut in self._waiters:
            fut.cancel()
        for task in list(self._spawns):
            task.cancel()
        for task in list(self._spawns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        while self._ready:
            await self._ready.popleft().close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

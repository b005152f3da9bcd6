"""Service mode: runtime workers that execute submitted tasks from the task store.

`TaskService` is an async context manager: it opens the store (a TaskBackend: SQLite, or the queue
every node shares on Redis), recovers tasks a dead process left running (retried while attempts
remain, else failed), and runs `concurrency` workers. A worker takes the next queued task, runs it
through the `RunTask` callable (normally `RuntimeHost.run`) while the store keeps its claim, and
stores the outcome. Idle workers wait as the store says (SQLite: on an event set by `submit()`;
Redis: on the stream): no polling. On shutdown the tasks in flight go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.config import Config
from services.common.errors import Unavailable
from services.runtime.host import RuntimeHost
from services.runtime.progress import TaskProgress
from services.runtime.task_backend import ClaimLost, TaskBackend, backend_from_config
from services.runtime.task_store import FINAL, TaskRow, TaskStore

log = logging.getLogger(__name__)
RunTask = Callable[[TaskRow], Awaitable[dict[str, Any]]]


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What GET /api/v1/tasks/{id} shows of a finished trajectory record."""
    return {
        "status": record.get("status"),
        "final_answer": record.get("final_answer"),
        "partial": record.get("partial", False),
        "error": record.get("error"),
        "usage": record.get("usage"),
        "steps": len(record.get("steps") or ()),
        "duration_s": record.get("duration_s"),
        "budgets": record.get("budgets"),
    }


class TaskService:
    """Task store + workers. `submit()` and `get()` are what the HTTP routes call."""

    def __init__(
        self,
        store: Path | TaskBackend,
        run_task: RunTask,
        *,
        concurrency: int = 2,
        max_attempts: int = 2,
        resources: contextlib.AbstractAsyncContextManager[Any] | None = None,
        progress: TaskProgress | None = None,
    ) -> None:
        self.store: TaskBackend = TaskStore(store) if isinstance(store, Path) else store
        # What the running and recent tasks did, step by step (fed by `run_task`; None: not kept).
        self.progress = progress
        self.run_task = run_task
        self.concurrency = max(1, concurrency)
        self.max_attempts = max(1, max_attempts)
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.finished = asyncio.Condition()
        self._resources = resources

    async def __aenter__(self) -> TaskService:
        if self._resources is not None:
            await self._resources.__aenter__()
        await self.store.open()
        retried, failed = await self.store.recover(self.max_attempts)
        if retried or failed:
            log.warning("recovered interrupted tasks: %d queued again, %d failed", len(retried), len(failed))
        self._workers = [
            asyncio.create_task(self._worker(i), name=f"runtime-worker-{i}") for i in range(self.concurrency)
        ]
        self._wake.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        await self.store.close()
        if self._resources is not None:
            await self._resources.__aexit__(None, None, None)

    async def submit(
        self, text: str, priority: int = 0, context: dict[str, Any] | None = None, *, admin: bool = False
    ) -> TaskRow:
        """Queue a task; `admin` is the submitter's authority, which the task runs with."""
        row = await self.store.submit(text, priority, context, admin=admin)
        self._wake.set()
        return row

    async def get(self, task_id: str) -> TaskRow | None:
        return await self.store.get(task_id)

    async def wait_final(self, task_id: str, within_s: float) -> TaskRow:
        """Wait until a task reaches a final status (woken by each finish; used by tests and callers)."""
        async with asyncio.timeout(within_s), self.finished:
            while True:
                row = await self.store.get(task_id)
                if row is None or row.status in FINAL:
                    return row  # type: ignore[return-value]
                await self.finished.wait()

    async def _worker(self, n: int) -> None:
        while True:
            self._wake.clear()
            try:
                row = await self.store.claim(f"worker-{n}", self.max_attempts)
            except sqlite3.Error:
                log.exception("worker %d: the task store failed; retrying in 1s", n)
                await asyncio.sleep(1.0)
                continue
            except Unavailable as exc:
                log.warning("worker %d: %s; retrying in 1s", n, exc.message)
                await asyncio.sleep(1.0)
                continue
            if row is None:
                await self.store.wait_for_work(self._wake)
                continue
            self._wake.set()  # there may be more: let another idle worker look
            if row.status in FINAL:  # settled by the claim (a dead worker's task out of attempts)
                async with self.finished:
                    self.finished.notify_all()
                continue
            try:
                await self._execute(row)
            except Unavailable as exc:  # the outcome not stored: the task's claim expires, it runs again
                log.warning("task %s: %s", row.task_id, exc.message)

    async def _execute(self, row: TaskRow) -> None:
        log.info("task %s started (attempt %d)", row.task_id, row.attempts)
        try:
            record = await self.store.hold(row, lambda: self.run_task(row))
        except ClaimLost as exc:  # another worker runs it now, and records its outcome
            log.warning("task %s: %s", row.task_id, exc)
            return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.requeue(row.task_id))
            raise
        except Exception as exc:
            log.exception("task %s crashed the runtime", row.task_id)
            steps: list[dict[str, Any]] = []
            await self.store.finish(
                row.task_id,
                "failed",
                None,
                {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"},
            )
        else:
            steps = list(record.get("steps") or ())
            status = record.get("status")
            status = status if status in FINAL else "failed"
            await self.store.finish(row.task_id, status, summary(record), record.get("error"))
            log.info("task %s %s", row.task_id, status)
        if self.progress is not None:  # after the store: whoever follows the task reads it ended
            self.progress.finish(row.task_id, steps)
        async with self.finished:
            self.finished.notify_all()


def service_from_config(cfg: Config, base_url: str, api_key: str) -> TaskService:
    """The task service with its own RuntimeHost (LLM + edge client), as the edge or `--serve` mount it.

    The host starts lazily, so the edge can mount this in its own process before it listens.
    """
    rc = cfg.runtime
    host = RuntimeHost.from_config(cfg, base_url, api_key, lazy=True)

    progress = TaskProgress()

    async def run_task(row: TaskRow) -> dict[str, Any]:
        notes = progress.start(row.task_id)
        return await host.run(row.input, row.task_id, row.context, notes, admin=row.admin)

    return TaskService(
        backend_from_config(cfg),
        run_task,
        concurrency=rc.concurrency,
        max_attempts=rc.max_attempts,
        resources=host,
        progress=progress,
    )

"""Service mode: runtime workers that execute submitted tasks from the task store.

`TaskService` is an async context manager: it opens the store, recovers tasks
a dead process left running (retried while attempts remain, else failed), and
runs `concurrency` workers. A worker takes the next queued task, runs it
through the `RunTask` callable (normally `RuntimeHost.run`) and stores the
outcome. Workers sleep on an event set by `submit()`: no polling. On shutdown
the tasks in flight go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.runtime.tasks import TaskRow, TaskStore

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
        self, store_path: Path, run_task: RunTask, *, concurrency: int = 2, max_attempts: int = 2
    ) -> None:
        self.store = TaskStore(store_path)
        self.run_task = run_task
        self.concurrency = max(1, concurrency)
        self.max_attempts = max(1, max_attempts)
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.finished = asyncio.Condition()

    async def __aenter__(self) -> TaskService:
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

    async def submit(self, text: str, priority: int = 0, context: dict[str, Any] | None = None) -> TaskRow:
        row = await self.store.submit(text, priority, context)
        self._wake.set()
        return row

    async def get(self, task_id: str) -> TaskRow | None:
        return await self.store.get(task_id)

    async def wait_final(self, task_id: str, within_s: float) -> TaskRow:
        """Wait until a task reaches a final status (woken by each finish; used by tests and callers)."""
        from services.runtime.tasks import FINAL

        async with asyncio.timeout(within_s), self.finished:
            while True:
                row = await self.store.get(task_id)
                if row is None or row.status in FINAL:
                    return row  # type: ignore[return-value]
                await self.finished.wait()

    async def _worker(self, n: int) -> None:
        while True:
            self._wake.clear()
            row = await self.store.claim()
            if row is None:
                await self._wake.wait()
                continue
            self._wake.set()  # there may be more: let another idle worker look
            await self._execute(row)

    async def _execute(self, row: TaskRow) -> None:
        log.info("task %s started (attempt %d)", row.task_id, row.attempts)
        try:
            record = await self.run_task(row)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.requeue(row.task_id))
            raise
        except Exception as exc:
            log.exception("task %s crashed the runtime", row.task_id)
            await self.store.finish(
                row.task_id,
                "failed",
                None,
                {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"},
            )
        else:
            status = record.get("status")
            status = status if status in ("completed", "failed", "budget_exhausted") else "failed"
            await self.store.finish(row.task_id, status, summary(record), record.get("error"))
            log.info("task %s %s", row.task_id, status)
        async with self.finished:
            self.finished.notify_all()

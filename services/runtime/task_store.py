"""The task store: submitted tasks in SQLite (its own file), so a restart loses none.

Each task records its submitter's authority (`admin`: whether they proved admin rights), never a
token: the runtime runs the task with that authority and no more.

Statuses: queued -> running -> completed | failed | budget_exhausted. A task
found `running` when the store opens was interrupted by a crash: `recover()`
queues it again while it has attempts left, else marks it failed with an
`Interrupted` error. Nothing is ever dropped silently. Every call runs on one
dedicated thread, off the event loop. One process's workers use it (the TaskBackend interface,
task_backend.py; redis_tasks.py shares one queue between nodes).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.common.sqlite import SqliteThread

_T = TypeVar("_T")
FINAL = frozenset({"completed", "failed", "budget_exhausted"})
_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT UNIQUE NOT NULL,
    input TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    context TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (status, priority DESC, seq);
"""
_COLUMNS = (
    "task_id, input, priority, context, status, attempts, created_at, started_at, finished_at, "
    "result, error, admin"
)


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    input: str
    priority: int
    context: dict[str, Any]
    status: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    admin: bool = False  # the submitter proved admin rights; the task acts with them

    def json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "input": self.input,
            "priority": self.priority,
            "context": self.context,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "result": self.result,
            "error": self.error,
            "admin": self.admin,
        }


def _iso(t: float | None) -> str | None:
    from datetime import UTC, datetime

    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _row(r: tuple[Any, ...]) -> TaskRow:
    return TaskRow(
        r[0],
        r[1],
        r[2],
        json.loads(r[3]),
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        json.loads(r[9]) if r[9] else None,
        json.loads(r[10]) if r[10] else None,
        bool(r[11]),
    )


class TaskStore(SqliteThread):
    """Async facade over one SQLite connection used from one worker thread."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA, "tasks-sqlite")
        self.path = path

    async def open(self) -> None:
        await self._open_db()
        await self._run(self._add_admin_column)

    def _add_admin_column(self) -> None:
        """A store written before tasks recorded authority: its tasks are nobody's admin tasks."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(tasks)")}
        if "admin" not in columns:
            self.db.execute("ALTER TABLE tasks ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")

    async def submit(
        self, text: str, priority: int = 0, context: dict[str, Any] | None = None, *, admin: bool = False
    ) -> TaskRow:
        task_id = uuid.uuid4().hex

        def _submit() -> TaskRow:
            self.db.execute(
                "INSERT INTO tasks (task_id, input, priority, context, status, created_at, admin) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (task_id, text, priority, json.dumps(context or {}), time.time(), int(admin)),
            )
            return self._get(task_id)  # type: ignore[return-value]

        return await self._run(_submit)

    def _get(self, task_id: str) -> TaskRow | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _row(r) if r else None

    async def get(self, task_id: str) -> TaskRow | None:
        return await self._run(self._get, task_id)

    async def claim(self, worker: str = "", max_attempts: int = 0) -> TaskRow | None:
        """Take the next queued task (highest priority, then oldest) and mark it running.

        One process owns the file: which of its workers claims needs no record, and the attempts
        of an interrupted task are judged once, by `recover()` at open (so both are unused here).
        """

        def _claim() -> TaskRow | None:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                r = db.execute(
                    "SELECT task_id FROM tasks WHERE status = 'queued' ORDER BY priority DESC, seq LIMIT 1"
                ).fetchone()
                if r is None:
                    return None
                db.execute(
                    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?, "
                    "finished_at = NULL WHERE task_id = ?",
                    (time.time(), r[0]),
                )
                return self._get(r[0])
            finally:
                db.execute("COMMIT")

        return await self._run(_claim)

    async def wait_for_work(self, submitted: asyncio.Event) -> None:
        """Only this process submits to its file: nothing to claim until one of its submits."""
        await submitted.wait()

    async def hold(self, row: TaskRow, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run the task: no other process can take it, so there is no claim to keep."""
        return await work()

    async def finish(
        self, task_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        def _finish() -> None:
            self.db.execute(
                "UPDATE tasks SET status = ?, finished_at = ?, result = ?, error = ? WHERE task_id = ?",
                (
                    status,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    task_id,
                ),
            )

        await self._run(_finish)

    async def requeue(self, task_id: str) -> None:
        """Put a task we stopped on purpose (shutdown) back in the queue; the attempt does not count."""

        def _requeue() -> None:
            self.db.execute(
                "UPDATE tasks SET status = 'queued', attempts = MAX(attempts - 1, 0), started_at = NULL "
                "WHERE task_id = ? AND status = 'running'",
                (task_id,),
            )

        await self._run(_requeue)

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """Tasks left `running` by a dead process: (queued again, failed for good)."""

        def _recover() -> tuple[list[str], list[str]]:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute("SELECT task_id, attempts FROM tasks WHERE status = 'running'").fetchall()
                retried = [tid for tid, n in rows if n < max_attempts]
                failed = [tid for tid, n in rows if n >= max_attempts]
                for tid in retried:
                    err = {
                        "type": "Interrupted",
                        "message": "the runtime stopped while this task ran; retrying",
                    }
                    db.execute(
                        "UPDATE tasks SET status = 'queued', error = ? WHERE task_id = ?",
                        (json.dumps(err), tid),
                    )
                for tid, n in rows:
                    if n >= max_attempts:
                        err = {
                            "type": "Interrupted",
                            "message": f"the runtime stopped while this task ran, "
                            f"{n} time(s); not retried again (max_attempts={max_attempts})",
                        }
                        db.execute(
                            "UPDATE tasks SET status = 'failed', finished_at = ?, error = ? "
                            "WHERE task_id = ?",
                            (time.time(), json.dumps(err), tid),
                        )
                return retried, failed
            finally:
                db.execute("COMMIT")

        return await self._run(_recover)

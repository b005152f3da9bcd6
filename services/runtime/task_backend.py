"""The task store's interface: what the task service needs of wherever tasks are queued.

`TaskBackend` is the interface; `TaskStore` (task_store.py, SQLite in its own file) is the embedded
default, one process's workers; `RedisTaskStore` (redis_tasks.py: a hash per task, a Stream with
one consumer group) fits the same calls, so the workers of every node share one queue.
`backend_from_config` picks one by `[runtime] task_backend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from services.common.config import Config, ConfigError
from services.runtime.task_store import TaskRow, TaskStore

T = TypeVar("T")


class ClaimLost(Exception):
    """Another worker took the task this one was running (its claim was not renewed in time)."""


class TaskBackend(Protocol):
    """Where tasks are queued and recorded. All methods are safe to call from the event loop."""

    async def open(self) -> None:
        """Make the store ready (the SQLite file, the Redis consumer group)."""
        ...

    async def close(self) -> None: ...

    async def submit(
        self, text: str, priority: int = 0, context: dict[str, Any] | None = None, *, admin: bool = False
    ) -> TaskRow:
        """Record a new task `queued`; `admin` is its submitter's authority (never a token)."""
        ...

    async def get(self, task_id: str) -> TaskRow | None: ...

    async def claim(self, worker: str, max_attempts: int) -> TaskRow | None:
        """The next task for `worker` (this process's worker name), now `running`, its attempt counted.

        May return a task it settled instead of running it (a final status: one reclaimed from a
        dead worker with no attempts left, failed), or None when there is nothing to run.
        """
        ...

    async def wait_for_work(self, submitted: asyncio.Event) -> None:
        """After `claim` found nothing: wait until it may (`submitted` is set by this process's submits)."""
        ...

    async def hold(self, row: TaskRow, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` (the task) while keeping the claim on `row`; ClaimLost if another worker took it."""
        ...

    async def finish(
        self, task_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        """Record the outcome of a task this process claimed."""
        ...

    async def requeue(self, task_id: str) -> None:
        """Put a task stopped on purpose (shutdown) back in the queue; the attempt does not count."""
        ...

    async def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """At start: tasks a dead process left running (queued again, failed for good)."""
        ...


def backend_from_config(cfg: Config) -> TaskBackend:
    """The task store `[runtime] task_backend` names (Redis only imported when configured)."""
    rc, cl = cfg.runtime, cfg.cluster
    if rc.task_backend == "sqlite":
        return TaskStore(cfg.path(rc.tasks_path))
    if rc.task_backend != "redis":
        raise ConfigError(f"runtime.task_backend: {rc.task_backend!r} is not one of sqlite, redis")
    if not cl.redis_url:
        raise ConfigError('runtime.task_backend "redis" needs cluster.redis_url')
    from services.runtime.redis_tasks import RedisTaskStore

    return RedisTaskStore(
        cl.redis_url,
        node=cl.node(),
        key_prefix=cl.key_prefix,
        timeout_s=cl.redis_timeout_s,
        visibility_s=rc.task_visibility_s,
        block_s=min(cl.follow_block_s, rc.task_visibility_s / 2),
        ttl_s=rc.task_ttl_s,
        max_connections=cl.redis_max_connections,
    )

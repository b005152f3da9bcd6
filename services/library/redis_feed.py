"""The event feed on Redis: one follower per process tails the shared stream and applies it.

Several hubs commit to one revision counter, so a hub must not show its own commit at revision r
before every revision below r that others committed: its watchers drop what is not newer than what
they saw, and would miss those. So the follower (`XREAD BLOCK` from the last revision applied) is
the only thing that applies events to the in-memory registry and publishes them to local watchers,
this process's own commits included; a local write waits for it (`wait_applied`).

Redis unreachable: the follower retries with backoff and resumes from the last revision applied;
if the stream was trimmed past it, the registry reloads from the hashes (Registry.resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from toolscore.v1 import tool_pb2

from services.common.errors import Unavailable
from services.library.feed import InProcessFeed, Subscription
from services.library.redis_store import STORE_UNAVAILABLE, RedisStore
from services.library.registry import Registry

log = logging.getLogger(__name__)
_BATCH = 500


class RedisFeed:
    """EventFeed whose events come from the shared stream; also the Registry's Follower."""

    def __init__(
        self,
        store: RedisStore,
        *,
        queue_size: int = 1024,
        apply_timeout_s: float = 5.0,
        backoff_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._store = store
        self._local = InProcessFeed(queue_size)
        self._apply_timeout = apply_timeout_s
        self._backoff = (backoff_s, backoff_max_s)
        self.applied = 0  # the last revision applied to the registry
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Why the store cannot be followed now ("" when it can): health reports it.
        self.problem = ""
        self.problem_changed = asyncio.Event()  # set on each change of `problem`

    # -- EventFeed: local fan-out ----------------------------------------------

    def publish(self, event: tool_pb2.ToolEvent) -> None:
        self._local.publish(event)

    def subscribe(self) -> Subscription:
        return self._local.subscribe()

    def close(self) -> None:
        """End every local subscription (the follower keeps running)."""
        self._local.close()

    # -- Follower ----------------------------------------------------------------

    def start(self, registry: Registry) -> None:
        """Follow the stream from the revision `registry` loaded."""
        self.applied = registry.revision
        self._task = asyncio.create_task(self._follow(registry), name="redis-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # A cancel that lands in redis-py's read of a blocking XREAD is at times taken in there
        # and the read goes on; cancelling again ends it (each wait is bounded, nothing polls).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_applied(self, revision: int) -> None:
        try:
            async with asyncio.timeout(self._apply_timeout):
                while self.applied < revision:
                    await self._progress.wait()
        except TimeoutError:
            raise Unavailable(
                f"revision {revision} is committed but this hub has not applied it yet "
                f"({self.problem or 'the store is slow'})",
                reason=STORE_UNAVAILABLE,
                metadata={"revision": str(revision)},
            ) from None

    def check_writable(self) -> None:
        if self.problem:
            raise Unavailable(
                f"the registry store cannot be followed: {self.problem}", reason=STORE_UNAVAILABLE
            )

    def _advanced(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _follow(self, registry: Registry) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._step(registry)
                delay = self._backoff[0]
                continue
            except Unavailable as exc:
                if exc.message != self.problem:  # one line per distinct failure, not per retry
                    log.warning("event stream unreachable (%s); retrying", exc.message)
                    self.problem = exc.message
                    self.problem_changed.set()
            except Exception as exc:  # a defect must not end the feed: every write would wait on it
                log.exception("event follower failed; retrying")
                self.problem = f"{type(exc).__name__}: {exc}"
                self.problem_changed.set()
            await asyncio.sleep(delay)  # backoff before the next try, not a poll
            delay = min(delay * 2, self._backoff[1])

    async def _step(self, registry: Registry) -> None:
        if self.problem:  # back after a failure: is our place in the stream still there?
            latest = await self._store.latest_revision()
            if latest < self.applied:
                raise Unavailable(
                    f"the store is at revision {latest}, behind this hub's {self.applied}: Redis lost "
                    "its data (run it with persistence); writes stay refused until the hubs restart",
                    reason=STORE_UNAVAILABLE,
                )
            log.info("event stream reachable again at revision %d (applied %d)", latest, self.applied)
            self.problem = ""
            self.problem_changed.set()
        batch = await self._store.read_after(self.applied, _BATCH)
        if batch and batch[0].revision > self.applied + 1:  # trimmed past us: reload the hashes
            tools, _stats, revision = await self._store.load()
            registry.resync(tools, revision)
            self.applied = revision
            self._advanced()
            return
        for ev in batch:
            try:
                registry.apply(ev.revision, ev.event)
            except Exception:  # one unreadable event must not stop the feed
                log.exception("event at revision %d not applied", ev.revision)
                registry.revision = ev.revision
            self.applied = ev.revision
        if batch:
            self._advanced()

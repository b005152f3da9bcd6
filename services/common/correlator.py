"""Calls waiting for their answers on a shared connection, matched by request id.

Every connection that carries many callers' requests and brings their answers
back out of order correlates them here: the router's calls over a tool
server's ExecuteStream (services.router.channels, by call_id), the edge's calls
to servers dialled in over the ToolScore WebSocket (edge.dialled_in, by request_id),
and the bench's MCP WebSocket client (bench.scenarios.mcp, by JSON-RPC id).

A caller `open`s its id (with a deadline, and a hook for progress notes if it
wants them), sends its request, awaits the future, and `finish`es the id
whatever happened; the connection's reader `resolve`s answers and routes
`progress`; when the connection ends, `fail_all` fails everyone still waiting
with the connection's error. A deadline is a timer on the loop, not a
`asyncio.timeout` block: cheaper per call, and it runs while the request is
still being written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")

ProgressHook = Callable[[Any], None]


class Expired(TimeoutError):
    """The call's deadline passed before its answer came."""


class TooManyPending(Exception):
    """As many calls as the correlator may hold are waiting already."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(Expired())


class Correlator(Generic[K, A]):
    """Pending futures by id, each with its deadline, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 1)
        self._pending: dict[K, tuple[asyncio.Future[A], ProgressHook | None, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def open(self, key: K, timeout_s: float, progress: ProgressHook | None = None) -> asyncio.Future[A]:
        """A future for `key`'s answer; it fails with `Expired` after `timeout_s` (TooManyPending if full)."""
        if len(self._pending) >= self._limit:
            raise TooManyPending(f"{self._limit} calls are waiting for their answers already")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[A] = loop.create_future()
        self._pending[key] = (fut, progress, loop.call_later(timeout_s, _expire, fut))
        return fut

    def finish(self, key: K) -> bool:
        """The caller is done with `key`; True when its answer never came (the peer may be told)."""
        slot = self._pending.pop(key, None)
        if slot is None:
            return False
        slot[2].cancel()
        return True

    def resolve(self, key: K, answer: A) -> bool:
        """Deliver `key`'s answer; False when no call waits for it (unknown, answered or expired)."""
        slot = self._pending.pop(key, None)
        if slot is None:
            return False
        slot[2].cancel()
        if slot[0].done():  # expired meanwhile: its caller has the error already
            return False
        slot[0].set_result(answer)
        return True

    def progress(self, key: K, note: Any) -> None:
        """Hand a progress note to `key`'s hook, if it waits and has one."""
        slot = self._pending.get(key)
        if slot is not None and slot[1] is not None:
            slot[1](note)

    def fail_all(self, error: BaseException) -> None:
        """The connection is over: every call still waiting fails with `error`."""
        pending, self._pending = self._pending, {}
        for fut, _, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(error)

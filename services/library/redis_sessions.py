"""Which node holds a session of a stateful tool (the Python executor's), on Redis.

The executor that mints a session claims it: `<prefix>session:<digest>` holds its node id, with
a TTL of `[cluster] node_ttl_s`, set before the call that started the session answers, renewed
every third of the TTL while the session lives (`keep`), and deleted when it ends; an executor
that stops or dies stops renewing, and its claims expire within one TTL. The key is
named by a digest of the session id, never the id itself: the id is the only key to a session's
state, and whoever reads Redis must not learn it. A hub asks `owner` for a call that carries a
session id (services/router/router.py sends it to the owner's replica only).

Only calls that carry a session id ask, and an owner never changes, so a known one is kept in
memory (bounded); a Redis that does not answer gives "" (the call is routed as any other, and an
executor that does not hold the session says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.redis_calls import redis_client

log = logging.getLogger(__name__)
_KNOWN = 4096  # owners kept in memory, the least recently used dropped first
_FAILURES = (RedisError, OSError, TimeoutError)


class SessionOwners:
    """Claims of this node's sessions, and the owners of any, on one Redis."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        node: str,
        ttl_s: float = 15.0,
        timeout_s: float = 2.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.node = node
        self._prefix = f"{key_prefix}session:"
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self.refresh_s = ttl_s / 3
        self._timeout = timeout_s
        # Deadlines are this module's asyncio.timeout (redis_client). `client`: the hub's shared
        # one, which it closes; else one of its own.
        self._owns = client is None
        self._redis = client or redis_client(url, timeout_s=timeout_s)
        self._known: OrderedDict[str, str] = OrderedDict()

    def key(self, session_id: str) -> str:
        """The Redis key of `session_id`'s owner."""
        return self._prefix + hashlib.sha256(session_id.encode()).hexdigest()[:32]

    async def claim(self, session_id: str) -> None:
        """Record this node as `session_id`'s owner (a failure is logged: the session still works
        through this node, and other nodes' executors answer that they do not hold it)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self.key(session_id), self.node, px=self._ttl_ms)
        except _FAILURES as exc:
            log.warning("session owner not recorded (reachable through this node only): %s", exc)

    async def release(self, session_id: str) -> None:
        """Forget `session_id` (it ended); a failure is logged: the claim expires."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(self.key(session_id))
        except _FAILURES as exc:
            log.warning("session owner not removed (it expires): %s", exc)

    async def keep(self, live: Callable[[], Iterable[str]], stop: asyncio.Event) -> None:
        """Renew the claim of every live session every third of the TTL until `stop` is set (set
        again, so a claim that expired while Redis was away comes back)."""
        failing = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await stop.wait()
            ids = list(live())
            if not ids or stop.is_set():
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for session_id in ids:
                            pipe.set(self.key(session_id), self.node, px=self._ttl_ms)
                        await pipe.execute()
                failing = False
            except _FAILURES as exc:
                if not failing:
                    log.warning("session owners not renewed: %s", exc)
                failing = True

    async def owner(self, session_id: str) -> str:
        """The node holding `session_id`, or "" when none is recorded (or Redis does not answer)."""
        known = self._known.get(session_id)
        if known is not None:
            self._known.move_to_end(session_id)
            return known
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(self.key(session_id))
        except _FAILURES as exc:
            log.warning("owner of a session not read: %s", exc)
            return ""
        if raw is None:
            return ""
        node = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._known[session_id] = node
        if len(self._known) > _KNOWN:
            self._known.popitem(last=False)
        return node

    async def close(self) -> None:
        """Close the connections."""
        if self._owns:
            await self._redis.aclose()

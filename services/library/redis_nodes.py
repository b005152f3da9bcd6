"""The cluster's nodes on Redis: each hub announces its advertised gRPC address under a TTL'd key
(`<prefix>node:<node id>`, renewed every third of the TTL: its heartbeat), and finds another
node's address there when it forwards a call (services/router/forward.py). The set
`<prefix>nodes` names every node that announced itself (and did not withdraw), so the nodes alive
can be listed (`nodes`: those whose announcement has not expired) without scanning the keyspace.

Only forwarded calls ask, and each node's address is kept in memory for a third of the TTL, so
the hot path of a local call never reaches Redis; a Redis that does not answer leaves the last
address known in use (forwarding goes on while Redis is away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.redis_calls import redis_deadline

log = logging.getLogger(__name__)


class NodeDirectory:
    """This node's announcement and the other nodes' addresses, on one Redis."""

    def __init__(
        self, url: str, *, key_prefix: str, node: str, ttl_s: float = 15.0, timeout_s: float = 2.0
    ) -> None:
        self.node = node
        self._prefix = f"{key_prefix}node:"
        self._members = f"{key_prefix}nodes"
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._refresh_s = ttl_s / 3
        self._timeout = timeout_s
        # Deadlines are this module's asyncio.timeout; no socket timeout (redis_store.py says why).
        self._redis = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout_s)
        self._known: dict[str, tuple[str, float]] = {}  # node -> (address, when read); one per node
        self._first = asyncio.Event()

    def key(self, node: str) -> str:
        """The Redis key that announces `node`."""
        return self._prefix + node

    async def announce(self, address: str) -> None:
        """Announce this node at `address` for one TTL (raises on a Redis failure)."""
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.key(self.node), address, px=self._ttl_ms)
                pipe.sadd(self._members, self.node)
                await pipe.execute()

    async def heartbeat(self, address: str, stop: asyncio.Event) -> None:
        """Announce this node now and every third of the TTL until `stop` is set; a failure is
        logged once and the next beat tries again (an announcement lives a whole TTL). Ended by
        `stop`, not by cancelling: a cancel that lands inside a redis-py command can be lost there."""
        failing = False
        while not stop.is_set():
            try:
                await self.announce(address)
                if failing:
                    log.info("node %s announced again at %s", self.node, address)
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                if not failing:
                    log.warning("node %s not announced: %s: %s", self.node, type(exc).__name__, exc)
                failing = True
            self._first.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_s):
                    await stop.wait()

    async def started(self) -> None:
        """Wait for the first announcement of `heartbeat` (made or failed)."""
        await self._first.wait()

    async def withdraw(self) -> None:
        """Remove this node's announcement (a clean stop: others stop forwarding here at once)."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.key(self.node))
                    pipe.srem(self._members, self.node)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("node %s not withdrawn (it expires): %s", self.node, exc)

    async def address(self, node: str) -> str:
        """`node`'s advertised address, or "" when it is not announced."""
        known = self._known.get(node)
        now = time.monotonic()
        if known is not None and now - known[1] < self._refresh_s:
            return known[0]
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(self.key(node))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("address of node %s not read: %s", node, exc)
            return known[0] if known is not None else ""
        address = raw.decode() if isinstance(raw, bytes) else (raw or "")
        self._known[node] = (address, now)
        return address

    async def nodes(self) -> dict[str, str]:
        """Every node announced now, with its address (this one included); raises Unavailable
        (NODES_UNAVAILABLE) when Redis does not answer. Nodes whose announcement expired (they
        died) are dropped from the set on the way."""
        async with redis_deadline(self._timeout, "the node directory (Redis)", "NODES_UNAVAILABLE"):
            members = sorted(
                m.decode() if isinstance(m, bytes) else m for m in await self._redis.smembers(self._members)
            )
            if not members:
                return {}
            raw = await self._redis.mget([self.key(m) for m in members])
            gone = [m for m, a in zip(members, raw, strict=True) if a is None]
            if gone:
                await self._redis.srem(self._members, *gone)
        return {
            m: a.decode() if isinstance(a, bytes) else a
            for m, a in zip(members, raw, strict=True)
            if a is not None
        }

    async def close(self) -> None:
        """Close the connections."""
        await self._redis.aclose()

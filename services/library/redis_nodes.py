"""The cluster's nodes on Redis: each hub announces its advertised gRPC address under a TTL'd key
(`<prefix>node:<node id>`, renewed every third of the TTL: its heartbeat), and finds another
node's address there when it forwards a call (services/router/forward.py). The set
`<prefix>nodes` names every node that announced itself (and did not withdraw), so the nodes alive
can be listed (`nodes`: those whose announcement has not expired) without scanning the keyspace.

Only forwarded calls ask, and each node's address is kept in memory for a third of the TTL, so
the hot path of a local call never reaches Redis; a Redis that does not answer leaves the last
address known in use (forwarding goes on while Redis is away).

With an admin token (`secret`), an announcement is sealed: `<address> <expires ms> <hmac>`, the
HMAC-SHA256 of node id, address and expiry under a key derived from the token. Nodes send the
admin token to each other (install fan-out, an admin caller's forwarded call), so an address
someone wrote into Redis without the token, or a node's sealed value copied under another node's
id or kept past its expiry, is read as no announcement at all: a writer of Redis cannot make a
node send it the token. Every node of a cluster has the same admin token already (a forwarded
admin call is checked against it where it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.redis_calls import redis_client, redis_deadline

log = logging.getLogger(__name__)

_KEY_CONTEXT = b"toolscore node announcement\x00"
_MAX_REFUSED_LOGGED = 64  # distinct refused announcements logged (a flood of forgeries logs this many)


class Seal:
    """Seals and opens node announcements under a key derived from the admin token; with no
    token, announcements are the bare address (as before)."""

    def __init__(self, secret: str, ttl_ms: int) -> None:
        self._key = hashlib.sha256(_KEY_CONTEXT + secret.encode()).digest() if secret else b""
        self._skew_ms = ttl_ms  # clocks of two machines may differ by this much and still agree
        self._refused: set[tuple[str, str]] = set()

    def _mac(self, node: str, address: str, expires_ms: int) -> str:
        msg = f"{node}\x00{address}\x00{expires_ms}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def seal(self, node: str, address: str, ttl_ms: int) -> str:
        """The value announcing `node` at `address` for `ttl_ms` from now."""
        if not self._key:
            return address
        expires_ms = int(time.time() * 1000) + ttl_ms
        return f"{address} {expires_ms} {self._mac(node, address, expires_ms)}"

    def open(self, node: str, raw: bytes | str | None) -> str:
        """The address `raw` announces for `node`, or "" when it is absent or does not verify."""
        if raw is None:
            return ""
        value = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not self._key:
            return value.split(" ", 1)[0]
        parts = value.split(" ")
        if len(parts) == 3 and parts[1].isdigit() and len(parts[1]) < 20:
            address, expires_ms = parts[0], int(parts[1])
            fresh = expires_ms + self._skew_ms >= time.time() * 1000
            if fresh and hmac.compare_digest(parts[2], self._mac(node, address, expires_ms)):
                return address
        self._refuse(node, value)
        return ""

    def _refuse(self, node: str, value: str) -> None:
        seen = (node, value[:200])
        if seen in self._refused or len(self._refused) >= _MAX_REFUSED_LOGGED:
            return
        self._refused.add(seen)
        log.warning(
            "the announcement of node %r in Redis is not sealed with this cluster's admin token "
            "(written by something else, or expired): the node is ignored",
            node[:100],
        )


class NodeDirectory:
    """This node's announcement and the other nodes' addresses, on one Redis."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        node: str,
        ttl_s: float = 15.0,
        timeout_s: float = 2.0,
        secret: str = "",
        client: aioredis.Redis | None = None,
    ) -> None:
        self.node = node
        self._prefix = f"{key_prefix}node:"
        self._members = f"{key_prefix}nodes"
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._seal = Seal(secret, self._ttl_ms)
        self._refresh_s = ttl_s / 3
        self._timeout = timeout_s
        # Deadlines are this module's asyncio.timeout (redis_client). `client`: the hub's shared
        # one, which it closes; else one of this directory's own.
        self._owns = client is None
        self._redis = client or redis_client(url, timeout_s=timeout_s)
        self._known: dict[str, tuple[str, float]] = {}  # node -> (address, when read); one per node
        self._first = asyncio.Event()

    def key(self, node: str) -> str:
        """The Redis key that announces `node`."""
        return self._prefix + node

    async def announce(self, address: str) -> None:
        """Announce this node at `address` for one TTL (raises on a Redis failure)."""
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                sealed = self._seal.seal(self.node, address, self._ttl_ms)
                pipe.set(self.key(self.node), sealed, px=self._ttl_ms)
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

    async def address(self, node: str, fresh: bool = False) -> str:
        """`node`'s advertised address, or "" when it is not announced; read from Redis at most
        once a third of the TTL, or now when `fresh` (the address known did not answer)."""
        known = self._known.get(node)
        now = time.monotonic()
        if known is not None and not fresh and now - known[1] < self._refresh_s:
            return known[0]
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(self.key(node))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("address of node %s not read: %s", node, exc)
            return known[0] if known is not None else ""
        address = self._seal.open(node, raw)
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
        opened = {m: self._seal.open(m, a) for m, a in zip(members, raw, strict=True) if a is not None}
        return {m: a for m, a in opened.items() if a}

    async def close(self) -> None:
        """Close the connections."""
        if self._owns:
            await self._redis.aclose()

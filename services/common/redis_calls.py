"""Every Redis command of the mesh under one deadline, its failures as one clear UNAVAILABLE.

The clients are made with no socket timeout (redis_store.py says why): this deadline is the only one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import Unavailable

_LOST = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


@asynccontextmanager
async def redis_deadline(timeout_s: float, store: str, reason: str) -> AsyncIterator[None]:
    """Run the block within `timeout_s`; a Redis error, a lost connection or the deadline passing
    becomes Unavailable(reason) naming `store` (e.g. "the task store (Redis at host:port)")."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (RedisError, OSError, TimeoutError) as exc:
        # An answer that is an error (out of memory, a script refused) is as unusable as none.
        what = "unreachable" if isinstance(exc, _LOST) else "failing"
        raise Unavailable(f"{store} is {what}: {type(exc).__name__}: {exc}", reason=reason) from exc


def redis_client(
    url: str, *, timeout_s: float, max_connections: int = 0, retries: int = 1, name: str | None = None
) -> aioredis.Redis:
    """A client of `url` for short commands: no socket timeout (the caller's `redis_deadline` is the
    deadline), `retries` immediate retries (a pooled connection that died with a Redis restart
    finds out on first use). With `max_connections`, its pool holds at most that many; a command
    past them waits for one within `timeout_s` (a hub's components share one such client: a flood
    of writes cannot open sockets without bound). `name`: each connection's CLIENT SETNAME (what
    an operator sees in CLIENT LIST)."""
    retry = Retry(NoBackoff(), retries)
    if not max_connections:
        return aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout_s, retry=retry, client_name=name
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=None,
        socket_connect_timeout=timeout_s,
        retry=retry,
        client_name=name,
    )
    return aioredis.Redis.from_pool(pool)

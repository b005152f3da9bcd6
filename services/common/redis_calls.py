"""Every Redis command of the mesh under one deadline, its failures as one clear UNAVAILABLE.

The clients are made with no socket timeout (redis_store.py says why): this deadline is the only one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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

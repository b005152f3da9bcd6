"""The edge's MCP session store on Redis (edge/mcp/redis_sessions.py) bounds its connections: the
short commands every request makes share at most `[cluster] redis_max_connections`, and readers
that wait (a resumed stream's XREAD BLOCK, the signals subscription) have connections of their own,
so however many clients resume streams at once, requests still get a connection."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from edge.mcp.redis_sessions import RedisSessions, SessionRecord
from tests.helpers import deadline


async def test_waiting_stream_readers_never_starve_the_short_commands_which_stay_within_their_bound(
    redis_server: Any,
) -> None:
    store = RedisSessions(redis_server.url, node="edge 1", ttl_s=60, timeout_s=5, max_connections=2)
    r = aioredis.Redis.from_url(redis_server.url)
    readers: list[asyncio.Task[Any]] = []
    try:
        await store.create(SessionRecord("s1", "who", "127.0.0.1", "2025-06-18", {}, 0), 100, 100)
        number = await store.open_exchange("s1")
        assert number > 0

        async def read() -> Any:
            async for event in store.events("s1", number, 0, wait_s=30):
                return event

        readers = [asyncio.create_task(read()) for _ in range(4)]  # more than the bound, all waiting
        async with deadline(30, "the readers to wait in XREAD BLOCK"):
            while sum(c["cmd"] == "xread" for c in await r.client_list()) < 4:
                pass  # Redis' own view, read again: each CLIENT LIST is a round trip
        async with deadline(30, "40 short commands past the waiting readers"):
            await asyncio.gather(*(store.saw("s1", i) for i in range(40)))
        names = [c["name"] for c in await r.client_list()]
        assert 1 <= names.count("toolscore-edge:edge_1") <= 2, names
        assert names.count("toolscore-edge-wait:edge_1") >= 4, names
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await store.close()
        await r.aclose()

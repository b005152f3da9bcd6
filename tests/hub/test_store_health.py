"""The hub's `toolscore.registry-store` health follows its event follower's problem
(services/hub/app.py `_report_store_health`): a change that comes while the previous status is
being set is not lost."""

from __future__ import annotations

import asyncio
import types

from grpc_health.v1 import health_pb2

from services.hub.app import STORE_HEALTH, Hub
from tests.helpers import deadline


class Feed:
    def __init__(self) -> None:
        self.problem = "Redis is unreachable"
        self.problem_changed = asyncio.Event()


class Health:
    """Records each status; the first set (NOT_SERVING) takes a while, and Redis comes back then."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.seen: list[int] = []
        self.changed = asyncio.Event()

    async def set(self, name: str, status: int) -> None:
        assert name == STORE_HEALTH
        if not self.seen:  # while this status is being set, the follower reaches Redis again
            self.feed.problem = ""
            self.feed.problem_changed.set()
        self.seen.append(status)
        self.changed.set()


async def test_redis_back_while_the_unreachable_status_is_being_set_ends_serving() -> None:
    feed = Feed()
    health = Health(feed)
    hub = types.SimpleNamespace(redis_feed=feed, server=types.SimpleNamespace(health=health))
    task = asyncio.create_task(Hub._report_store_health(hub))  # type: ignore[arg-type]
    try:
        async with deadline(10, "the health to say SERVING"):
            while health.seen[-1:] != [health_pb2.HealthCheckResponse.SERVING]:
                health.changed.clear()
                await health.changed.wait()
        assert health.seen == [
            health_pb2.HealthCheckResponse.NOT_SERVING,
            health_pb2.HealthCheckResponse.SERVING,
        ]
    finally:
        task.cancel()

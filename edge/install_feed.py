"""Install progress for the events WebSocket: the hub's WatchInstalls, one stream per edge, shared.

A subscriber that asks for it (`installs=1`, or `"installs": true` in `subscribe`) gets each step of
every install the edge's hub runs as an `install_progress` message, as it happens: first the latest
step of each install under way, then every new one, the last with state `running` (or `stopped`,
failed, with the reason in `message`). The stream to the hub is opened when the first subscriber
asks (an edge nobody watches this way holds none) and kept until the edge stops, opened again
(after a backoff) when the hub ends it. Steps are not replayed on `?since=`: an install's outcome is
in GET /api/v1/tools/servers, and the answer of POST /mcp/install lists all its steps.

Bounded: each message goes through the subscriber's own outbox like any event; what is kept for
newcomers is one message per install under way, at most `MAX_UNDER_WAY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from toolscore.v1 import discovery_pb2 as pb

from edge.discovery_routes import server_json
from edge.rest import shapes
from services.common.errors import MeshError
from services.discovery.client import DiscoveryClient

log = logging.getLogger(__name__)

MAX_UNDER_WAY = 100
_RETRY_S = (0.5, 10.0)  # first and longest wait before the stream to the hub is opened again
_ENDED = frozenset({pb.SERVER_STATE_RUNNING, pb.SERVER_STATE_STOPPED})


def install_message(item: pb.WatchInstallsResponse) -> dict[str, Any]:
    """One install step as the events WebSocket pushes it."""
    server = server_json(item.server)
    return {
        "type": "install_progress",
        "name": item.server.name,
        "state": server["state"],
        "progress": item.step.progress,
        "message": item.step.message,
        "server": server,
        "timestamp": shapes.iso_time(item.step.time) or shapes.now_iso(),
    }


class InstallFeed:
    """The hub's install steps, each serialized once and handed to `publish` (the events fan-out)."""

    def __init__(self, client: DiscoveryClient, publish: Callable[[str], None]) -> None:
        self._client = client
        self._publish = publish
        self.under_way: dict[str, str] = {}  # install name -> its latest message (for newcomers)
        self.watching = asyncio.Event()  # set while the stream to the hub is in place
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the hub's installs from now on (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="install-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        wait_s = _RETRY_S[0]
        while True:
            try:
                steps = await self._client.watch_installs()
                self.watching.set()
                wait_s = _RETRY_S[0]
                try:
                    async for item in steps:
                        self._step(item)
                finally:
                    await steps.aclose()
            except MeshError as err:
                log.info("install progress from the hub unavailable (%s); retrying", err.reason)
            self.watching.clear()
            self.under_way.clear()  # a new stream starts with the installs under way
            await asyncio.sleep(wait_s)  # a backoff, not a poll: the hub ended the stream
            wait_s = min(wait_s * 2, _RETRY_S[1])

    def _step(self, item: pb.WatchInstallsResponse) -> None:
        text = shapes.dumps(install_message(item))
        name = item.server.name
        if item.server.state in _ENDED:
            self.under_way.pop(name, None)
        elif name in self.under_way or len(self.under_way) < MAX_UNDER_WAY:
            self.under_way[name] = text
        self._publish(text)


INSTALLS = web.AppKey("install_feed", InstallFeed)


def mount(app: web.Application, feed: InstallFeed) -> None:
    """Keep `feed` as app[INSTALLS], stopped with the app (it starts when a subscriber asks)."""
    app[INSTALLS] = feed

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        yield
        await feed.stop()

    app.cleanup_ctx.append(lifetime)

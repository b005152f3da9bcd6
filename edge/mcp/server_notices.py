"""Installed servers' log messages and resource updates, followed from the hub
(ToolScoreService.WatchServerNotifications).

`follow` reads the hub's stream for as long as the edge runs and hands each notice to a callback
(the MCP service's); when the stream breaks it is opened again with a backoff. Each stream is a
watch of its own name, under which the edge's resource subscriptions are held at the hub: `on_watch`
hears the name once the hub has the watch in place, and "" when it ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import grpc
from toolscore.v1 import toolscore_pb2 as ts

log = logging.getLogger(__name__)
OnNotice = Callable[[str, str, dict[str, Any]], None]  # tool id, method, params
OnWatch = Callable[[str], None]  # the open watch's id; "": none is open


async def follow(
    gateway: Any,
    on_notice: OnNotice,
    on_watch: OnWatch | None = None,
    *,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
) -> None:
    """Until cancelled: every notice of the hub's WatchServerNotifications, to `on_notice`."""
    delay = backoff_s
    while True:
        watch_id = secrets.token_hex(12)
        try:
            call = gateway.toolscore.WatchServerNotifications(
                ts.WatchServerNotificationsRequest(watch_id=watch_id)
            )
            await call.initial_metadata()  # sent once the hub has the watch in place
            if on_watch is not None:
                on_watch(watch_id)
            async for item in call:
                delay = backoff_s
                try:
                    params = json.loads(item.params_json)
                except ValueError:
                    continue
                if isinstance(params, dict):
                    on_notice(item.tool_id, item.method, params)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a hub without discovery has nothing to say
                log.info("server notifications: the hub serves none (%s)", exc.details())
                return
            log.debug("server notifications: stream ended (%s); again in %.1fs", exc.code().name, delay)
        finally:
            if on_watch is not None:
                on_watch("")
        await asyncio.sleep(delay)  # a backoff, not a wait for something: the hub gives no signal
        delay = min(delay * 2, max_backoff_s)

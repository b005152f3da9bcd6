"""Installed servers' log messages, followed from the hub (ToolScoreService.WatchServerNotifications).

`follow` reads the hub's stream for as long as the edge runs and hands each notice to a callback
(the dispatcher's `server_log`); when the stream breaks it is opened again with a backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc
from toolscore.v1 import toolscore_pb2 as ts

log = logging.getLogger(__name__)
OnNotice = Callable[[str, str, dict[str, Any]], None]  # tool id, method, params


async def follow(
    gateway: Any, on_notice: OnNotice, *, backoff_s: float = 0.5, max_backoff_s: float = 10.0
) -> None:
    """Until cancelled: every notice of the hub's WatchServerNotifications, to `on_notice`."""
    delay = backoff_s
    while True:
        try:
            call = gateway.toolscore.WatchServerNotifications(ts.WatchServerNotificationsRequest())
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
        await asyncio.sleep(delay)  # a backoff, not a wait for something: the hub gives no signal
        delay = min(delay * 2, max_backoff_s)

"""MCP over WebSocket at `/ws/mcp`: subprotocol `mcp`, one JSON-RPC message per text frame.

One connection is one session, locked to the era its first request opens
(`initialize`, or a 2026-07-28 enveloped request). Requests run concurrently;
`notifications/cancelled` cancels one; closing the connection cancels them
all. A frame over `max_frame_bytes` closes the connection with 1009.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ._protocol import (
    INVALID_REQUEST,
    NOTIFICATION,
    REQUEST,
    Message,
    ProtocolError,
    decode,
    encode,
    error_response,
)
from .dispatcher import Session
from .service import McpService

log = logging.getLogger(__name__)


class _Outbox:
    """Frames to one client, in order, by one writer task; responses skip the queue when it is idle."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: collections.deque[str | None] = collections.deque()
        self._wake = asyncio.Event()
        self._busy = False

    def push(self, msg: dict[str, Any]) -> None:
        self._queue.append(encode(msg))
        self._wake.set()

    async def send(self, msg: dict[str, Any]) -> None:
        if self._queue or self._busy:
            self.push(msg)
            return
        await self._ws.send_str(encode(msg))

    def close(self) -> None:
        self._queue.append(None)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                data = self._queue.popleft()
                if data is None:
                    return
                self._busy = True
                try:
                    await self._ws.send_str(data)
                finally:
                    self._busy = False


class McpWebSocket:
    """The `/ws/mcp` endpoint."""

    def __init__(self, svc: McpService) -> None:
        self.svc = svc
        self.d = svc.dispatcher
        self.open: set[web.WebSocketResponse] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refused = self.svc.guard.refusal(request.headers)
        if refused is not None:
            return web.json_response(
                error_response(None, INVALID_REQUEST, f"Forbidden: {refused.message}"), status=403
            )
        ws = web.WebSocketResponse(
            protocols=("mcp",), max_msg_size=self.svc.opts.max_frame_bytes, compress=False, heartbeat=30.0
        )
        await ws.prepare(request)
        out = _Outbox(ws)
        session = Session(id=secrets.token_hex(8), transport="ws", push=out.push)
        tasks: set[asyncio.Task[None]] = set()
        self.open.add(ws)
        log.info("MCP WebSocket %s opened", session.id)
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self._write(out))
            try:
                async for frame in ws:
                    if frame.type == WSMsgType.TEXT:
                        self._on_text(frame.data, session, out, tasks)
                    elif frame.type == WSMsgType.BINARY:
                        out.push(
                            error_response(
                                None,
                                INVALID_REQUEST,
                                "binary frames are not supported: send one JSON-RPC message per text frame",
                            )
                        )
                    elif frame.type == WSMsgType.ERROR:
                        log.info("MCP WebSocket %s: %s", session.id, ws.exception())
                        break
            finally:
                self.open.discard(ws)
                self.d.forget(session)
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                out.close()
        del writer
        log.info("MCP WebSocket %s closed (code %s)", session.id, ws.close_code)
        return ws

    async def _write(self, out: _Outbox) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await out.run()

    def _on_text(self, data: str, session: Session, out: _Outbox, tasks: set[asyncio.Task[None]]) -> None:
        try:
            msg = decode(data)
        except ProtocolError as exc:
            out.push(exc.response(None))
            return
        if msg.kind == REQUEST:
            task = asyncio.get_running_loop().create_task(self._run(msg, session, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif msg.kind == NOTIFICATION:
            self.d.notification(msg, session)

    async def _run(self, msg: Message, session: Session, out: _Outbox) -> None:
        resp = await self.d.request(msg, session, out.push)
        if resp is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await out.send(resp)

    async def close(self) -> None:
        """Shutting down: close every connection with 1001 (going away)."""
        for ws in list(self.open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

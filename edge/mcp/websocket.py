"""MCP over WebSocket at `/ws/mcp` (and `/ws/mcp/servers/<name>`, a virtual server: edge/mcp/views.py):
subprotocol `mcp`, one JSON-RPC message per text frame.

One connection is one session, locked to the era its first request opens
(`initialize`, or a 2026-07-28 enveloped request). Requests run concurrently,
at most `max_in_flight` of them (more get -32029 at once); `notifications/cancelled`
cancels one; closing the connection cancels them all. Replies go through the
connection's bounded outbox (edge.outbox): a client that does not read what it
asked for is closed with 1013. A frame over `max_frame_bytes` closes it with 1009.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import WSCloseCode, WSMsgType, web

from edge.outbox import Outbox

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
from .http import VIEW
from .mcp_service import McpService

log = logging.getLogger(__name__)


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
        out = Outbox(ws, self.svc.opts.outbox, transport=request.transport, stats=self.svc.stats.ws)
        view = request.get(VIEW, self.svc.views.main)  # the virtual server's, else `/mcp`'s
        session = Session(
            id=secrets.token_hex(8), transport="ws", push=lambda msg: out.push(encode(msg)), view=view
        )
        tasks: set[asyncio.Task[None]] = set()
        self.open.add(ws)
        log.info("MCP WebSocket %s opened", session.id)
        try:
            async for frame in ws:
                if out.overflowed:  # closing it as a slow reader: nothing more is served
                    continue
                if frame.type == WSMsgType.TEXT:
                    self._on_text(frame.data, session, out, tasks)
                elif frame.type == WSMsgType.BINARY:
                    out.push(
                        encode(
                            error_response(
                                None,
                                INVALID_REQUEST,
                                "binary frames are not supported: send one JSON-RPC message per text frame",
                            )
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
            await out.stop()
        log.info("MCP WebSocket %s closed (code %s)", session.id, ws.close_code)
        return ws

    def _on_text(self, data: str, session: Session, out: Outbox, tasks: set[asyncio.Task[None]]) -> None:
        try:
            msg = decode(data)
        except ProtocolError as exc:
            out.push(encode(exc.response(None)))
            return
        if msg.kind == REQUEST:
            if len(tasks) >= self.svc.opts.max_in_flight:
                out.push(encode(self.svc.refuse_busy(msg.id, "connection")))
                return
            task = asyncio.get_running_loop().create_task(self._run(msg, session, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif msg.kind == NOTIFICATION:
            self.d.notification(msg, session)
        else:  # a response to a request the edge sent (edge/mcp/client_requests.py)
            self.d.response(msg, session)

    async def _run(self, msg: Message, session: Session, out: Outbox) -> None:
        resp = await self.d.request(msg, session, session.push)
        if resp is not None:
            out.push(encode(resp))

    async def close(self) -> None:
        """Shutting down: close every connection with 1001 (going away)."""
        for ws in list(self.open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

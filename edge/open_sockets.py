"""The edge's open WebSockets, closed with 1001 (GOING_AWAY) when the edge stops.

    sockets = open_sockets.mount(app)   # app[OPEN_SOCKETS]; handlers add and discard their socket

The one lifetime hook of the edge that is not a `cleanup_ctx`, and why: aiohttp leaves a
cleanup context only after it has waited (up to the runner's shutdown_timeout) for every
handler to return, and a WebSocket handler returns when its socket closes. Closing them in
`on_shutdown`, which runs before that wait, is what aiohttp documents for this
(docs/web_advanced.rst, "Graceful shutdown"); a cleanup context would close them only after
the wait had cancelled their handlers, so clients would see the connection drop (1006), late.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, web


class OpenSockets:
    """The WebSockets open on the app, to close them all at shutdown."""

    def __init__(self) -> None:
        self._open: set[web.WebSocketResponse] = set()

    def add(self, ws: web.WebSocketResponse) -> None:
        self._open.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        self._open.discard(ws)

    def __len__(self) -> int:
        return len(self._open)

    async def close_all(self) -> None:
        """Close every open socket with GOING_AWAY, at once."""
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"edge shutting down")
                for ws in list(self._open)
            ),
            return_exceptions=True,
        )


OPEN_SOCKETS = web.AppKey("open_sockets", OpenSockets)


def mount(app: web.Application) -> OpenSockets:
    """Keep `app`'s open WebSockets, and close them when it shuts down (before handlers are awaited)."""
    sockets = app[OPEN_SOCKETS] = OpenSockets()

    async def going_away(_app: web.Application) -> None:
        await sockets.close_all()

    app.on_shutdown.append(going_away)
    return sockets

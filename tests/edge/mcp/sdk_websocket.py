"""A WebSocket transport for the official SDK's `mcp.Client` (the SDK has none): `/ws/mcp` spoken
by the SDK's own session, in either era (`Client(websocket_transport(url), mode=...)`).

One JSON-RPC message per text frame, the `mcp` subprotocol, as edge/mcp/websocket.py serves it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import mcp_types as types
import websockets
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


@contextlib.asynccontextmanager
async def websocket_transport(url: str, open_timeout_s: float = 5.0) -> AsyncIterator[Streams]:
    """The (read, write) streams of an `mcp.Client` over a WebSocket to `url`."""
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    async with websockets.connect(
        url, subprotocols=["mcp"], open_timeout=open_timeout_s, close_timeout=2
    ) as ws:  # type: ignore[list-item]

        async def reader() -> None:
            async with read_send:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for frame in ws:
                        message = types.jsonrpc_message_adapter.validate_json(frame, by_name=False)
                        await read_send.send(SessionMessage(message))

        async def writer() -> None:
            async with write_recv:
                async for m in write_recv:
                    await ws.send(m.message.model_dump_json(by_alias=True, exclude_unset=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            try:
                yield read_recv, write_send
            finally:
                tg.cancel_scope.cancel()

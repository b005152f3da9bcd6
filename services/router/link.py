"""Calls run by another process's router over its ExecuteStream: the edge's relay to its hub, and
a hub's forward to the hub of the node that holds a tool (services.router.forward).

The hub serves ToolExecutorService for every tool its router can run (services/hub/servicer.py).
Its ExecuteStream carries many callers' calls, so a call's authority cannot ride on the call: the
stream's metadata is it, read by the hub once per stream. A link therefore keeps one stream per
authority it carries, two at most, each opened on first use and bounded as a tool server's stream
is (channels.Mux): `plain`, with no rights beyond anyone's, and `admin`, for calls whose caller
proved admin rights here. A call goes on the admin stream only when its caller has those rights,
so no call runs with more authority than its caller's (and a plain one never with less). Progress
and cancellation ride the stream: a caller that goes away sends CancelCall, which cancels the call
in the other router and whatever it runs (an MCP server's request). A router that does not serve
ExecuteStream (UNIMPLEMENTED: an older hub) is called with unary ExecuteTool and the same metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from toolscore.v1 import executor_pb2 as ex

from services.router.channels import Mux, ProgressFn, UnsupportedStream

log = logging.getLogger(__name__)

EXECUTE_TOOL = "/toolscore.v1.ToolScoreService/ExecuteTool"
Metadata = Sequence[tuple[str, str]]


class RouterLink:
    """The streams to one router (a hub) at `target` over `channel`, one per authority.

    `plain`: the metadata every call carries; `admin`: what a call whose caller has admin rights
    carries instead (the same as `plain` when this process has no admin proof: then one stream).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        target: str,
        max_message_bytes: int,
        *,
        plain: Metadata = (),
        admin: Metadata = (),
    ) -> None:
        self._metadata = (tuple(plain), tuple(admin))
        first = Mux(channel, target, max_message_bytes, plain)
        second = (
            first
            if self._metadata[1] == self._metadata[0]
            else Mux(channel, target, max_message_bytes, admin)
        )
        self._streams = (first, second)
        self._target = target
        self._unary = channel.unary_unary(
            EXECUTE_TOOL,
            request_serializer=ex.ExecuteRequest.SerializeToString,
            response_deserializer=ex.ExecuteResponse.FromString,
        )

    async def call(
        self, request: ex.ExecuteRequest, timeout_s: float, admin: bool, on_progress: ProgressFn | None = None
    ) -> ex.ExecuteResponse:
        """`request` run by the router at the other end, on the stream of the caller's authority
        (`admin`: the caller proved admin rights), answered within `timeout_s`.

        The other router's protocol fault raises as the MeshError it sent (its CallFault); the
        stream failing raises channels.StreamBroken; no answer in time DeadlineExceeded
        (TOOL_TIMEOUT). Against a router without ExecuteStream, grpc.aio.AioRpcError as unary
        ExecuteTool raises it."""
        mux = self._streams[admin]
        if not mux.unsupported:
            try:
                return await mux.call(request, timeout_s, on_progress)
            except UnsupportedStream:
                log.info("%s has no ExecuteStream; relaying with unary ExecuteTool", self._target)
        response: ex.ExecuteResponse = await self._unary(
            request, timeout=timeout_s, metadata=self._metadata[admin]
        )
        return response

    async def close(self) -> None:
        """End the streams (the channel is the owner's to close)."""
        for mux in dict.fromkeys(self._streams):
            await mux.close()

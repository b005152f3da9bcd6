"""Calls forwarded to the node that holds a tool, over the mesh's own gRPC: exactly one hop.

A hub that gets a call for a tool only another node reaches (docs/cluster.md) sends it to that
node's hub over its `ToolExecutorService.ExecuteStream` (a services.router.link.RouterLink: calls
multiplexed on a long-lived stream, with progress and cancellation), at the address the node
announced (`NodeAddresses`). The stream's metadata carries `toolscore-forwarded-from: <node>`,
so the receiving hub serves its calls only with what it holds itself (never a second hop); and
the caller's authority as the edge carries it to a hub: a call whose caller proved admin rights
goes on a second stream that also carries the admin token (every node of a cluster shares it).
Whether a call was sent decides whether another replica may take it: a node whose channel is not
connected never got it (`NotSent`); a failure after it was sent is the call's answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc
from toolscore.v1 import executor_pb2 as ex

from services.common.errors import DeadlineExceeded, MeshError, Unavailable, from_rpc_error
from services.router.channels import ProgressFn, StreamBroken, channel_options
from services.router.link import RouterLink

log = logging.getLogger(__name__)

FORWARDED_KEY = "toolscore-forwarded-from"
# How a node answers a forwarded call that none of its replicas could be sent to (UNAVAILABLE):
# the call never reached a tool, so the forwarding node may give it to another replica.
NOT_SENT_REASON = "REPLICA_UNREACHABLE"
# Set (by the hub's servicer) for a call another node forwarded here: served here or not at all.
forwarded: contextvars.ContextVar[str] = contextvars.ContextVar("toolscore_forwarded_from", default="")


class NodeAddresses(Protocol):
    """A node's advertised gRPC address, or "" when it is not announced
    (services/library/redis_nodes.py); `fresh`: read now, not from what was read lately."""

    def __call__(self, node: str, fresh: bool = False) -> Awaitable[str]: ...


# How a router reaches the node that holds a tool: (node, request, timeout, caller is admin, progress
# callback) -> the answer; NotSent when the call could not be sent. A hub's is a Forwarder; an
# edge's relays to its hub.
Forward = Callable[[str, ex.ExecuteRequest, float, bool, ProgressFn | None], Awaitable[ex.ExecuteResponse]]
_READY = grpc.ChannelConnectivity.READY
_DOWN = frozenset({grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN})
_TRANSPORT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class NotSent(Exception):
    """The call never left this process (the target's channel is not connected): another replica
    may take it. `error` is what the caller hears when none can."""

    def __init__(self, error: MeshError) -> None:
        super().__init__(error.message)
        self.error = error


async def connected(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """Whether `channel` is (or gets, within `timeout_s`) connected; False as soon as connecting
    failed (refused, no such socket), without waiting for the next attempt."""
    state = channel.get_state(try_to_connect=True)
    if state is _READY:  # the common case: no timer
        return True
    try:
        async with asyncio.timeout(timeout_s):
            while state is not _READY:
                if state in _DOWN:
                    return False
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        return False
    return True


class Forwarder:
    """One channel per node's hub, its calls on a RouterLink; `await forwarder(node, request,
    timeout, admin, on_progress)` runs a call there."""

    def __init__(
        self,
        node: str,
        addresses: NodeAddresses,
        *,
        admin_token: str = "",
        max_message_bytes: int = 4 * 1024 * 1024,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.node = node
        self._addresses = addresses
        self._plain: Sequence[tuple[str, str]] = ((FORWARDED_KEY, node),)
        self._admin = (*self._plain, ("authorization", f"Bearer {admin_token}")) if admin_token else ()
        self._max = max_message_bytes
        self._connect_timeout = connect_timeout_s
        # address -> its channel and the link over it; bounded by the nodes' addresses
        self._channels: dict[str, tuple[grpc.aio.Channel, RouterLink]] = {}

    async def __call__(
        self,
        node: str,
        request: ex.ExecuteRequest,
        timeout_s: float,
        admin: bool,
        on_progress: ProgressFn | None = None,
    ) -> ex.ExecuteResponse:
        """`request` run on `node`'s hub (its progress to `on_progress`). NotSent when it could not
        be sent; tool-side failures after it was (the node went away mid-call, no answer in time)
        as the router judges them."""
        link = await self._link(node, request, timeout_s)
        try:
            return await link.call(request, timeout_s + 0.5, admin and bool(self._admin), on_progress)
        except StreamBroken as exc:  # the hop broke after the call was written
            raise _unavailable(
                node, request, f"the call was sent and the connection failed: {exc.message}"
            ) from None
        except MeshError as err:  # the other hub's own fault, as it sent it
            if err.reason == NOT_SENT_REASON:
                raise NotSent(_unavailable(node, request, err.message)) from None
            raise
        except grpc.aio.AioRpcError as exc:  # a hub without ExecuteStream, called with unary ExecuteTool
            raise _after_send(exc, node, request, timeout_s) from None

    async def _link(self, node: str, request: ex.ExecuteRequest, timeout_s: float) -> RouterLink:
        """The link to `node`'s hub, connected; NotSent when there is none. The address known is
        read again when it does not answer (or there was none), so a node restarted on another
        address is reached at once, not when the address known expires; the channel to the old
        address is closed then."""
        wait = min(timeout_s, self._connect_timeout)
        address = await self._addresses(node)
        if address:
            channel, link = self._channel(address)
            if await connected(channel, wait):
                return link
        moved = await self._addresses(node, fresh=True)
        if not moved:
            raise NotSent(_unavailable(node, request, "it is not announced (down, or never started)"))
        if moved != address:
            await self._retire(address)
            channel, link = self._channel(moved)
            if await connected(channel, wait):
                return link
        raise NotSent(_unavailable(node, request, f"its hub at {moved} does not answer"))

    async def _retire(self, address: str) -> None:
        """Close the channel to an address its node no longer announces."""
        known = self._channels.pop(address, None)
        if known is not None:
            await known[1].close()
            await known[0].close()

    def _channel(self, address: str) -> tuple[grpc.aio.Channel, RouterLink]:
        known = self._channels.get(address)
        if known is None:
            channel = grpc.aio.insecure_channel(
                address, options=channel_options(self._max, address.startswith("unix:"))
            )
            link = RouterLink(
                channel, address, self._max, plain=self._plain, admin=self._admin or self._plain
            )
            known = self._channels[address] = (channel, link)
        return known

    async def close(self) -> None:
        """End every node's streams and close its channel."""
        channels, self._channels = list(self._channels.values()), {}
        for channel, link in channels:
            await link.close()
            await channel.close()


def _unavailable(node: str, request: ex.ExecuteRequest, why: str) -> Unavailable:
    return Unavailable(
        f"node {node!r}, which holds tool {request.tool_id!r}, is unreachable: {why}",
        reason="TOOL_SERVER_UNAVAILABLE",
        metadata={"tool_id": request.tool_id, "node_id": node},
    )


def _after_send(
    exc: grpc.aio.AioRpcError, node: str, request: ex.ExecuteRequest, timeout_s: float
) -> MeshError | NotSent:
    """A forwarded call's RPC failure: the other hub's own error as it sent it (NotSent when it
    could send the call to none of its replicas); its transport failing mid-call as the tool's
    server going away; no answer in time as the tool's timeout."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"tool did not answer within {timeout_s:.3g}s",
            reason="TOOL_TIMEOUT",
            metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout_s:.3g}"},
        )
    err = from_rpc_error(exc)
    if err.reason == NOT_SENT_REASON:
        return NotSent(_unavailable(node, request, err.message))
    if code in _TRANSPORT and err.reason == code.name:  # no ErrorInfo: the hop broke, not the hub's answer
        return _unavailable(node, request, f"the call was sent and the connection failed: {exc.details()}")
    return err

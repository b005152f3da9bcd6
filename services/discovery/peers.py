"""An install or uninstall asked of every other hub node of a cluster, each outcome reported.

The hub an install went through runs it itself, records it in the installed set
(installed_set.py), then asks every other node announced now (services/library/redis_nodes.py)
to do the same: `InstallServer` (or `UninstallServer`) on its hub at its advertised address,
with `toolscore-forwarded-from: <this node>` (the node does it on itself only: no second
fan-out, no write to the set) and the admin token (every node of a cluster has the same one).
The nodes are asked at once, each under its own deadline; each answers a `NodeOutcome`, a
failure included (it is the node's, reported, never the caller's whole install failing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2_grpc

from services.common.errors import MeshError, from_rpc_error
from services.router.channels import channel_options
from services.router.forward import FORWARDED_KEY

# The other nodes announced now: node id -> advertised address (NodeDirectory.nodes).
NodeList = Callable[[], Awaitable[dict[str, str]]]


class Peers:
    """This node's way to the other hub nodes' discovery RPCs; one channel per address announced
    (a channel to an address no node announces any more is closed at the next fan-out)."""

    def __init__(
        self,
        node: str,
        nodes: NodeList,
        *,
        admin_token: str = "",
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.node = node
        self._nodes = nodes
        auth = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        self._metadata = ((FORWARDED_KEY, node), *auth)
        self._max = max_message_bytes
        self._stubs: dict[str, tuple[grpc.aio.Channel, toolscore_pb2_grpc.ToolScoreServiceStub]] = {}

    async def alive(self) -> set[str]:
        """Every node announced now, this one included."""
        return set(await self._nodes())

    async def install(
        self, request: pb.InstallServerRequest, timeout_s: float, limit: int | None = None
    ) -> list[pb.NodeOutcome]:
        """`request` run on every other node (the first `limit` by node id); one outcome each."""
        return await self._each(lambda stub: stub.InstallServer, request, timeout_s, (), limit)

    async def uninstall(self, request: pb.UninstallServerRequest, timeout_s: float) -> list[pb.NodeOutcome]:
        """`request` run on every other node; a node that did not have it is ok."""
        return await self._each(
            lambda stub: stub.UninstallServer, request, timeout_s, ("SERVER_NOT_INSTALLED",)
        )

    async def _each(
        self,
        method: Callable[[toolscore_pb2_grpc.ToolScoreServiceStub], Any],
        request: Message,
        timeout_s: float,
        ok_reasons: tuple[str, ...],
        limit: int | None = None,
    ) -> list[pb.NodeOutcome]:
        announced = await self._nodes()
        await self._retire(set(announced.values()))
        others = dict(sorted((n, a) for n, a in announced.items() if n != self.node)[:limit])

        async def one(node: str, address: str) -> pb.NodeOutcome:
            try:
                await method(self._stub(address))(request, timeout=timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc)
                if err.reason in ok_reasons:
                    return pb.NodeOutcome(node_id=node, ok=True)
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
                    err.reason == exc.code().name  # no ErrorInfo: the node's hub did not answer
                ):
                    err = MeshError(f"node {node} at {address}: {exc.details()}", reason="NODE_UNREACHABLE")
                return pb.NodeOutcome(node_id=node, error_reason=err.reason, error_message=err.message)
            return pb.NodeOutcome(node_id=node, ok=True)

        outcomes = await asyncio.gather(*(one(n, a) for n, a in sorted(others.items())))
        return list(outcomes)

    def _stub(self, address: str) -> toolscore_pb2_grpc.ToolScoreServiceStub:
        known = self._stubs.get(address)
        if known is None:
            channel = grpc.aio.insecure_channel(
                address, options=channel_options(self._max, address.startswith("unix:"))
            )
            known = self._stubs[address] = (channel, toolscore_pb2_grpc.ToolScoreServiceStub(channel))
        return known[1]

    async def _retire(self, announced: set[str]) -> None:
        """Close the channels to addresses no node announces now (a node restarted elsewhere, or
        gone); a call still on one was to a node no longer there."""
        for address in [a for a in self._stubs if a not in announced]:
            channel, _ = self._stubs.pop(address)
            await channel.close()

    async def close(self) -> None:
        """Close every node's channel."""
        stubs, self._stubs = list(self._stubs.values()), {}
        for channel, _ in stubs:
            await channel.close()

"""The install fan-out's channels to other nodes (services/discovery/peers.py): one per address a
node announces now, so a cluster whose hubs restart on new ports does not pile up channels."""

from __future__ import annotations

from typing import Any

import grpc
from toolscore.v1 import discovery_pb2 as pb

from services.discovery.peers import Peers


class Answering(grpc.GenericRpcHandler):
    """Any method: a node that answers UninstallServer as not installed (ok for the fan-out)."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, details: Any) -> Any:
        async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls += 1
            await context.abort(grpc.StatusCode.NOT_FOUND, "not installed here")

        return grpc.unary_unary_rpc_method_handler(answer)


async def started(handler: Answering) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_the_channel_to_an_address_no_node_announces_any_more_is_closed_at_the_next_fan_out() -> None:
    old, new = Answering(), Answering()
    (s1, a1), (s2, a2) = await started(old), await started(new)
    announced = {"me": "unix:/nowhere", "other": a1}

    async def nodes() -> dict[str, str]:
        return dict(announced)

    peers = Peers("me", nodes)
    try:
        request = pb.UninstallServerRequest(name="x")
        first = await peers.uninstall(request, timeout_s=5)
        assert [o.node_id for o in first] == ["other"] and old.calls == 1
        kept = peers._stubs[a1][0]
        announced["other"] = a2  # the node restarted on another port
        again = await peers.uninstall(request, timeout_s=5)
        assert [o.node_id for o in again] == ["other"] and (old.calls, new.calls) == (1, 1)
        assert list(peers._stubs) == [a2]
        assert kept.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    finally:
        await peers.close()
        await s1.stop(None)
        await s2.stop(None)

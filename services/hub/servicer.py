"""ToolScoreService: ExecuteTool through the router.

ExecuteTool is registered by hand with ExecuteRequest/ExecuteResponse
(de)serializers: the messages are wire-compatible with ExecuteToolRequest and
ExecuteToolResponse, so the hub forwards what it parsed without converting.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import toolscore_pb2  # loads the service descriptor for reflection

from services.common import authority
from services.router.forward import FORWARDED_KEY, forwarded
from services.router.router import Router

SERVICE = toolscore_pb2.DESCRIPTOR.services_by_name["ToolScoreService"].full_name


class ToolScoreServicer:
    """`is_admin` decides whether a caller has admin rights (asked only for `requires_admin` actions).
    `cluster`: calls may come forwarded from another node (`toolscore-forwarded-from`), which the
    router then serves only with this node's replicas."""

    def __init__(
        self,
        router: Router,
        extra: dict[str, grpc.RpcMethodHandler] | None = None,
        *,
        is_admin: Callable[[grpc.aio.ServicerContext], bool],
        cluster: bool = False,
    ) -> None:
        self._cluster = cluster
        self.router = router
        self.extra = extra or {}  # more ToolScoreService methods (the discovery RPCs)
        self._is_admin = is_admin

    async def ExecuteTool(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        # Bytes that do not parse (arguments nested past protobuf's limit) never get here: every
        # mesh server answers them INVALID_ARGUMENT (grpc_server, UNPARSEABLE_REQUEST).
        token = authority.act_as(lambda: self._is_admin(context))
        hop = forwarded.set(_forwarded_from(context)) if self._cluster else None
        try:
            return await self.router.execute(request, deadline_s=context.time_remaining())
        finally:
            if hop is not None:
                forwarded.reset(hop)
            authority.reset(token)


def _forwarded_from(context: grpc.aio.ServicerContext) -> str:
    """The node that forwarded this call here, or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == FORWARDED_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def add_to_server(servicer: ToolScoreServicer, server: grpc.aio.Server) -> None:
    handlers = {
        "ExecuteTool": grpc.unary_unary_rpc_method_handler(
            servicer.ExecuteTool,
            request_deserializer=ex.ExecuteRequest.FromString,
            response_serializer=ex.ExecuteResponse.SerializeToString,
        ),
        **servicer.extra,
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)

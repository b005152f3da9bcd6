"""The hub's call services: ToolScoreService's ExecuteTool, and ToolExecutorService for every tool
the router can run, both through the router.

ExecuteTool is registered by hand with ExecuteRequest/ExecuteResponse
(de)serializers: the messages are wire-compatible with ExecuteToolRequest and
ExecuteToolResponse, so the hub forwards what it parsed without converting.

ToolExecutorService's ExecuteStream (`CallExecutor`) is how the edge relays, and another hub
forwards, calls to this hub (services.router.link): many calls over one stream, each with its
progress, cancelled by CancelCall (which cancels what the router runs for it, such as an MCP
server's request). The stream's metadata is the authority of every call on it, decided as
ExecuteTool decides a call's: admin rights from the admin token (asked only by a `requires_admin`
action), and `toolscore-forwarded-from`. A call's protocol fault answers it as a CallFault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import toolscore_pb2  # loads the service descriptor for reflection

from services.common import authority
from services.common.streams import DEFAULT_MAX_MESSAGE_BYTES
from services.router.channels import ProgressFn
from services.router.forward import FORWARDED_KEY, forwarded
from services.router.router import Router
from services.toolkit.server import CallStream, OpenStreams

SERVICE = toolscore_pb2.DESCRIPTOR.services_by_name["ToolScoreService"].full_name


class CallExecutor:
    """ToolExecutorService over the router: Execute (also ToolScoreService's ExecuteTool) and
    ExecuteStream. Serve it with `streams.add_tool_executor` (requests on the stream read
    leniently). `is_admin` decides whether a caller has admin rights (asked only for
    `requires_admin` actions); `cluster`: calls may come forwarded from another node
    (`toolscore-forwarded-from`), which the router then serves only with this node's replicas."""

    def __init__(
        self,
        router: Router,
        *,
        is_admin: Callable[[grpc.aio.ServicerContext], bool],
        cluster: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._router = router
        self._is_admin = is_admin
        self._cluster = cluster
        self._max = max_message_bytes
        self._streams = OpenStreams()
        self.drain = self._streams.drain

    async def Execute(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        # Bytes that do not parse (arguments nested past protobuf's limit) never get here: every
        # mesh server answers them INVALID_ARGUMENT (grpc_server, UNPARSEABLE_REQUEST).
        token = authority.act_as(lambda: self._is_admin(context))
        hop = forwarded.set(_forwarded_from(context)) if self._cluster else None
        try:
            return await self._router.execute(request, deadline_s=context.time_remaining())
        finally:
            if hop is not None:
                forwarded.reset(hop)
            authority.reset(token)

    async def ExecuteStream(
        self, requests: AsyncIterator[ex.ExecuteStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        # Set once, here: the stream's reader task copies this context, and each call's task the
        # reader's, so every call on the stream runs with the stream's authority at no cost per call.
        token = authority.act_as(lambda: self._is_admin(context))
        hop = forwarded.set(_forwarded_from(context)) if self._cluster else None
        try:
            await self._streams.serve(CallStream(context, self._run, self._max), requests)
        finally:
            if hop is not None:
                forwarded.reset(hop)
            authority.reset(token)

    async def _run(self, request: ex.ExecuteRequest, progress: ProgressFn) -> ex.ExecuteResponse:
        """One call on a stream, its timeout the request's (the router's default when unset). Its
        cancellation (CancelCall, the stream ending) and protocol faults CallStream answers."""
        return await self._router.execute(request, on_progress=progress)


class ToolScoreServicer:
    """ToolScoreService: ExecuteTool is `calls.Execute` (one implementation for both services),
    plus the RPCs it is given (`extra`: discovery's)."""

    def __init__(self, calls: CallExecutor, extra: dict[str, grpc.RpcMethodHandler] | None = None) -> None:
        self.ExecuteTool = calls.Execute
        self.extra = extra or {}  # more ToolScoreService methods (the discovery RPCs)


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

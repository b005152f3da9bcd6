"""ToolServer: implements ToolExecutorService (Execute and ExecuteStream) over plain async actions.

An action is `async def action(arguments: dict, ctx: CallContext) -> ExecuteResponse | dict | str`.
A raised exception becomes an is_error result (ERROR_TYPE_TOOL_ERROR); only
protocol faults (unknown tool or action) are RPC errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_pb2

from services.common.contract import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import InvalidRequest, NotFound, Unauthenticated
from services.common.jsonvalue import dict_to_struct, struct_to_dict
from services.common.results import text_result, to_response
from services.toolkit.stream import CallStream, Progress

log = logging.getLogger(__name__)
SERVICE = "toolscore.v1.ToolExecutorService"


@dataclass
class CallContext:
    """What an action knows about its call."""

    tool_id: str
    action: str
    timeout_s: float
    session_id: str
    request_id: str
    progress: Callable[[float, float, str], None] = field(default=lambda p, t, m: None)


ActionFn = Callable[[dict[str, Any], CallContext], Awaitable[Any]]
# Whether a gRPC caller has admin rights, from its call's metadata (grpc_server.admin_check).
AdminCheck = Callable[[grpc.aio.ServicerContext], bool]


@dataclass(frozen=True)
class Action:
    """One capability and the coroutine that serves it."""

    name: str
    description: str
    fn: ActionFn
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] | None = None
    # Only callers with admin rights may call it: declared in the capability (the hub and the edge
    # refuse others) and checked by the server itself against a direct caller (`admin_check`).
    requires_admin: bool = False

    def capability(self) -> tool_pb2.Capability:
        cap = tool_pb2.Capability(
            name=self.name,
            description=self.description,
            input_schema=dict_to_struct(self.input_schema),
            requires_admin=self.requires_admin,
        )
        if self.output_schema:
            cap.output_schema.CopyFrom(dict_to_struct(self.output_schema))
        return cap


class ToolServer(ex_grpc.ToolExecutorServiceServicer):
    """Serves actions of one or more tools. Serve it with `contract.add_tool_executor`, which reads
    ExecuteStream leniently (one unreadable call never ends the stream)."""

    # The server's gRPC message limit: an answer over it fails its call alone, not the stream.
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, tools: dict[str, list[Action]], *, admin_check: AdminCheck | None = None) -> None:
        """`admin_check`: how gRPC callers prove admin rights for `requires_admin` actions (None: open)."""
        self._actions = {tid: {a.name: a for a in actions} for tid, actions in tools.items()}
        self._admin_check = admin_check
        self._streams: set[CallStream] = set()
        self._draining = False

    async def drain(self) -> None:
        """Stop taking calls on streams; each stream ends once its running calls have answered."""
        self._draining = True
        for stream in self._streams:
            stream.close()

    def caller_check(self, context: grpc.aio.ServicerContext) -> Callable[[], bool] | None:
        """For `call`: whether this gRPC caller may run admin-only actions, decided only if one asks."""
        check = self._admin_check
        return None if check is None else (lambda: check(context))

    async def call(
        self,
        request: ex.ExecuteRequest,
        progress: Callable[[float, float, str], None] | None = None,
        *,
        caller_is_admin: Callable[[], bool] | None = None,
    ) -> ex.ExecuteResponse:
        """Run one call in this process (also the in-process fast path, whose router already
        checked the caller's rights: `caller_is_admin` None). gRPC callers pass `caller_check`."""
        actions = self._actions.get(request.tool_id)
        if actions is None:
            raise NotFound(f"this server does not host tool {request.tool_id!r}", reason="TOOL_NOT_FOUND")
        action = actions.get(request.action)
        if action is None:
            raise InvalidRequest(
                f"tool {request.tool_id!r} has no action {request.action!r}", reason="UNKNOWN_ACTION"
            )
        if action.requires_admin and caller_is_admin is not None and not caller_is_admin():
            raise Unauthenticated(
                f"{request.action} needs the admin token (authorization: Bearer <token>)",
                reason="ADMIN_TOKEN_REQUIRED",
                metadata={"tool_id": request.tool_id, "action": request.action},
            )
        timeout = request.timeout.seconds + request.timeout.nanos / 1e9
        ctx = CallContext(request.tool_id, request.action, timeout, request.session_id, request.request_id)
        if progress is not None:
            ctx.progress = progress
        try:
            return to_response(await action.fn(struct_to_dict(request.arguments), ctx))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("action %s/%s failed: %s", request.tool_id, request.action, exc)
            return text_result(f"{type(exc).__name__}: {exc}", is_error=True)

    async def Execute(
        self, request: ex.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> ex.ExecuteResponse:
        return await self.call(request, caller_is_admin=self.caller_check(context))

    async def ExecuteStream(
        self, requests: AsyncIterator[ex.ExecuteStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        caller = self.caller_check(context)  # the stream's metadata speaks for every call on it

        async def run_call(request: ex.ExecuteRequest, progress: Progress) -> ex.ExecuteResponse:
            def report(p: float, total: float, message: str) -> None:
                progress(ex.Progress(progress=p, total=total, message=message))

            try:
                return await self.call(request, report, caller_is_admin=caller)
            except asyncio.CancelledError:
                return text_result("call cancelled by the caller", is_error=True)
            except Exception as exc:  # protocol faults travel as error results on the stream
                return text_result(str(exc), is_error=True, error_type=tool_pb2.ERROR_TYPE_INVALID_INPUT)

        stream = CallStream(context, run_call, self.max_message_bytes)
        self._streams.add(stream)
        if self._draining:
            stream.close()
        try:
            await stream.serve(requests)
        finally:
            self._streams.discard(stream)

    def tools(self) -> dict[str, list[tool_pb2.Capability]]:
        return {tid: [a.capability() for a in actions.values()] for tid, actions in self._actions.items()}

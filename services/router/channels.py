"""gRPC channels to tool servers, one per endpoint, with calls multiplexed over ExecuteStream.

A long-lived bidirectional stream costs about half a unary call per message,
so every call goes over it; a server that answers UNIMPLEMENTED (e.g. one that
implements only Execute) is called with unary Execute from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from services.common import endpoints
from services.common.errors import DeadlineExceeded, MeshError, Unavailable
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc

log = logging.getLogger(__name__)

ProgressFn = Callable[[ex.Progress], None]
_TRANSPORT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def channel_options(max_message_bytes: int, unix: bool) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
        # Fail fast and reconnect quickly when a tool server restarts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if unix:
        opts.append(("grpc.default_authority", "localhost"))
    return opts


class _UnsupportedStream(Exception):
    pass


class _Mux:
    """Many calls over one ExecuteStream, matched by call_id."""

    def __init__(self, stub: ex_grpc.ToolExecutorServiceStub, target: str) -> None:
        self._stub = stub
        self._target = target
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[ex.ExecuteResponse], ProgressFn | None]] = {}
        self._queue: asyncio.Queue[ex.ExecuteStreamRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.unsupported = False

    def _open(self) -> asyncio.Queue[ex.ExecuteStreamRequest | None]:
        if self._queue is None:
            queue: asyncio.Queue[ex.ExecuteStreamRequest | None] = asyncio.Queue()
            self._queue = queue

            async def requests() -> AsyncIterator[ex.ExecuteStreamRequest]:
                while (item := await queue.get()) is not None:
                    yield item

            call = self._stub.ExecuteStream(requests())
            self._reader = asyncio.get_running_loop().create_task(self._read(call, queue))
        return self._queue

    async def _read(self, call: grpc.aio.StreamStreamCall, queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
        error: Exception
        try:
            async for msg in call:
                slot = self._pending.get(msg.call_id)
                if slot is None:
                    continue
                fut, on_progress = slot
                if msg.HasField("result"):
                    del self._pending[msg.call_id]
                    if not fut.done():
                        fut.set_result(msg.result)
                elif on_progress is not None:
                    on_progress(msg.progress)
            error = Unavailable(f"tool server at {self._target} closed the call stream",
                                reason="TOOL_SERVER_UNAVAILABLE")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                error = _UnsupportedStream()
            else:
                error = Unavailable(f"tool server at {self._target} is unreachable: {exc.details()}",
                                    reason="TOOL_SERVER_UNAVAILABLE")
        except asyncio.CancelledError:
            error = Unavailable("router shutting down", reason="ROUTER_CLOSED")
        finally:
            if self._queue is queue:
                self._queue = None
            queue.put_nowait(None)
            call.cancel()
        for fut, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    async def call(self, request: ex.ExecuteRequest, timeout: float, on_progress: ProgressFn | None
                   ) -> ex.ExecuteResponse:
        queue = self._open()
        call_id = next(self._ids)
        fut: asyncio.Future[ex.ExecuteResponse] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (fut, on_progress)
        queue.put_nowait(ex.ExecuteStreamRequest(call_id=call_id, execute=request))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise DeadlineExceeded(
                f"tool did not answer within {timeout:.3g}s", reason="TOOL_TIMEOUT",
                metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout:.3g}"},
            ) from None
        finally:
            if self._pending.pop(call_id, None) is not None and self._queue is queue:
                queue.put_nowait(ex.ExecuteStreamRequest(call_id=call_id, cancel=ex.CancelCall(reason="caller gone")))

    async def close(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class ToolChannel:
    """One endpoint: a channel, a stub and a call multiplexer."""

    def __init__(self, endpoint: endpoints.Endpoint, max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(
            endpoint.grpc_target, options=channel_options(max_message_bytes, endpoint.scheme == endpoints.UNIX)
        )
        self.stub = ex_grpc.ToolExecutorServiceStub(self.channel)
        self._mux = _Mux(self.stub, str(endpoint))

    async def execute(self, request: ex.ExecuteRequest, timeout: float, on_progress: ProgressFn | None = None
                      ) -> ex.ExecuteResponse:
        if not self._mux.unsupported:
            try:
                return await self._mux.call(request, timeout, on_progress)
            except _UnsupportedStream:
                log.info("%s has no ExecuteStream; using unary Execute", self.endpoint)
        return await self._unary(request, timeout)

    async def _unary(self, request: ex.ExecuteRequest, timeout: float) -> ex.ExecuteResponse:
        try:
            return await self.stub.Execute(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _map_rpc_error(exc, request, timeout, str(self.endpoint)) from None

    async def close(self) -> None:
        await self._mux.close()
        await self.channel.close()


def _map_rpc_error(exc: grpc.aio.AioRpcError, request: ex.ExecuteRequest, timeout: float, target: str
                   ) -> MeshError | Exception:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"tool did not answer within {timeout:.3g}s", reason="TOOL_TIMEOUT",
                                metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout:.3g}"})
    if code in _TRANSPORT_CODES:
        return Unavailable(f"tool server at {target} is unreachable: {exc.details()}",
                           reason="TOOL_SERVER_UNAVAILABLE", metadata={"tool_id": request.tool_id})
    return ToolServerFault(code, exc.details() or code.name)


class ToolServerFault(Exception):
    """The tool server answered with an RPC error: a failing tool, reported as an is_error result."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ChannelPool:
    """Channels by endpoint, created on first use and closed together."""

    def __init__(self, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self._max = max_message_bytes
        self._channels: dict[endpoints.Endpoint, ToolChannel] = {}

    def get(self, endpoint: endpoints.Endpoint) -> ToolChannel:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = self._channels[endpoint] = ToolChannel(endpoint, self._max)
        return ch

    async def drop(self, endpoint: endpoints.Endpoint) -> None:
        ch = self._channels.pop(endpoint, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

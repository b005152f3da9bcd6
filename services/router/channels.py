"""gRPC channels to tool servers, one per endpoint, with calls multiplexed over ExecuteStream.

A long-lived bidirectional stream costs about half a unary call per message,
so every call goes over it; a server that answers UNIMPLEMENTED (e.g. one that
implements only Execute) is called with unary Execute from then on.

The stream is shared by every caller of the endpoint, so a message too large or
unreadable for it fails its own call only: a request over the message limit is
refused before it is written (gRPC would end the whole stream), and answers
are read leniently (streams.lenient/salvage): one the router cannot parse, or
up to twice the limit in size, becomes an is_error result for its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_pb2

from services.common import endpoints
from services.common.errors import DeadlineExceeded, MeshError, ResourceExhausted, Unavailable
from services.common.jsonvalue import text_result
from services.common.streams import (
    BATCHING_KEY,
    EXECUTE_STREAM,
    RESPONSE_KINDS,
    STREAM_OVERHEAD_BYTES,
    Correlator,
    Expired,
    Outbox,
    OutboxLimits,
    TooManyPending,
    Unreadable,
    batch_limit,
    coalesce,
    from_fault,
    lenient,
    salvage,
    take_one,
)
from services.router import backchannel

log = logging.getLogger(__name__)

ProgressFn = Callable[[ex.Progress], None]
_TRANSPORT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
# A tool server's answer up to this many times the message limit still arrives (and fails its call
# alone); only a bigger one makes gRPC end the stream. A bound, so one answer cannot take all memory.
_RECEIVE_HEADROOM = 2
# One stream's bounds: the calls waiting for answers, and the messages queued behind the write in
# flight (a server that stops reading its stream backs them up). Past either, a call is refused as
# an unreachable server's (an is_error NetworkError result), the stream and the other calls go on.
_MAX_WAITING = 10_000
_QUEUED = OutboxLimits(messages=10_000, bytes=64 << 20)


def channel_options(max_message_bytes: int, unix: bool, receive_bytes: int = 0) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", receive_bytes or max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
        # Fail fast and reconnect quickly when a tool server restarts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if unix:
        opts.append(("grpc.default_authority", "localhost"))
    return opts


class UnsupportedStream(Exception):
    """The server does not serve ExecuteStream (UNIMPLEMENTED): its calls go unary from now on."""


class StreamBroken(Unavailable):
    """The stream (or its server) failed this call, not the server's answer: it could not be
    written, the stream ended, the server was unreachable. A tool server's unreachability
    (TOOL_SERVER_UNAVAILABLE) to the router; a link to another router says it its own way."""


class _Refused(Exception):
    """The stream's queue is full: the call was not written."""


def _refuse(msg: ex.ExecuteStreamRequest) -> None:
    if msg.HasField("execute"):  # a cancel past the bound is dropped: its call is abandoned anyway
        raise _Refused()


def _unreadable_answer(target: str, reason: str) -> ex.ExecuteResponse:
    return text_result(
        f"the answer of the tool server at {target} could not be read: {reason}",
        is_error=True,
        error_type=tool_pb2.ERROR_TYPE_SYSTEM,
    )


class Mux:
    """Many calls over one ExecuteStream, matched by call_id.

    Writes go straight to the call object (cheaper than feeding a request
    iterator through a queue), through the stream's outbox: messages queued
    while a write is in flight are sent by that writer, coalesced into one
    message when the server opened the stream with `toolscore-batching: 1`.
    One reader task resolves the calls' futures (the stream's correlator).
    `metadata`: the stream's, sent when it opens; a router serving the stream (the hub) reads it
    as the authority of every call on it. A call the server answers with a CallFault raises it.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        target: str,
        max_message_bytes: int,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._open_stream = channel.stream_stream(
            EXECUTE_STREAM,
            request_serializer=ex.ExecuteStreamRequest.SerializeToString,
            response_deserializer=lenient(ex.ExecuteStreamResponse, max_message_bytes),
        )
        self._target = target
        self._max_request = max_message_bytes - STREAM_OVERHEAD_BYTES
        self._max_batch = batch_limit(max_message_bytes)
        self._ids = itertools.count(1)
        self._metadata = tuple(metadata) or None
        self._pending: Correlator[int, ex.ExecuteResponse | MeshError] = Correlator(_MAX_WAITING)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._out: Outbox[ex.ExecuteStreamRequest] | None = None
        self._batching = False
        self.unsupported = False
        self._asking: set[asyncio.Task[None]] = set()  # server requests being relayed to callers

    def _open(self) -> Outbox[ex.ExecuteStreamRequest]:
        if self._call is None or self._out is None:
            call = self._open_stream(metadata=self._metadata)
            self._call, self._batching = call, False
            self._out = Outbox(call.write, _QUEUED, on_overflow=_refuse, take=self._take)
            self._reader = asyncio.get_running_loop().create_task(self._read(call, self._out))
        return self._out

    def _take(self, queued: list[ex.ExecuteStreamRequest]) -> tuple[ex.ExecuteStreamRequest, int]:
        return coalesce(queued, self._max_batch) if self._batching else take_one(queued)

    def _unavailable(self, detail: str) -> StreamBroken:
        return StreamBroken(
            f"tool server at {self._target} is unreachable: {detail}", reason="TOOL_SERVER_UNAVAILABLE"
        )

    def _error_for(self, exc: grpc.aio.AioRpcError) -> Exception:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self.unsupported = True
            return UnsupportedStream()
        return self._unavailable(exc.details() or exc.code().name)

    async def _read(self, call: grpc.aio.StreamStreamCall, out: Outbox[ex.ExecuteStreamRequest]) -> None:
        error: Exception
        try:
            metadata = await call.initial_metadata()
            self._batching = call is self._call and any(
                k == BATCHING_KEY and v == "1" for k, v in metadata or ()
            )
            async for msg in call:
                if type(msg) is Unreadable:
                    self._deliver_unreadable(msg)
                    continue
                self._deliver(msg)
                for more in msg.batch:
                    self._deliver(more)
            error = self._unavailable("it closed the call stream")
        except grpc.aio.AioRpcError as exc:
            error = self._error_for(exc)
        except asyncio.CancelledError:
            error = Unavailable("router shutting down", reason="ROUTER_CLOSED")
        finally:
            if self._call is call:
                self._call = None
            out.close()  # what is queued for this stream is never written: its calls fail below
            call.cancel()
        # No await since resetting _call: calls opened from now on register on a new stream.
        self._pending.fail_all(error)

    def _deliver(self, msg: ex.ExecuteStreamResponse) -> None:
        if msg.HasField("result"):
            self._pending.resolve(msg.call_id, msg.result)
        elif msg.HasField("fault"):  # only a router serving the stream sends one (the hub)
            self._pending.resolve(msg.call_id, from_fault(msg.fault))
        elif msg.HasField("client_request"):
            task = asyncio.get_running_loop().create_task(self._relay_ask(msg.call_id, msg.client_request))
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)
        else:
            self._pending.progress(msg.call_id, msg.progress)

    async def _relay_ask(self, call_id: int, request: ex.ClientRequest) -> None:
        """A server's request to the caller of `call_id`, asked of that caller (its progress hook's
        `ask`, backchannel.py) and answered on the stream; refused when the caller cannot be asked."""
        ask = backchannel.ask_of(self._pending.hook(call_id))
        outcome: dict[str, object] | backchannel.ClientError
        try:
            params = backchannel.params_of(request)
            if ask is None:
                raise backchannel.refusal(request.method, "its caller has no way back to an MCP client")
            outcome = await ask(request.method, params, self._pending.time_left(call_id))
        except backchannel.ClientError as err:
            outcome = err
        out = self._out
        if out is not None and not out.closed:
            answer = backchannel.response_pb(request.request_id, outcome)
            out.post(ex.ExecuteStreamRequest(call_id=call_id, client_response=answer), answer.ByteSize())

    def _deliver_unreadable(self, msg: Unreadable) -> None:
        """Answer each call in a message that did not parse whole with what can be read of it."""
        parts = salvage(msg, RESPONSE_KINDS)
        if parts is None:  # no call id to trust: those calls end at their deadline
            log.warning("%s sent a stream message that does not parse (%d bytes)", self._target, len(msg.raw))
            return
        for part in parts:
            if part.kind == "progress":
                if part.message is not None:
                    self._pending.progress(part.call_id, part.message)
                continue
            answer = _unreadable_answer(self._target, msg.reason) if part.message is None else part.message
            self._pending.resolve(part.call_id, answer)

    async def call(
        self, request: ex.ExecuteRequest, timeout: float, on_progress: ProgressFn | None
    ) -> ex.ExecuteResponse:
        size = request.ByteSize()
        if size > self._max_request:  # gRPC would end the stream on it, failing every caller's call
            raise ResourceExhausted(
                f"the call is {size} bytes; one message to the tool server may carry {self._max_request}",
                reason="CALL_TOO_LARGE",
                metadata={"tool_id": request.tool_id, "limit_bytes": str(self._max_request)},
            )
        out = self._open()
        call_id = next(self._ids)
        try:
            try:
                fut = await self._pending.request(
                    call_id,
                    timeout,
                    on_progress,
                    out.send,
                    ex.ExecuteStreamRequest(call_id=call_id, execute=request),
                    size,
                )
            except TooManyPending as exc:
                raise self._unavailable(f"{exc} on its call stream") from None
            except _Refused:
                raise self._unavailable(
                    f"it does not read its call stream ({_QUEUED.messages} messages or "
                    f"{_QUEUED.bytes} bytes are queued)"
                ) from None
            except grpc.aio.AioRpcError as exc:
                raise self._error_for(exc) from None
            except (grpc.aio.UsageError, asyncio.InvalidStateError):  # the stream ended under the write
                raise self._unavailable("the call stream ended") from None
            answer = await fut
            if type(answer) is ex.ExecuteResponse:
                return answer
            raise answer  # the CallFault of a router serving the stream: the call's protocol fault
        except Expired:
            raise DeadlineExceeded(
                f"tool did not answer within {timeout:.3g}s",
                reason="TOOL_TIMEOUT",
                metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout:.3g}"},
            ) from None
        finally:
            if self._pending.finish(call_id) and not out.closed:  # tell the server its caller is gone
                out.post(ex.ExecuteStreamRequest(call_id=call_id, cancel=ex.CancelCall(reason="caller gone")))

    async def close(self) -> None:
        for task in list(self._asking):
            task.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._out is not None:
            await self._out.aclose()


class ToolChannel:
    """One endpoint: a channel, a stub and a call multiplexer."""

    def __init__(self, endpoint: endpoints.Endpoint, max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(
            endpoint.grpc_target,
            options=channel_options(
                max_message_bytes, endpoint.scheme == endpoints.UNIX, _RECEIVE_HEADROOM * max_message_bytes
            ),
        )
        self.stub = ex_grpc.ToolExecutorServiceStub(self.channel)
        self._mux = Mux(self.channel, str(endpoint), max_message_bytes)

    async def execute(
        self, request: ex.ExecuteRequest, timeout: float, on_progress: ProgressFn | None = None
    ) -> ex.ExecuteResponse:
        if not self._mux.unsupported:
            try:
                return await self._mux.call(request, timeout, on_progress)
            except UnsupportedStream:
                log.info("%s has no ExecuteStream; using unary Execute", self.endpoint)
        return await self._unary(request, timeout)

    async def execute_unary(
        self, request: ex.ExecuteRequest, timeout: float, metadata: Sequence[tuple[str, str]]
    ) -> ex.ExecuteResponse:
        """One call as a unary Execute with its own metadata (what a shared stream cannot carry)."""
        return await self._unary(request, timeout, metadata)

    async def _unary(
        self, request: ex.ExecuteRequest, timeout: float, metadata: Sequence[tuple[str, str]] = ()
    ) -> ex.ExecuteResponse:
        try:
            return await self.stub.Execute(request, timeout=timeout, metadata=tuple(metadata))
        except grpc.aio.AioRpcError as exc:
            raise _map_rpc_error(exc, request, timeout, str(self.endpoint)) from None

    async def close(self) -> None:
        await self._mux.close()
        await self.channel.close()


def _map_rpc_error(
    exc: grpc.aio.AioRpcError, request: ex.ExecuteRequest, timeout: float, target: str
) -> MeshError | Exception:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"tool did not answer within {timeout:.3g}s",
            reason="TOOL_TIMEOUT",
            metadata={"tool_id": request.tool_id, "timeout_s": f"{timeout:.3g}"},
        )
    if code in _TRANSPORT_CODES:
        return Unavailable(
            f"tool server at {target} is unreachable: {exc.details()}",
            reason="TOOL_SERVER_UNAVAILABLE",
            metadata={"tool_id": request.tool_id},
        )
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
        # Keyed by the canonical URI, a str whose hash is cached: an Endpoint's is computed per call.
        self._channels: dict[str, ToolChannel] = {}

    def get(self, endpoint: endpoints.Endpoint) -> ToolChannel:
        ch = self._channels.get(endpoint.uri)
        if ch is None:
            ch = self._channels[endpoint.uri] = ToolChannel(endpoint, self._max)
        return ch

    async def execute(
        self,
        endpoint: endpoints.Endpoint,
        request: ex.ExecuteRequest,
        timeout: float,
        on_progress: ProgressFn | None = None,
    ) -> ex.ExecuteResponse:
        """One call to the tool server at `endpoint`: its channel's `execute` (one step for a router)."""
        ch = self._channels.get(endpoint.uri) or self.get(endpoint)  # no second call once it exists
        return await ch.execute(request, timeout, on_progress)

    async def drop(self, endpoint: endpoints.Endpoint) -> None:
        ch = self._channels.pop(endpoint.uri, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

"""ToolServer: ToolExecutorService (Execute and ExecuteStream) over plain async actions.

An action is `async def action(arguments: dict, ctx: CallContext) -> ExecuteResponse | dict | str`.
A raised exception becomes an is_error result (ERROR_TYPE_TOOL_ERROR); only
protocol faults (unknown tool or action) are RPC errors.

ExecuteStream (`CallStream`) carries many calls over one bidirectional stream,
matched by call_id. Each `execute` message runs as its own task, so a `cancel`
message (or the stream ending) can cancel it; the task goes from the stream
straight to the action (one module, so a call crosses no file between the two).
Its answer goes out with `context.write` from that task as soon as it is ready;
answers that become ready while a write is in flight go out together, in one
message's `batch` (the server announces `toolscore-batching: 1` in its initial
metadata): the stream's outbox (services.common.streams). Writing from the
call's own task, rather than through a queue to a response generator, saves a
loop iteration and a wake-up per call. What waits behind a write is bounded
(`_QUEUED`): past it a progress note is dropped, and an answer too (its
caller's deadline then fails the call); a caller that reads its answers never
gets near it.

A router serving the stream (the hub's CallExecutor) may raise a call's protocol fault from its
RunCall: it answers that call alone, as a CallFault.

The stream is shared by many callers, so whatever one call brings stays with
that call: a request message that does not parse (served through
`streams.add_tool_executor`, it arrives as `Unreadable`) is answered with an
INVALID_INPUT error for each call it carried, and an answer too large for one
gRPC message is replaced by an error for its call; neither ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import executor_pb2_grpc as ex_grpc
from toolscore.v1 import tool_pb2

from services.common.errors import InvalidRequest, MeshError, NotFound, Unauthenticated
from services.common.jsonvalue import dict_to_struct, struct_to_dict, text_result, to_response
from services.common.streams import (
    BATCHING_KEY,
    DEFAULT_MAX_MESSAGE_BYTES,
    REQUEST_KINDS,
    STREAM_OVERHEAD_BYTES,
    Correlator,
    Expired,
    Outbox,
    OutboxLimits,
    TooManyPending,
    Unreadable,
    batch_limit,
    coalesce,
    fault_of,
    salvage,
)
from services.router import backchannel

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


class OpenStreams:
    """A server's open ExecuteStreams, for `drain`: each `serve`d here, and closed (ending once its
    running calls have answered) when the server drains, or at once if it drains already."""

    def __init__(self) -> None:
        self._streams: set[CallStream] = set()
        self._draining = False

    async def serve(self, stream: CallStream, requests: AsyncIterator[ex.ExecuteStreamRequest]) -> None:
        self._streams.add(stream)
        if self._draining:
            stream.close()
        try:
            await stream.serve(requests)
        finally:
            self._streams.discard(stream)

    async def drain(self) -> None:
        """Stop taking calls on streams; each stream ends once its running calls have answered."""
        self._draining = True
        for stream in self._streams:
            stream.close()


class ToolServer(ex_grpc.ToolExecutorServiceServicer):
    """Serves actions of one or more tools. Serve it with `streams.add_tool_executor`, which reads
    ExecuteStream leniently (one unreadable call never ends the stream)."""

    # The server's gRPC message limit: an answer over it fails its call alone, not the stream.
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, tools: dict[str, list[Action]], *, admin_check: AdminCheck | None = None) -> None:
        """`admin_check`: how gRPC callers prove admin rights for `requires_admin` actions (None: open)."""
        self._actions = {tid: {a.name: a for a in actions} for tid, actions in tools.items()}
        self._admin_check = admin_check
        self._streams = OpenStreams()
        self.drain = self._streams.drain

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
            value = await action.fn(struct_to_dict(request.arguments), ctx)
            # Most actions answer with a response already: no call into the results module for it.
            return value if type(value) is ex.ExecuteResponse else to_response(value)
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

        await self._streams.serve(CallStream(context, run_call, self.max_message_bytes), requests)

    def tools(self) -> dict[str, list[tool_pb2.Capability]]:
        return {tid: [a.capability() for a in actions.values()] for tid, actions in self._actions.items()}


# -- ExecuteStream: many calls over one stream ---------------------------------------------------

# Sends a progress notification for the call (fire and forget).
Progress = Callable[[ex.Progress], None]
# Runs one call to its answer. It must turn every outcome into a response, cancellation included;
# only a router serving the stream (the hub) raises a call's protocol fault, answered as a CallFault.
RunCall = Callable[[ex.ExecuteRequest, Progress], Awaitable[ex.ExecuteResponse]]
# What may queue behind the write in flight (each message is under the message limit).
_QUEUED = OutboxLimits(messages=10_000, bytes=64 << 20)
_MAX_ASKS = 1_000  # requests of one stream's calls waiting for their callers' answers


class _Caller:
    """One call's progress hook on the stream, which can also `ask` the caller (backchannel.py)."""

    __slots__ = ("asking", "call_id", "stream")

    def __init__(self, stream: CallStream, call_id: int) -> None:
        self.stream, self.call_id, self.asking = stream, call_id, 0

    def __call__(self, note: ex.Progress) -> None:
        self.stream._progress(self.call_id, note)

    def ask(self, method: str, params: dict[str, Any], timeout_s: float) -> Awaitable[dict[str, Any]]:
        return self.stream.ask(self, method, params, timeout_s)


def _cancelled() -> ex.ExecuteResponse:
    return text_result("call cancelled by the caller", is_error=True, error_type=tool_pb2.ERROR_TYPE_UNKNOWN)


def _refusal(message: str) -> ex.ExecuteResponse:
    return text_result(message, is_error=True, error_type=tool_pb2.ERROR_TYPE_SYSTEM)


def _unparsable(reason: str) -> ex.ExecuteResponse:
    return text_result(
        f"the call's request could not be read: {reason}",
        is_error=True,
        error_type=tool_pb2.ERROR_TYPE_INVALID_INPUT,
    )


def _too_large(size: int, limit: int) -> ex.ExecuteResponse:
    return text_result(
        f"the tool's answer is {size} bytes, over the {limit}-byte limit of one message; it was dropped",
        is_error=True,
        error_type=tool_pb2.ERROR_TYPE_TOOL_ERROR,
    )


class CallStream:
    """One ExecuteStream on the server side. `serve()` returns when the stream is over: the
    caller closed its side and every call has answered, or `close()` was called and they have."""

    def __init__(
        self,
        context: grpc.aio.ServicerContext,
        run_call: RunCall,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._context, self._run_call = context, run_call
        self._max_payload = max_message_bytes - STREAM_OVERHEAD_BYTES  # one answer or progress note
        self._max_batch = batch_limit(max_message_bytes)  # answers coalesced into one message
        self._loop = asyncio.get_running_loop()
        self.running: dict[int, asyncio.Task[None]] = {}  # calls not answered yet (cancellable)
        self._tasks: set[asyncio.Task[None]] = set()  # call tasks, until done
        # Closed when the RPC is over (or broke): nothing more is written.
        self._out: Outbox[ex.ExecuteStreamResponse] = Outbox(
            self._write,
            _QUEUED,
            on_overflow=self._overflow,
            take=functools.partial(coalesce, limit=self._max_batch),
            on_flushed=self._end_if_idle,
        )
        self._closing = False
        self._over = self._loop.create_future()
        # Requests of the calls to their callers (backchannel.py), by (call_id, request_id).
        self._asks: Correlator[tuple[int, int], ex.ClientResponse] = Correlator(_MAX_ASKS)
        self._ask_ids = 0

    async def serve(self, requests: AsyncIterator[ex.ExecuteStreamRequest]) -> None:
        await self._context.send_initial_metadata(((BATCHING_KEY, "1"),))
        reader = self._loop.create_task(self._read(requests))
        try:
            await self._over
        finally:
            self._asks.fail_all(backchannel.ClientError(backchannel.INTERNAL_ERROR, "the caller went away"))
            self._out.close()
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def close(self) -> None:
        """Take no more calls (they get a 'shutting down' answer); end once the running ones answered."""
        self._closing = True
        self._end_if_idle()

    async def _read(self, requests: AsyncIterator[ex.ExecuteStreamRequest | Unreadable]) -> None:
        try:
            async for msg in requests:
                if type(msg) is Unreadable:
                    self._take_unreadable(msg)
                    continue
                self._take(msg)  # type: ignore[arg-type]
                for more in msg.batch:  # type: ignore[union-attr]
                    self._take(more)
        except grpc.aio.BaseError:
            pass  # the caller went away: the RPC is over
        except Exception:  # served without the lenient reader: nothing more can be read
            log.exception("reading the call stream failed")
        finally:
            self._closing = True  # the caller's side is closed: finish what runs, then end
            self._end_if_idle()

    def _take(self, msg: ex.ExecuteStreamRequest) -> None:
        if msg.HasField("execute"):
            self._start(msg.call_id, msg.execute)
        elif msg.HasField("cancel"):
            self._cancel(msg.call_id)
        elif msg.HasField("client_response"):
            self._asks.resolve((msg.call_id, msg.client_response.request_id), msg.client_response)

    def _take_unreadable(self, msg: Unreadable) -> None:
        """Serve what can be served of a message that did not parse whole: each call's request
        parsed alone (it is the wrapping that went one level too deep), the rest answered with
        an error for that call alone."""
        parts = salvage(msg, REQUEST_KINDS)
        if parts is None:  # no call id to answer: the calls in it time out at their caller
            log.warning("dropped a call stream message that does not parse at all (%d bytes)", len(msg.raw))
            return
        for part in parts:
            if part.kind == "cancel":
                self._cancel(part.call_id)
            elif part.message is None:
                log.info("call %d: unreadable request (%s)", part.call_id, msg.reason)
                self._post(self._answer(part.call_id, _unparsable(msg.reason)))
            else:
                self._start(part.call_id, part.message)  # type: ignore[arg-type]

    def _start(self, call_id: int, request: ex.ExecuteRequest) -> None:
        if self._closing:
            self._post(self._answer(call_id, _refusal("tool server is shutting down")))
            return
        task = self._loop.create_task(self._run(call_id, request))
        self.running[call_id] = task
        self._tasks.add(task)
        # Bookkeeping in a callback, not in the coroutine: a task cancelled before it ever ran
        # (a cancel in the same batch as its call) never executes its own `finally`.
        task.add_done_callback(functools.partial(self._call_done, call_id))

    def _cancel(self, call_id: int) -> None:
        working = self.running.get(call_id)
        if working is not None:
            working.cancel()

    async def _run(self, call_id: int, request: ex.ExecuteRequest) -> None:
        try:
            result = await self._run_call(request, _Caller(self, call_id))
        except asyncio.CancelledError:  # run_call did not answer its cancellation itself
            result = _cancelled()
        except MeshError as err:  # what unary Execute would have raised: the caller hears the same
            self.running.pop(call_id, None)
            fault = ex.ExecuteStreamResponse(call_id=call_id, fault=fault_of(err))
            await self._out.send(fault, fault.ByteSize())
            return
        except Exception as exc:  # run_call maps what it knows; anything else is still an answer
            log.exception("call %d failed", call_id)
            result = _refusal(f"internal error: {type(exc).__name__}: {exc}")
        self.running.pop(call_id, None)  # answered: a cancel from now on would only cut the write
        size = result.ByteSize()
        if size > self._max_payload:  # gRPC would fail the whole stream on it, every caller's call
            log.warning("call %d: answer of %d bytes dropped (limit %d)", call_id, size, self._max_payload)
            result = _too_large(size, self._max_payload)
            size = result.ByteSize()
        await self._out.send(self._answer(call_id, result), size)

    def _call_done(self, call_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.running.get(call_id) is task:  # cancelled before it could answer
            del self.running[call_id]
            self._post(self._answer(call_id, _cancelled()))
        elif not task.cancelled() and task.exception() is not None:
            log.debug("answering call %d failed: %s", call_id, task.exception())
        self._end_if_idle()

    @staticmethod
    def _answer(call_id: int, result: ex.ExecuteResponse) -> ex.ExecuteStreamResponse:
        return ex.ExecuteStreamResponse(call_id=call_id, result=result)

    def _progress(self, call_id: int, p: ex.Progress) -> None:
        size = p.ByteSize()
        if size > self._max_payload:  # a note, not an answer: cut its text rather than fail
            p = ex.Progress(progress=p.progress, total=p.total, message=p.message[:1024])
            size = p.ByteSize()
        self._out.post(ex.ExecuteStreamResponse(call_id=call_id, progress=p), size)

    async def ask(
        self, caller: _Caller, method: str, params: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """A request of call `caller` to its caller (backchannel.py), answered within `timeout_s`."""
        if caller.asking >= backchannel.MAX_OUTSTANDING:
            raise backchannel.ClientError(
                backchannel.INVALID_REQUEST,
                f"{backchannel.MAX_OUTSTANDING} requests of this call wait for the client already",
            )
        self._ask_ids += 1
        rid = self._ask_ids
        request = backchannel.request_pb(rid, method, params)
        msg = ex.ExecuteStreamResponse(call_id=caller.call_id, client_request=request)
        key = (caller.call_id, rid)
        caller.asking += 1
        try:
            fut = await self._asks.request(key, timeout_s, None, self._out.send, msg, msg.ByteSize())
            return backchannel.outcome_of(await fut)
        except TooManyPending as exc:
            raise backchannel.ClientError(backchannel.INVALID_REQUEST, str(exc)) from None
        except Expired:
            raise backchannel.ClientError(
                backchannel.TIMEOUT, f"the client did not answer {method} within {timeout_s:.3g}s"
            ) from None
        finally:
            caller.asking -= 1
            self._asks.finish(key)

    def _post(self, msg: ex.ExecuteStreamResponse) -> None:
        """Queue an answer without waiting, in order with the others (refusals, cancellations)."""
        self._out.post(msg, msg.ByteSize())

    async def _write(self, msg: ex.ExecuteStreamResponse) -> None:
        try:
            await self._context.write(msg)
        except grpc.aio.BaseError as exc:  # the RPC ended under us: nobody is left to answer
            log.debug("stream write failed: %s", exc)
            self._out.close()

    def _overflow(self, msg: ex.ExecuteStreamResponse) -> None:
        if msg.HasField("result"):
            log.warning("call %d: answer dropped, the caller does not read its stream", msg.call_id)

    def _end_if_idle(self) -> None:
        if self._closing and not self._tasks and not self._out.flushing and not self._over.done():
            self._over.set_result(None)

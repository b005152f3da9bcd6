"""Streams that many callers share: what both ends of every multiplexed connection use.

Three mechanisms, each written once (the router's calls over a tool server's
ExecuteStream, a tool server's answers on it, the edge's WebSockets, the calls
to servers dialled in over the ToolScore WebSocket):

1. `Outbox`: one writer's bounded queue to one peer.
2. `Correlator`: calls waiting for their answers, matched by request id.
3. ExecuteStream's contract outside its messages: batching, lenient reading
   (`Unreadable`, `salvage`), the service's registration.

## 1. The outbox
One writer's queue to one peer: messages in order, one write at a time, bounded.

Every stream and socket that several tasks write to writes through an `Outbox`:
the edge's WebSockets (edge.outbox), a tool server's answers on ExecuteStream
(services.toolkit.server) and the router's calls over it (services.router.channels).

- `send` (awaited by the task whose message it is): with no write in flight it
  writes at once from the caller's own task (no queue, no task switch); else it
  leaves the message to the write in flight, which writes whatever queued up
  meanwhile before it returns, coalesced by `take` (e.g. into one message's `batch`).
- `post` (never waits): the message queues, and a flush task writes it unless a
  write is in flight.

What waits behind a write is bounded in messages and bytes; a message past the
bound is not queued but handed to `on_overflow`, the user's policy: close the
slow reader (sockets), refuse the call (the router's calls), drop the note.
A single message always fits, whatever its size: the bound is on falling behind.

## 2. The correlator
Calls waiting for their answers on a shared connection, matched by request id.

Every connection that carries many callers' requests and brings their answers
back out of order correlates them here: the router's calls over a tool
server's ExecuteStream (services.router.channels, by call_id), the edge's calls
to servers dialled in over the ToolScore WebSocket (edge.dialled_in, by request_id),
and the bench's MCP WebSocket client (bench.scenarios.mcp, by JSON-RPC id).

A caller opens its id and sends its request in one step, `request` (with a
deadline, and a hook for progress notes if it wants them; `open` alone where
the write is not awaited), awaits the future, and `finish`es the id
whatever happened; the connection's reader `resolve`s answers and routes
`progress`; when the connection ends, `fail_all` fails everyone still waiting
with the connection's error. A deadline is a timer on the loop, not a
`asyncio.timeout` block: cheaper per call, and it runs while the request is
still being written.

## 3. ExecuteStream's contract
Conventions of the gRPC contract that live outside the messages themselves.

ExecuteStream carries many callers' calls, so one message that does not parse
(nested deeper than protobuf's recursion limit, larger than the limit, or plain
garbage) must cost its own call and nothing else. Both ends therefore read
stream messages leniently: a message that does not parse whole arrives as
`Unreadable`, and `salvage` reads it again through a wire-compatible envelope
in which the call's payload is opaque bytes, which recovers every call id and
parses each payload on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from toolscore.v1 import executor_pb2 as ex

from services.common.errors import MeshError, rebuild

# -- 1. The outbox ---------------------------------------------------------------------------

log = logging.getLogger(__name__)

M = TypeVar("M")  # a queued message: an ExecuteStream message, a WebSocket frame

# From the queue's head: the message to write and how many queued messages it stands for (>= 1).
Take = Callable[[list[M]], tuple[M, int]]


@dataclass(frozen=True)
class OutboxLimits:
    """How far a writer may fall behind: queued messages and queued bytes."""

    messages: int
    bytes: int


@dataclass
class OutboxStats:
    """Figures over every outbox of one endpoint (tests and metrics read them)."""

    overflows: int = 0  # messages refused by the bound (a closed socket counts once: then nothing queues)
    peak_queued_bytes: int = 0  # the most any one outbox ever held queued


def take_one(queue: list[M]) -> tuple[M, int]:
    """Write the queued messages one by one, as they came."""
    return queue[0], 1


class Outbox(Generic[M]):
    """Messages to one peer, written in order by `write`, one write at a time, within `limits`.

    `write` raising ends the write in flight (the messages left stay queued) and reaches the
    `send` that was writing; a flush task only logs it. A user whose peer is gone calls `close`.
    """

    def __init__(
        self,
        write: Callable[[M], Awaitable[None]],
        limits: OutboxLimits,
        *,
        on_overflow: Callable[[M], None],
        take: Take[M] = take_one,
        stats: OutboxStats | None = None,
        on_flushed: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._take = take
        self._on_overflow = on_overflow
        self._on_flushed = on_flushed
        self._max_messages = max(limits.messages, 1)
        self._max_bytes = max(limits.bytes, 1)
        self.stats = stats or OutboxStats()
        self._queue: list[M] = []
        self._sizes: list[int] = []  # beside _queue: what each queued message counts against the bound
        self.queued_bytes = 0
        self.writing = False
        self.closed = False
        self._flush: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued and no write in flight: a message written now comes next, in order."""
        return not self.writing and not self._queue

    @property
    def flushing(self) -> bool:
        """A flush task (started by `post`) has not finished yet."""
        return self._flush is not None

    def _admit(self, msg: M, size: int) -> bool:
        q = self._queue
        if q and (len(q) >= self._max_messages or self.queued_bytes + size > self._max_bytes):
            self.stats.overflows += 1
            self._on_overflow(msg)
            return False
        q.append(msg)
        self._sizes.append(size)
        self.queued_bytes += size
        if self.queued_bytes > self.stats.peak_queued_bytes:
            self.stats.peak_queued_bytes = self.queued_bytes
        return True

    async def send(self, msg: M, size: int = 0) -> None:
        """Write `msg` now, or leave it to the write in flight (which writes it before it returns)."""
        if self.closed:
            return
        if self.writing or self._queue:
            if self._admit(msg, size) and not self.writing:
                await self._drain()
            return
        self.writing = True  # idle: straight to the peer, nothing queued or counted (the hot path)
        try:
            await self._write(msg)
            await self._write_queued()
        finally:
            self.writing = False

    def post(self, msg: M, size: int = 0) -> None:
        """Queue `msg` without waiting; a flush task writes it unless a write is in flight."""
        if self.closed or not self._admit(msg, size):
            return
        if not self.writing and self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._flush_queue())

    def close(self) -> None:
        """The peer is gone (or cut off): drop what is queued, stop writing, queue nothing more."""
        self.closed = True
        self._queue.clear()
        self._sizes.clear()
        self.queued_bytes = 0
        if self._flush is not None:
            self._flush.cancel()

    async def aclose(self) -> None:
        """`close`, then wait for the flush task to end."""
        flush = self._flush
        self.close()
        if flush is not None:
            await asyncio.gather(flush, return_exceptions=True)

    async def _drain(self) -> None:
        self.writing = True
        try:
            await self._write_queued()
        finally:
            self.writing = False

    async def _write_queued(self) -> None:
        q, sizes = self._queue, self._sizes
        while q and not self.closed:
            msg, n = self._take(q)
            if n == 1:
                self.queued_bytes -= sizes[0]
            else:
                self.queued_bytes -= sum(sizes[:n])
            del q[:n], sizes[:n]
            await self._write(msg)

    async def _flush_queue(self) -> None:
        try:
            if not self.writing:  # else that write takes what was posted
                await self._drain()
        except Exception as exc:  # the writer's own errors are its business; a flush only notes them
            log.debug("flushing an outbox failed: %s", exc)
        finally:
            self._flush = None
            if self._on_flushed is not None:
                self._on_flushed()


# -- 2. The correlator ----------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")

ProgressHook = Callable[[Any], None]


class Expired(TimeoutError):
    """The call's deadline passed before its answer came."""


class TooManyPending(Exception):
    """As many calls as the correlator may hold are waiting already."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(Expired())


class Correlator(Generic[K, A]):
    """Pending futures by id, each with its deadline, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 1)
        self._pending: dict[K, tuple[asyncio.Future[A], ProgressHook | None, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def open(self, key: K, timeout_s: float, progress: ProgressHook | None = None) -> asyncio.Future[A]:
        """A future for `key`'s answer; it fails with `Expired` after `timeout_s` (TooManyPending if full)."""
        if len(self._pending) >= self._limit:
            raise TooManyPending(f"{self._limit} calls are waiting for their answers already")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[A] = loop.create_future()
        self._pending[key] = (fut, progress, loop.call_later(timeout_s, _expire, fut))
        return fut

    async def request(
        self,
        key: K,
        timeout_s: float,
        progress: ProgressHook | None,
        write: Callable[..., Awaitable[object]],
        *message: Any,
    ) -> asyncio.Future[A]:
        """Open `key` (as `open` does) and write its request, `await write(*message)`, in one step,
        as the MCP SDK's `BaseSession.send_request` does: the id is open before its answer can come.
        Returns the answer's future. A write that fails once the call has its outcome already (the
        reader failed it with the connection's own error, or it expired) leaves the call that
        outcome; otherwise the write's error propagates, with `key` still open: the caller
        `finish`es it whatever happened."""
        fut = self.open(key, timeout_s, progress)
        try:
            await write(*message)
        except Exception:
            if not fut.done():
                raise
        return fut

    def finish(self, key: K) -> bool:
        """The caller is done with `key`; True when its answer never came (the peer may be told)."""
        slot = self._pending.pop(key, None)
        if slot is None:
            return False
        slot[2].cancel()
        return True

    def resolve(self, key: K, answer: A) -> bool:
        """Deliver `key`'s answer; False when no call waits for it (unknown, answered or expired)."""
        slot = self._pending.pop(key, None)
        if slot is None:
            return False
        slot[2].cancel()
        if slot[0].done():  # expired meanwhile: its caller has the error already
            return False
        slot[0].set_result(answer)
        return True

    def progress(self, key: K, note: Any) -> None:
        """Hand a progress note to `key`'s hook, if it waits and has one."""
        slot = self._pending.get(key)
        if slot is not None and slot[1] is not None:
            slot[1](note)

    def hook(self, key: K) -> ProgressHook | None:
        """`key`'s progress hook, if it waits and has one (what a hop asks its caller through)."""
        slot = self._pending.get(key)
        return None if slot is None else slot[1]

    def time_left(self, key: K) -> float:
        """Seconds until `key`'s deadline (0 when it does not wait)."""
        slot = self._pending.get(key)
        if slot is None:
            return 0.0
        return max(slot[2].when() - asyncio.get_running_loop().time(), 0.0)

    def fail_all(self, error: BaseException) -> None:
        """The connection is over: every call still waiting fails with `error`."""
        pending, self._pending = self._pending, {}
        for fut, _, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(error)


# -- 3. ExecuteStream's contract ------------------------------------------------------------

# Initial metadata a tool server sends when it opens ExecuteStream to say it accepts
# coalesced messages (ExecuteStreamRequest.batch); routers never batch otherwise.
BATCHING_KEY = "toolscore-batching"

# A coalesced stream message stays under this, far below gRPC's default 4 MiB message limit
# (one call's arguments may be 1 MiB); a single bigger message still goes alone.
MAX_BATCH_BYTES = 1 << 20

# gRPC's default message limit, and the mesh's (hub.max_message_bytes).
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20

# What ExecuteStreamRequest/Response add around the one call they carry: call_id (tag + 10-byte
# varint) and the payload's tag and length (1 + 5). A payload this much under the limit fits.
STREAM_OVERHEAD_BYTES = 32

SERVICE = "toolscore.v1.ToolExecutorService"
EXECUTE_STREAM = f"/{SERVICE}/ExecuteStream"

S = TypeVar("S", bound=Any)  # ExecuteStreamRequest or ExecuteStreamResponse
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def fault_of(err: MeshError) -> ex.CallFault:
    """A call's protocol fault as a router serving ExecuteStream answers it (the hub)."""
    return ex.CallFault(code=err.code.value[0], message=err.message, reason=err.reason, metadata=err.metadata)


def from_fault(fault: ex.CallFault) -> MeshError:
    """The MeshError a CallFault carries: the one the same call would have raised as a unary RPC."""
    code = _CODES.get(fault.code, grpc.StatusCode.UNKNOWN)
    return rebuild(code, fault.message or code.name, fault.reason or code.name, fault.metadata)


def batch_limit(max_message_bytes: int) -> int:
    """How large a coalesced message may grow on a stream whose messages may carry `max_message_bytes`:
    MAX_BATCH_BYTES, or less where the message limit is lower (a batch over it would end the stream)."""
    return min(MAX_BATCH_BYTES, max_message_bytes - STREAM_OVERHEAD_BYTES)


def coalesce(queued: list[S], limit: int = MAX_BATCH_BYTES) -> tuple[S, int]:
    """The first queued message, carrying in its `batch` as many of the next ones as keep the whole
    message within `limit` bytes (see `batch_limit`), and how many queued messages it carries in all
    (an outbox's `take`, the outbox above)."""
    head, taken = queued[0], 1
    if len(queued) > 1:
        size = head.ByteSize()
        for more in queued[1:]:
            n = more.ByteSize()
            size += n + 1 + _varint_bytes(n)  # a batch entry: its tag, its length, itself
            if size > limit:
                break
            taken += 1
        head.batch.extend(queued[1:taken])
    return head, taken


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stream message that did not parse whole: `reason` says why, `raw` is what arrived."""

    raw: bytes
    reason: str
    too_large: bool = False  # over the limit: its calls fail even if their payloads would parse


class Part(NamedTuple):
    """One call's share of an unreadable message: its id, which kind of payload it carried
    (`execute`/`cancel`, `result`/`progress`), and that payload parsed alone (None if it did not)."""

    call_id: int
    kind: str
    message: Message | None


# Kinds by field number (2, 3) for each direction: the two messages share one shape.
Kinds = tuple[tuple[str, type[Message]], ...]
REQUEST_KINDS: Kinds = (("execute", ex.ExecuteRequest), ("cancel", ex.CancelCall))
RESPONSE_KINDS: Kinds = (("result", ex.ExecuteResponse), ("progress", ex.Progress))


def _envelope_class() -> type[Message]:
    """ExecuteStreamRequest/Response as the wire sees them, with fields 2 and 3 as opaque bytes
    (proto2, so an empty payload is still present)."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="toolscore_envelope.proto", package="toolscore.envelope")
    msg = file.message_type.add(name="StreamEnvelope")
    msg.field.add(name="call_id", number=1, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    msg.field.add(name="first", number=2, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    msg.field.add(name="second", number=3, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    msg.field.add(
        name="batch",
        number=4,
        type=f.TYPE_MESSAGE,
        type_name=".toolscore.envelope.StreamEnvelope",
        label=f.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    # protobuf ships no type hints: the class it makes is Any to mypy.
    envelope: type[Any] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("toolscore.envelope.StreamEnvelope")
    )
    return envelope


_Envelope = _envelope_class()


def lenient(cls: type[S], max_bytes: int = 0) -> Any:
    """A gRPC deserializer for stream messages of `cls` that never raises: a message that does not
    parse (or is over `max_bytes`, when given) comes out as `Unreadable` for the reader to answer."""

    def parse(raw: bytes) -> S | Unreadable:
        if max_bytes and len(raw) > max_bytes:
            return Unreadable(raw, f"{len(raw)} bytes, over the {max_bytes}-byte message limit", True)
        try:
            msg: S = cls.FromString(raw)  # Message.FromString is Any to mypy (no protobuf hints)
            return msg
        except (DecodeError, RecursionError) as exc:
            return Unreadable(raw, f"it does not parse ({exc or type(exc).__name__}; nested too deep?)")

    return parse


def salvage(msg: Unreadable, kinds: Kinds) -> list[Part] | None:
    """Every call in an unreadable stream message (its batch flattened), each payload parsed on its
    own; None when not even the envelope parses (then no call id can be trusted)."""
    try:
        envelope: Any = _Envelope.FromString(msg.raw)
    except (DecodeError, RecursionError):
        return None
    parts: list[Part] = []
    todo = [envelope]
    while todo:
        e = todo.pop(0)
        for (kind, cls), field in zip(kinds, ("first", "second"), strict=True):
            if e.HasField(field):
                payload = None if msg.too_large else _parse_alone(cls, getattr(e, field))
                parts.append(Part(e.call_id, kind, payload))
                break
        todo.extend(e.batch)
    return parts


def _parse_alone(cls: type[Message], raw: bytes) -> Message | None:
    try:
        return cls.FromString(raw)
    except (DecodeError, RecursionError):
        return None


def add_tool_executor(servicer: Any, server: Any) -> None:
    """Like the generated `add_ToolExecutorServiceServicer_to_server`, but ExecuteStream's requests
    are read leniently (`Unreadable` instead of an exception that ends the stream's reader).
    Use it to serve a CallStream-based servicer (toolkit servers, the executor, the edge relay)."""
    handlers = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute,
            request_deserializer=ex.ExecuteRequest.FromString,
            response_serializer=ex.ExecuteResponse.SerializeToString,
        ),
        "ExecuteStream": grpc.stream_stream_rpc_method_handler(
            servicer.ExecuteStream,
            request_deserializer=lenient(ex.ExecuteStreamRequest),
            response_serializer=ex.ExecuteStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)

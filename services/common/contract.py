"""Conventions of the gRPC contract that live outside the messages themselves.

ExecuteStream carries many callers' calls, so one message that does not parse
(nested deeper than protobuf's recursion limit, larger than the limit, or plain
garbage) must cost its own call and nothing else. Both ends therefore read
stream messages leniently: a message that does not parse whole arrives as
`Unreadable`, and `salvage` reads it again through a wire-compatible envelope
in which the call's payload is opaque bytes, which recovers every call id and
parses each payload on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from toolscore.v1 import executor_pb2 as ex

from services.common.errors import MeshError, rebuild

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

M = TypeVar("M", bound=Any)  # ExecuteStreamRequest or ExecuteStreamResponse
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


def coalesce(queued: list[M], limit: int = MAX_BATCH_BYTES) -> tuple[M, int]:
    """The first queued message, carrying in its `batch` as many of the next ones as keep the whole
    message within `limit` bytes (see `batch_limit`), and how many queued messages it carries in all
    (an outbox's `take`, services.common.outbox)."""
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


def lenient(cls: type[M], max_bytes: int = 0) -> Any:
    """A gRPC deserializer for stream messages of `cls` that never raises: a message that does not
    parse (or is over `max_bytes`, when given) comes out as `Unreadable` for the reader to answer."""

    def parse(raw: bytes) -> M | Unreadable:
        if max_bytes and len(raw) > max_bytes:
            return Unreadable(raw, f"{len(raw)} bytes, over the {max_bytes}-byte message limit", True)
        try:
            msg: M = cls.FromString(raw)  # Message.FromString is Any to mypy (no protobuf hints)
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

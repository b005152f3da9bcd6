"""The mesh's one exception tree, and its mapping to gRPC status with ErrorInfo.

    MeshError                      (INTERNAL)
    ├── InvalidRequest             (INVALID_ARGUMENT)
    │   └── InvalidArguments       (INVALID_ARGUMENT, with field violations)
    ├── NotFound                   (NOT_FOUND)
    ├── AlreadyExists              (ALREADY_EXISTS)
    ├── FailedPrecondition         (FAILED_PRECONDITION)
    ├── OutOfRange                 (OUT_OF_RANGE)
    ├── Unavailable                (UNAVAILABLE)
    ├── DeadlineExceeded           (DEADLINE_EXCEEDED)
    ├── Unauthenticated            (UNAUTHENTICATED)
    └── ResourceExhausted          (RESOURCE_EXHAUSTED)

A tool that fails is *not* an exception: it is an `ExecuteToolResponse` with
`is_error`. These are for protocol faults; the few raised on the tool's side
of a call (TOOL_TIMEOUT, TOOL_SERVER_UNAVAILABLE, SERVER_DISCONNECTED, and
InvalidArguments) the Router turns into results (services/router/failures.py,
the failure policy). gRPC maps them here; HTTP (edge/errors_http.py),
JSON-RPC (edge/mcp/results.py) and the ToolScore WebSocket (edge/errors_ws.py)
each in one module, from the same objects (code and reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "toolscore.dev"


class MeshError(Exception):
    """A protocol-level failure with a canonical code and a machine-readable reason."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status carrying one ErrorInfo (plus subclass details)."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        details = [info, *self._extra_details()]
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def _extra_details(self) -> Sequence[object]:
        return ()

    def to_json(self) -> dict[str, object]:
        """The JSON error body used by REST and JSON-RPC data."""
        return {
            "code": self.code.name,
            "reason": self.reason,
            "message": self.message,
            **({"metadata": self.metadata} if self.metadata else {}),
        }


class InvalidRequest(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"


class InvalidArguments(InvalidRequest):
    """Arguments that violate a capability's input schema."""

    reason = "INVALID_ARGUMENTS"

    def __init__(
        self,
        message: str,
        violations: Sequence[tuple[str, str]],
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)

    def _extra_details(self) -> Sequence[object]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["violations"] = [{"field": f, "description": d} for f, d in self.violations]
        return body


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class OutOfRange(MeshError):
    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhausted(MeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
    )
}


def trailing_metadata(err: MeshError) -> tuple[tuple[str, str | bytes], ...]:
    """gRPC trailing metadata carrying the rich status."""
    # grpc_status ships no type hints: its status is Any.
    metadata: tuple[tuple[str, str | bytes], ...] = rpc_status.to_status(err.to_status()).trailing_metadata
    return metadata


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError) -> MeshError:
    """Rebuild a MeshError from a received RPC error, keeping reason and metadata."""
    code = exc.code()
    message = exc.details() or code.name
    reason, metadata = code.name, {}
    status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR):
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    return rebuild(code, message, reason, metadata)


def rebuild(code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]) -> MeshError:
    """The MeshError a peer reported by its code, message and ErrorInfo (an RPC error, a CallFault)."""
    cls = _BY_CODE.get(code, MeshError)
    err = cls(message, reason=reason, metadata=metadata)
    if cls is MeshError:
        err.code = code  # keep the original code for anything unmapped
    return err


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo inside a google.rpc.Status, if any."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return info
    return None


__all__ = [
    "DOMAIN",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArguments",
    "InvalidRequest",
    "MeshError",
    "NotFound",
    "OutOfRange",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_info",
    "from_rpc_error",
    "rebuild",
    "trailing_metadata",
]

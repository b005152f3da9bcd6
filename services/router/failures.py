"""The mesh's failure policy, decided once: which failures of a call are the tool's (a result) and
which are the protocol's (an error).

A call that reached its tool's side and failed there (the tool did not answer in time, its
server could not be reached or went away mid-call, the server answered with an RPC fault), and a
call whose arguments the tool's input schema does not accept (what the tool itself would have
answered with INVALID_INPUT; the caller, often a model, reads why and corrects the call), is
the tool's failure: the Router turns it into an `ExecuteResponse` with `is_error` and an
`ErrorType`, so every transport presents it as a result (REST `success: false`/`is_error`,
MCP `isError`, the ToolScore WebSocket's `success: false`, gRPC ExecuteTool `is_error`).
Everything else (a malformed call, an unknown tool or action, auth, the hub unreachable, a call
too large, no route in this process) stays a MeshError, which each wire format maps in its own
module (gRPC: services/common/errors.py; HTTP: edge/errors_http.py; JSON-RPC: edge/mcp/results.py;
the ToolScore WebSocket: edge/errors_ws.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from toolscore.v1 import executor_pb2 as ex
from toolscore.v1 import tool_pb2

from services.common.errors import InvalidArguments, MeshError
from services.common.jsonvalue import text_result

# The reasons of failures that belong to the tool, and the ErrorType each one is reported as.
TOOL_SIDE: Mapping[str, int] = {
    "TOOL_TIMEOUT": tool_pb2.ERROR_TYPE_TIMEOUT,  # the tool's server did not answer in time
    "TOOL_SERVER_UNAVAILABLE": tool_pb2.ERROR_TYPE_NETWORK,  # unreachable, or gone mid-call
    "SERVER_DISCONNECTED": tool_pb2.ERROR_TYPE_NETWORK,  # a dialled-in server's connection dropped
    # In a cluster, the node whose executor held the call's session is gone: the session with it.
    "SESSION_OWNER_GONE": tool_pb2.ERROR_TYPE_SYSTEM,
}


def failure_result(kind: int, message: str) -> ex.ExecuteResponse:
    """A tool failure as a result: is_error with the reason in `error` and in a text block."""
    return text_result(message, is_error=True, error_type=kind)


def tool_side_result(err: MeshError) -> ex.ExecuteResponse | None:
    """The result a tool-side failure is reported as; None for a protocol fault (it stays an error)."""
    kind = TOOL_SIDE.get(err.reason)
    return None if kind is None else failure_result(kind, err.message)


def invalid_input_result(err: InvalidArguments) -> ex.ExecuteResponse:
    """Arguments the input schema refuses, as an INVALID_INPUT result naming every violation."""
    text = err.message
    if len(err.violations) > 1:
        text += "\n" + "\n".join(f"- {field}: {why}" for field, why in err.violations)
    return failure_result(tool_pb2.ERROR_TYPE_INVALID_INPUT, text)


def stream_call_result(err: MeshError) -> ex.ExecuteResponse:
    """A call's failure on a multiplexed stream, which has no per-call status: always a result
    (a protocol fault as SYSTEM, what the stream servers of the toolkit answer too)."""
    return tool_side_result(err) or failure_result(tool_pb2.ERROR_TYPE_SYSTEM, err.message)


__all__ = ["TOOL_SIDE", "failure_result", "invalid_input_result", "stream_call_result", "tool_side_result"]

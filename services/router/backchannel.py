"""A call's way back to the client that made it: MCP's server-initiated requests, hop by hop.

An MCP server running a call may ask the client that made it for something (`sampling/createMessage`,
`elicitation/create`, `roots/list`). The request travels back along the call's own path: the
server's session in the hub (services/discovery/server_runner.py), the hub's ExecuteStream
(services/toolkit/server.py CallStream sends `client_request`), each router on the way
(channels.Mux relays it to its caller), the edge's MCP session of the calling client
(edge/mcp/client_requests.py); the answer comes back the same way as `client_response`.

A call's progress hook is the carrier: a hop that can ask its caller passes a `Backchannel`
(the hook, plus `ask`) where it would pass its progress hook, so no signature changes along the
router and nothing is added to a call that never asks. `ask_of(hook)` is how a hop finds it.
A hop that cannot ask (a unary caller, REST, a client that did not declare the capability)
refuses with a `ClientError`, which the MCP server receives as a JSON-RPC error.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from toolscore.v1 import executor_pb2 as ex

# The requests an MCP server may send the client of a call, and the client capability each needs.
METHODS: dict[str, str] = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
MAX_PARAMS_BYTES = 256 * 1024  # a request's params, and a client's result, as JSON
MAX_OUTSTANDING = 4  # requests waiting for the client's answer, per call
# JSON-RPC codes of the refusals (MCP servers read them as the client's error).
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
TIMEOUT = -32001  # what the MCP SDKs use for a request that timed out

Ask = Callable[[str, dict[str, Any], float], Awaitable[dict[str, Any]]]
ProgressFn = Callable[[ex.Progress], None]


class ClientError(Exception):
    """The JSON-RPC error that answers a server's request (the client's own, or a refusal on the way)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_pb(self) -> ex.ClientError:
        data = "" if self.data is None else json.dumps(self.data)[:MAX_PARAMS_BYTES]
        return ex.ClientError(code=self.code, message=self.message[:4096], data_json=data)

    @classmethod
    def from_pb(cls, err: ex.ClientError) -> ClientError:
        try:
            data = json.loads(err.data_json) if err.data_json else None
        except ValueError:
            data = None
        return cls(err.code, err.message, data)


def refusal(method: str, why: str) -> ClientError:
    """The error a hop answers a request with when its caller cannot be asked."""
    return ClientError(INVALID_REQUEST, f"the client of this call cannot answer {method}: {why}")


class Backchannel:
    """A call's progress hook that can also `ask` the caller. Called as the hook it wraps."""

    __slots__ = ("ask", "progress")

    def __init__(self, progress: ProgressFn | None, ask: Ask) -> None:
        self.progress, self.ask = progress, ask

    def __call__(self, note: ex.Progress) -> None:
        if self.progress is not None:
            self.progress(note)


def ask_of(hook: object) -> Ask | None:
    """The `ask` a call's progress hook carries, or None when its caller cannot be asked."""
    return getattr(hook, "ask", None)


def request_pb(request_id: int, method: str, params: dict[str, Any]) -> ex.ClientRequest:
    """A ClientRequest for `method`; ClientError when its params are over the bound."""
    text = json.dumps(params, separators=(",", ":"))
    if len(text) > MAX_PARAMS_BYTES:
        raise ClientError(INVALID_REQUEST, f"{method} params are larger than {MAX_PARAMS_BYTES} bytes")
    return ex.ClientRequest(request_id=request_id, method=method, params_json=text)


def params_of(request: ex.ClientRequest) -> dict[str, Any]:
    """A ClientRequest's method checked and its params parsed; ClientError when refused."""
    if request.method not in METHODS:
        raise ClientError(METHOD_NOT_FOUND, f"{request.method!r} is not relayed to clients")
    if len(request.params_json) > MAX_PARAMS_BYTES:
        raise ClientError(INVALID_REQUEST, f"params are larger than {MAX_PARAMS_BYTES} bytes")
    try:
        params = json.loads(request.params_json) if request.params_json else {}
    except ValueError:
        raise ClientError(INVALID_REQUEST, "params are not JSON") from None
    if not isinstance(params, dict):
        raise ClientError(INVALID_REQUEST, "params must be a JSON object")
    return params


def response_pb(request_id: int, outcome: dict[str, Any] | ClientError) -> ex.ClientResponse:
    """The ClientResponse carrying a result (bounded) or an error."""
    if isinstance(outcome, ClientError):
        return ex.ClientResponse(request_id=request_id, error=outcome.to_pb())
    text = json.dumps(outcome, separators=(",", ":"))
    if len(text) > MAX_PARAMS_BYTES:
        err = ClientError(INTERNAL_ERROR, f"the client's result is larger than {MAX_PARAMS_BYTES} bytes")
        return ex.ClientResponse(request_id=request_id, error=err.to_pb())
    return ex.ClientResponse(request_id=request_id, result_json=text)


def outcome_of(response: ex.ClientResponse) -> dict[str, Any]:
    """A ClientResponse's result; its error raised as ClientError."""
    if response.HasField("error"):
        raise ClientError.from_pb(response.error)
    try:
        result = json.loads(response.result_json)
    except ValueError:
        raise ClientError(INTERNAL_ERROR, "the client's result is not JSON") from None
    if not isinstance(result, dict):
        raise ClientError(INTERNAL_ERROR, "the client's result is not a JSON object")
    return result

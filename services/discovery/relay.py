"""MCP requests other than `tools/call` relayed to one server's session: which, how bounded, as JSON.

Resource subscriptions are relayed too, held for the edge's watch once per (server, URI)
(`subscription`, services/discovery/resource_subscriptions.py).

The edge federates installed servers' prompts, resources and completion by sending each such
request here (ToolScoreService.RelayServerRequest, services/discovery/servicer.py). A request
is checked (a relayed method, a JSON object of bounded size), validated by the SDK's models,
sent on the server's current session with a deadline, and its result validated and returned as
JSON without the protocol era's envelope fields, which the edge stamps for its own client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types.methods import MONOLITH_REQUESTS, MONOLITH_RESULTS
from pydantic import TypeAdapter, ValidationError
from toolscore.v1 import toolscore_pb2 as ts

from services.common.errors import DeadlineExceeded, InvalidRequest, ResourceExhausted, Unavailable
from services.discovery.resource_subscriptions import ResourceSubscriptions
from services.discovery.server_runner import ServerRunner

# The methods relayed, and the server capability each needs (docs/mcp.md, "Federated servers").
RELAYED: dict[str, str] = {
    "prompts/list": "prompts",
    "prompts/get": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resources",
    "resources/read": "resources",
    "completion/complete": "completions",
}
# Held for a watch, once per (server, URI) on the server (resource_subscriptions.py).
SUBSCRIPTIONS = frozenset({"resources/subscribe", "resources/unsubscribe"})
MAX_PARAMS_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0
# Fields of a 2026-07-28 result that describe the hop to the hub, not the content.
_ENVELOPE = ("resultType", "ttlMs", "cacheScope", "_meta")
_RESULTS: dict[str, TypeAdapter[Any]] = {m: TypeAdapter(cast(Any, MONOLITH_RESULTS[m])) for m in RELAYED}


def parse(method: str, params_json: str) -> Any:
    """The SDK request model for `method` with `params_json`; InvalidRequest when either is refused."""
    if method not in RELAYED and method not in SUBSCRIPTIONS:
        raise InvalidRequest(
            f"{method!r} is not relayed to servers", reason="METHOD_NOT_RELAYED", metadata={"method": method}
        )
    if len(params_json) > MAX_PARAMS_BYTES:
        raise InvalidRequest(
            f"params are larger than {MAX_PARAMS_BYTES} bytes",
            reason="PARAMS_TOO_LARGE",
            metadata={"max_bytes": str(MAX_PARAMS_BYTES)},
        )
    try:
        params = json.loads(params_json) if params_json else None
    except ValueError as exc:
        raise InvalidRequest(f"params_json is not JSON: {exc}", reason="INVALID_PARAMS") from None
    if params is not None and not isinstance(params, dict):
        raise InvalidRequest("params_json must hold a JSON object", reason="INVALID_PARAMS")
    if isinstance(params, dict):
        params.pop("_meta", None)  # the edge's client's envelope: the hub speaks for itself
    try:
        return MONOLITH_REQUESTS[method].model_validate({"method": method, "params": params})
    except ValidationError as exc:
        raise InvalidRequest(
            f"invalid params for {method}: {exc.errors()[0].get('msg', 'invalid')}", reason="INVALID_PARAMS"
        ) from None


async def subscription(
    subscriptions: ResourceSubscriptions,
    runner: ServerRunner,
    tool_id: str,
    method: str,
    params_json: str,
    watch_id: str,
    timeout_s: float,
) -> ts.RelayServerRequestResponse:
    """`resources/subscribe` or `resources/unsubscribe` of one URI for the watch `watch_id`: `{}`,
    or the server's JSON-RPC error (a server that does not offer subscriptions: its -32601)."""
    request = parse(method, params_json)
    if not watch_id:
        raise InvalidRequest(f"{method} needs the watch_id of an open watch", reason="WATCH_ID_REQUIRED")
    uri = str(request.params.uri)
    if method == "resources/unsubscribe":
        subscriptions.unsubscribe(watch_id, tool_id, uri)
        return ts.RelayServerRequestResponse(result_json="{}")
    caps = runner.capabilities
    if runner.client is not None and caps is not None and not (caps.resources and caps.resources.subscribe):
        message = f"MCP server {runner.name} offers no resource subscriptions"
        error = ts.McpError(code=types.METHOD_NOT_FOUND, message=message)
        return ts.RelayServerRequestResponse(error=error)
    try:
        await subscriptions.subscribe(watch_id, tool_id, uri, timeout_s)
    except TimeoutError:
        raise _timeout(runner, method, timeout_s) from None
    except MCPError as exc:
        return _server_error(runner, method, exc)
    return ts.RelayServerRequestResponse(result_json="{}")


async def send(
    runner: ServerRunner, method: str, params_json: str, timeout_s: float, max_result_bytes: int
) -> ts.RelayServerRequestResponse:
    """One request on the runner's current session: its result, or the server's JSON-RPC error."""
    request = parse(method, params_json)
    client = runner.connected()
    try:
        async with asyncio.timeout(timeout_s):
            result = await client.session.send_request(
                request, _RESULTS[method], request_read_timeout_seconds=timeout_s
            )
    except TimeoutError:
        raise _timeout(runner, method, timeout_s) from None
    except MCPError as exc:
        return _server_error(runner, method, exc)
    except ValidationError as exc:  # the server answered something its protocol does not allow
        raise Unavailable(
            f"MCP server {runner.name} answered {method} with an invalid result: {exc.error_count()} errors",
            reason="MCP_SERVER_INVALID_RESULT",
            metadata={"server": runner.name},
        ) from None
    if isinstance(result, types.InputRequiredResult):
        raise Unavailable(
            f"MCP server {runner.name} asked for input during {method}; relays do not carry input requests",
            reason="MCP_INPUT_REQUIRED",
            metadata={"server": runner.name},
        )
    out = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    for key in _ENVELOPE:
        out.pop(key, None)
    text = json.dumps(out, separators=(",", ":"))
    if len(text) > max_result_bytes:
        raise ResourceExhausted(
            f"MCP server {runner.name} answered {method} with more than {max_result_bytes} bytes",
            reason="RESULT_TOO_LARGE",
            metadata={"server": runner.name, "max_bytes": str(max_result_bytes)},
        )
    return ts.RelayServerRequestResponse(result_json=text)


def _timeout(runner: ServerRunner, method: str, timeout_s: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"MCP server {runner.name} did not answer {method} within {timeout_s:g}s",
        reason="MCP_SERVER_TIMEOUT",
        metadata={"server": runner.name},
    )


def _server_error(runner: ServerRunner, method: str, exc: MCPError) -> ts.RelayServerRequestResponse:
    """The server's JSON-RPC error as it sent it (Unavailable when it is the connection closing)."""
    if exc.code == types.CONNECTION_CLOSED:
        raise Unavailable(
            f"MCP server {runner.name} closed the connection during {method}",
            reason="MCP_SERVER_DOWN",
            metadata={"server": runner.name},
        ) from None
    data = "" if exc.data is None else json.dumps(exc.data)[:MAX_PARAMS_BYTES]
    error = ts.McpError(code=exc.code, message=exc.message[:4096], data_json=data)
    return ts.RelayServerRequestResponse(error=error)

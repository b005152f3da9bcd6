"""Every JSON the edge reads is bounded: too deep is a clear 400 (or the transport's error), logged
quietly, and values at the bound still go through."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest
import websockets

from services.common.jsonvalue import MAX_DEPTH
from tests.edge.conftest import EdgeHandle

LEVELS = 200_000
DEEP_ARRAY = b"[" * LEVELS + b"]" * LEVELS


def deep_in(prefix: str, suffix: str) -> bytes:
    """A document with 200,000 nested arrays where a value goes."""
    return prefix.encode() + DEEP_ARRAY + suffix.encode()


def nested(depth: int) -> dict[str, Any]:
    """An object nesting `depth` objects, itself included."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing above INFO and no traceback was logged for the refused requests."""
    loud = [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, [r.getMessage()[:200] for r in loud]


async def test_a_body_nested_200000_levels_is_a_400_with_no_traceback_on_every_rest_route(
    edge: EdgeHandle, registered_echo: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    for path, body in [
        ("/api/v1/tools/echo/call", deep_in('{"action": "echo", "arguments": {"text": ', "}}")),
        ("/api/v1/tools/execute", deep_in('{"tool_id": "echo", "action": "echo", "parameters": ', "}")),
        ("/api/v1/tools", deep_in('{"tool_id": "x", "capabilities": ', "}")),
        ("/mcp/search", deep_in('{"query": ', "}")),
    ]:
        status, answer = await edge.post(path, data=body, headers={"content-type": "application/json"})
        assert status == 400 and answer["reason"] == "JSON_TOO_DEEP", (path, status, answer)
    quiet(caplog)
    status, answer = await edge.post(
        "/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": "ok"}}
    )
    assert status == 200 and answer["structured"] == {"text": "ok"}


async def test_mcp_over_http_answers_a_deep_body_with_a_parse_error(
    edge: EdgeHandle, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    status, answer = await edge.post(
        "/mcp",
        data=DEEP_ARRAY,
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
    )
    assert status == 400 and answer["error"]["code"] == -32700 and answer["id"] is None
    quiet(caplog)


@pytest.mark.parametrize(
    ("path", "then", "answered"),
    [
        ("/api/v1/events/tools", {"type": "ping"}, "pong"),
        ("/websocket", {"type": "list_tools", "request_id": "r1"}, "list_tools_response"),
        ("/ws/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, None),
    ],
)
async def test_a_deep_websocket_message_gets_an_error_and_the_connection_serves_on(
    edge: EdgeHandle, caplog: pytest.LogCaptureFixture, path: str, then: dict[str, Any], answered: str | None
):
    caplog.set_level(logging.INFO)
    async with websockets.connect(edge.ws_url(path), open_timeout=5, close_timeout=2, max_size=None) as ws:
        await ws.send(DEEP_ARRAY.decode())
        await ws.send(json.dumps(then))
        async with asyncio.timeout(10):
            replies: list[dict[str, Any]] = []
            while len(replies) < 2:
                reply = json.loads(await ws.recv())
                if reply.get("type") != "welcome":  # the events socket greets first
                    replies.append(reply)
    if answered is None:  # JSON-RPC: a parse error, then the ping's result
        assert replies[0]["error"]["code"] == -32700 and replies[1] == {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {},
        }
    else:
        assert replies[0]["type"] == "error" and "deeper than" in replies[0]["message"]
        assert replies[1]["type"] == answered
    quiet(caplog)


async def test_arguments_at_the_depth_bound_are_called_and_one_level_more_is_a_400(
    edge: EdgeHandle, registered_echo: str
):
    at = {"text": "deep", "extra": nested(MAX_DEPTH - 1)}  # the arguments object is the first level
    status, answer = await edge.post("/api/v1/tools/echo/call", {"action": "echo", "arguments": at})
    assert status == 200 and answer["structured"] == {"text": "deep"}, answer
    above = {"text": "deep", "extra": nested(MAX_DEPTH)}
    for path, body in [
        ("/api/v1/tools/echo/call", {"action": "echo", "arguments": above}),
        ("/api/v1/tools/execute", {"tool_id": "echo", "action": "echo", "parameters": above}),
    ]:
        status, answer = await edge.post(path, body)
        assert status == 400 and answer["reason"] == "ARGUMENTS_TOO_DEEP", (path, answer)
        assert answer["metadata"] == {"limit": str(MAX_DEPTH)}


async def test_a_schema_past_the_depth_bound_is_refused_at_registration_through_the_edge(
    edge: EdgeHandle, echo_server: str
):
    def spec(tool_id: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "tool_id": tool_id,
            "endpoint": echo_server,
            "capabilities": [{"name": "echo", "input_schema": schema}],
        }

    status, answer = await edge.post(
        "/api/v1/tools", spec("at-bound", {"type": "object", "x": nested(MAX_DEPTH - 1)})
    )
    assert status == 201, answer
    for depth in (MAX_DEPTH, MAX_DEPTH + 4):  # one level more; and deep enough to break a Struct copy
        status, answer = await edge.post(
            "/api/v1/tools", spec("too-deep", {"type": "object", "x": nested(depth)})
        )
        assert status == 400 and answer["reason"] == "SCHEMA_TOO_DEEP", answer


def test_a_dialled_in_servers_result_past_the_bound_keeps_its_text_and_never_breaks_the_call():
    from edge.dialled_in import result_response

    deep = result_response({"result": {"success": True, "data": nested(MAX_DEPTH + 4)}})
    assert not deep.HasField("structured") and json.loads(deep.content[0].text.text) == nested(MAX_DEPTH + 4)
    at = result_response({"result": {"success": True, "data": nested(MAX_DEPTH)}})
    assert at.HasField("structured")


async def test_arguments_certainly_over_the_size_limit_are_refused_before_any_of_them_is_converted(
    edge: EdgeHandle, registered_echo: str
):
    # A million array items: building their Struct held the edge's loop seconds (2 million: 2.5 s)
    # before the router refused them by size. The last item cannot be converted at all (a float
    # overflow): a refusal that names it, or a 500, shows the edge converted everything first.
    pad = '{"pad": [' + "0," * 1_000_000 + "1" + "0" * 400 + "]}"
    for path, prefix in [
        ("/api/v1/tools/echo/call", '{"action": "echo", "arguments": '),
        ("/api/v1/tools/execute", '{"tool_id": "echo", "action": "echo", "parameters": '),
    ]:
        body = io.BytesIO((prefix + pad + "}").encode())
        status, answer = await edge.post(path, data=body, headers={"content-type": "application/json"})
        assert (status, answer["reason"]) == (413, "ARGUMENTS_TOO_LARGE"), (path, status, answer)
    call = '{"type": "execute_tool", "request_id": "r1", "tool_id": "echo", "action": "echo", "parameters": '
    async with websockets.connect(edge.ws_url("/websocket"), open_timeout=5, close_timeout=2) as ws:
        await ws.send(call + pad + "}")
        async with asyncio.timeout(10):
            reply = json.loads(await ws.recv())
            while reply.get("type") == "welcome":
                reply = json.loads(await ws.recv())
    assert reply["type"] == "error" and reply["reason"] == "ARGUMENTS_TOO_LARGE", reply
    status, answer = await edge.post(
        "/api/v1/tools/echo/call", {"action": "echo", "arguments": {"text": "ok"}}
    )
    assert status == 200 and answer["structured"] == {"text": "ok"}


async def test_a_number_past_a_doubles_range_is_a_400_not_a_500(edge: EdgeHandle, registered_echo: str):
    body = '{"action": "echo", "arguments": {"text": "x", "n": 1' + "0" * 400 + "}}"
    status, answer = await edge.post(
        "/api/v1/tools/echo/call", data=body, headers={"content-type": "application/json"}
    )
    assert (status, answer["reason"]) == (400, "INVALID_ARGUMENTS_TYPE"), answer

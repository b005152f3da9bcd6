"""The official MCP Python SDK client talks to /mcp over Streamable HTTP, in both protocol eras."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import mcp_types as types
import pytest
import websockets
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError

from edge.mcp import add_routes
from services.common.jsonvalue import MAX_DEPTH
from services.toolkit import Action

from .conftest import Edge, Probe, Register, actions, serve, tool_def

ERAS = ["legacy", "auto"]  # legacy: initialize handshake (2025-11-25); auto: discover -> 2026-07-28
EXPECTED_VERSION = {"legacy": "2025-11-25", "auto": "2026-07-28"}
PYTHON = "python-executor-mcp-server__python_execute"


@pytest.mark.parametrize("mode", ERAS)
async def test_sdk_client_negotiates_the_era_and_lists_every_capability(edge: Edge, kit: Probe, mode: str):
    async with Client(edge.url, mode=mode) as client:
        assert client.protocol_version == EXPECTED_VERSION[mode]
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.tools.list_changed is True
        listed = await client.list_tools()
    names = {t.name for t in listed.tools}
    assert {"kit__echo", "kit__count", "kit__block", "kit__fail", PYTHON} <= names
    echo = next(t for t in listed.tools if t.name == "kit__echo")
    assert echo.input_schema["required"] == ["text"]
    assert echo.output_schema == {"type": "object", "properties": {"text": {"type": "string"}}}
    assert echo.description == "Echo the text back"


@pytest.mark.parametrize("mode", ERAS)
async def test_sdk_client_runs_python_through_the_executor(edge: Edge, mode: str):
    async with Client(edge.url, mode=mode) as client:
        result = await client.call_tool(PYTHON, {"code": "print(6 * 7)"})
    assert result.is_error is not True
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "42\n"
    assert result.structured_content["return_code"] == 0
    assert isinstance(result.content[0], types.TextContent) and "42" in result.content[0].text


@pytest.mark.parametrize("mode", ERAS)
async def test_failing_python_is_an_is_error_result_not_a_protocol_error(edge: Edge, mode: str):
    async with Client(edge.url, mode=mode) as client:
        result = await client.call_tool(PYTHON, {"code": "raise SystemExit(3)"})
    assert result.is_error is True
    assert result.structured_content is not None and result.structured_content["return_code"] == 3


@pytest.mark.parametrize("mode", ERAS)
async def test_echo_tool_on_a_toolkit_server_answers_with_structured_content(
    edge: Edge, kit: Probe, mode: str
):
    async with Client(edge.url, mode=mode) as client:
        result = await client.call_tool("kit__echo", {"text": "hello mesh"})
    assert result.is_error is not True
    assert result.structured_content == {"text": "hello mesh"}


@pytest.mark.parametrize("mode", ERAS)
async def test_a_tool_that_raises_comes_back_as_is_error_with_its_message(edge: Edge, kit: Probe, mode: str):
    async with Client(edge.url, mode=mode) as client:
        result = await client.call_tool("kit__fail", {})
    assert result.is_error is True
    assert isinstance(result.content[0], types.TextContent)
    assert "the tool broke on purpose" in result.content[0].text


@pytest.mark.parametrize("mode", ERAS)
async def test_progress_reported_by_the_tool_reaches_the_client(edge: Edge, kit: Probe, mode: str):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(edge.url, mode=mode) as client:
        result = await client.call_tool("kit__count", {"n": 3}, progress_callback=on_progress)
    assert result.content[0].text == "counted to 3"  # type: ignore[union-attr]
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", ERAS)
async def test_cancelling_a_call_cancels_it_on_the_tool_server(edge: Edge, kit: Probe, mode: str):
    async with Client(edge.url, mode=mode) as client:
        call = asyncio.create_task(client.call_tool("kit__block", {}))
        async with asyncio.timeout(10):
            await kit.started.wait()
        call.cancel()
        async with asyncio.timeout(10):
            await kit.cancelled.wait()
        with pytest.raises(asyncio.CancelledError):
            await call
        again = await client.call_tool("kit__echo", {"text": "still here"})
    assert again.structured_content == {"text": "still here"}


async def test_handshake_client_hears_list_changed_when_a_tool_registers(
    edge: Edge, kit: Probe, register: Register, start_tool_server: Any
):
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(edge.url, mode="legacy", message_handler=on_message) as client:
        acts = actions(Probe())
        _, endpoint = await start_tool_server({"late": acts}, name="late")
        await register(tool_def("late", endpoint, acts))
        async with asyncio.timeout(10):
            await changed.wait()
        names = {t.name for t in (await client.list_tools()).tools}
    assert "late__echo" in names


async def test_modern_client_hears_list_changed_on_its_listen_stream(
    edge: Edge, kit: Probe, register: Register, start_tool_server: Any
):
    async with Client(edge.url) as client:
        assert client.protocol_version == "2026-07-28"
        before = {t.name for t in (await client.list_tools()).tools}
        async with client.listen(tools_list_changed=True) as sub:
            assert sub.honored.tools_list_changed is True
            acts = actions(Probe())
            _, endpoint = await start_tool_server({"later": acts}, name="later")
            await register(tool_def("later", endpoint, acts))
            async with asyncio.timeout(10):
                event = await anext(sub)
            assert event is not None
            after = {t.name for t in (await client.list_tools()).tools}
    assert "later__echo" not in before
    assert "later__echo" in after


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_tool_is_invalid_params(edge: Edge, mode: str):
    async with Client(edge.url, mode=mode) as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("no_such_tool", {})
    assert info.value.error.code == types.INVALID_PARAMS
    assert "no_such_tool" in info.value.error.message


@pytest.mark.parametrize("mode", ERAS)
async def test_arguments_that_violate_the_schema_are_an_is_error_result_the_model_can_read(
    edge: Edge, kit: Probe, mode: str
):
    async with Client(edge.url, mode=mode) as client:
        bad = await client.call_tool("kit__echo", {"text": 5})
        ok = await client.call_tool("kit__echo", {"text": "fine"})
    assert bad.is_error is True  # SEP-1303 (MCP 2025-11-25): a result, not a JSON-RPC error
    assert "5 is not of type 'string'" in bad.content[0].text  # type: ignore[union-attr]
    assert ok.structured_content == {"text": "fine"}


async def test_shutdown_ends_listen_streams_gracefully_and_websockets_with_going_away(gateway: Any, cfg: Any):
    app = web.Application()
    add_routes(app, gateway, gateway.cache, cfg)
    runner, port = await serve(app)
    async with Client(f"http://127.0.0.1:{port}/mcp") as client:
        async with client.listen(tools_list_changed=True) as sub:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/mcp", subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
                async with asyncio.timeout(10):
                    assert json.loads(await ws.recv())["result"] == {}
                cleanup = asyncio.create_task(runner.cleanup())
                async with asyncio.timeout(10):
                    events = [event async for event in sub]  # a graceful end: no SubscriptionLost
                    with pytest.raises(websockets.ConnectionClosed) as info:
                        await ws.recv()
                    await cleanup
    assert events == []
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_arguments_mirrored_in_mcp_param_headers_are_checked(
    edge: Edge, register: Register, start_tool_server: Any
):
    async def where(args: dict[str, Any], ctx: Any) -> str:
        return f"region {args['region']}"

    schema = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
    acts = [Action("where", "Say the region", where, schema)]
    _, endpoint = await start_tool_server({"geo": acts}, name="geo")
    await register(tool_def("geo", endpoint, acts))
    async with Client(edge.url) as client:  # 2026-07-28: the SDK mirrors `region` into Mcp-Param-Region
        await client.list_tools()
        ok = await client.call_tool("geo__where", {"region": "eu-west"})
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "geo__where", "arguments": {"region": "eu-west"}, "_meta": meta},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "geo__where",
        "Mcp-Param-Region": "us-east",
    }
    async with aiohttp.ClientSession() as http, http.post(edge.url, json=body, headers=headers) as r:
        status, lying = r.status, await r.json()
    assert ok.content[0].text == "region eu-west"  # type: ignore[union-attr]
    assert status == 400 and lying["error"]["code"] == types.HEADER_MISMATCH


@pytest.mark.parametrize("mode", ERAS)
async def test_arguments_nested_past_the_bound_are_an_is_error_result_naming_the_bound(
    edge: Edge, kit: Probe, mode: str
):
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):  # with the arguments object: one level past the bound
        deep = {"a": deep}
    async with Client(edge.url, mode=mode) as client:
        bad = await client.call_tool("kit__echo", {"text": "x", "extra": deep})
        ok = await client.call_tool("kit__echo", {"text": "fine"})
    assert bad.is_error is True and str(MAX_DEPTH) in bad.content[0].text  # type: ignore[union-attr]
    assert ok.structured_content == {"text": "fine"}

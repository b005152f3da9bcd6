"""Virtual servers: `/mcp/servers/<server>` serves one installed MCP server's tools under their own
names, as if the client had connected to it directly; named virtual servers and `/mcp` itself are
filtered and renamed by config; list_changed reaches only the endpoint whose tools changed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
import websockets
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError
from toolscore.v1 import discovery_pb2 as pb

from edge.gateway import HubGateway
from edge.mcp import MCP_SERVICE, add_routes
from services.common import config as config_mod
from services.common.config import Config, McpServerConfig
from services.toolkit import Action
from tests.discovery.test_remote_federation import sdk_server  # noqa: F401 (a fixture)

from .conftest import Edge, Probe, Register, actions, serve, tool_def
from .test_websocket import Peer

ERAS = ["legacy", "auto"]
NAME = "io.github.toolscore-tests/sdk-remote"
SERVER = "io.github.toolscore-tests.sdk-remote"  # its tool id
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@pytest.fixture
async def remote(hub_stubs: Any, gateway: HubGateway, sdk_server: str) -> AsyncIterator[str]:  # noqa: F811
    """The official SDK's Streamable HTTP server, installed through the hub (a federated server);
    uninstalled after the test, before the server stops."""
    seen = asyncio.Event()

    def on_event(ev: Any) -> None:
        if ev.tool.tool_id == SERVER:
            seen.set()

    unsubscribe = gateway.cache.subscribe(on_event)
    try:
        resp = await hub_stubs.toolscore.InstallServer(
            pb.InstallServerRequest(name=NAME, remote_url=sdk_server), timeout=30
        )
        async with asyncio.timeout(10):
            await seen.wait()
    finally:
        unsubscribe()
    assert resp.server.tool_id == SERVER
    yield SERVER
    await hub_stubs.toolscore.UninstallServer(pb.UninstallServerRequest(name=NAME), timeout=20)


@contextlib.asynccontextmanager
async def edge_for(gateway: HubGateway, cfg: Config) -> AsyncIterator[Edge]:
    """The MCP routes on their own server, with `cfg`."""
    app = web.Application()
    add_routes(app, gateway, gateway.cache, cfg)
    runner, port = await serve(app)
    try:
        yield Edge(port, app[MCP_SERVICE], app)
    finally:
        await runner.cleanup()


def ws_connect(edge: Edge, path: str) -> Any:
    url = f"ws://127.0.0.1:{edge.port}{path}"
    return websockets.connect(url, subprotocols=["mcp"], open_timeout=5, close_timeout=2)


@pytest.mark.parametrize("mode", ERAS)
async def test_a_virtual_server_lists_an_installed_servers_tools_under_their_own_names_and_calls_them(
    edge: Edge, remote: str, mode: str
):
    async with Client(f"{edge.url}/servers/{remote}", mode=mode) as client:
        assert client.server_capabilities.tools is not None
        listed = await client.list_tools()
        result = await client.call_tool("multiply", {"a": 6, "b": 7})
        greeting = await client.call_tool("greet", {"name": "mesh"})
    assert {t.name for t in listed.tools} == {"multiply", "greet", "grow"}
    multiply = next(t for t in listed.tools if t.name == "multiply")
    assert set(multiply.input_schema["properties"]) == {"a", "b"}
    assert result.is_error is not True and result.structured_content == {"result": 42}
    assert greeting.content[0].text == "Hello, mesh!"  # type: ignore[union-attr]


async def test_a_virtual_server_over_the_websocket_lists_and_calls_the_same_tools(edge: Edge, remote: str):
    async with ws_connect(edge, f"/ws/mcp/servers/{remote}") as ws:
        peer = Peer(ws)
        await peer.initialize()
        listed = await peer.call("tools/list")
        called = await peer.call("tools/call", {"name": "multiply", "arguments": {"a": 2, "b": 21}})
        prefixed = await peer.call(
            "tools/call", {"name": f"{remote}__multiply", "arguments": {"a": 1, "b": 1}}
        )
    assert {t["name"] for t in listed["result"]["tools"]} == {"multiply", "greet", "grow"}
    assert called["result"]["structuredContent"] == {"result": 42}
    assert prefixed["error"]["code"] == types.INVALID_PARAMS  # only its own names, as the server itself


async def test_an_unknown_virtual_server_is_404_json_on_both_transports(edge: Edge):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{edge.url}/servers/no-such-server", json=INIT, headers=HEADERS) as r:
            status, body = r.status, await r.json()
        async with http.get(f"http://127.0.0.1:{edge.port}/ws/mcp/servers/no-such-server") as r:
            ws_status, ws_body = r.status, await r.json()
    assert status == ws_status == 404
    for b in (body, ws_body):
        assert b["error"]["data"]["reason"] == "MCP_SERVER_NOT_FOUND", b
        assert "no-such-server" in b["error"]["message"]


async def test_a_session_serves_only_the_endpoint_it_was_opened_on(edge: Edge, remote: str):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{edge.url}/servers/{remote}", json=INIT, headers=HEADERS) as r:
            sid = r.headers["Mcp-Session-Id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        session = {**HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(edge.url, json=listing, headers=session) as r:
            elsewhere = r.status
        async with http.post(f"{edge.url}/servers/{remote}", json=listing, headers=session) as r:
            own = await r.json()
    assert elsewhere == 404
    assert {t["name"] for t in own["result"]["tools"]} == {"multiply", "greet", "grow"}


@pytest.mark.parametrize("mode", ERAS)
async def test_a_named_virtual_server_applies_its_include_exclude_and_renames(
    gateway: HubGateway, cfg: Config, remote: str, mode: str
):
    math = McpServerConfig(
        name="math", server=remote, include=("multiply", "gr*"), exclude=("grow",), rename=("multiply=times",)
    )
    async with edge_for(gateway, dataclasses.replace(cfg, mcp_servers=(math,))) as edge:
        async with Client(f"{edge.url}/servers/math", mode=mode) as client:
            listed = await client.list_tools()
            times = await client.call_tool("times", {"a": 3, "b": 5})
            with pytest.raises(MCPError) as hidden:
                await client.call_tool("grow", {})
            with pytest.raises(MCPError) as old_name:
                await client.call_tool("multiply", {"a": 1, "b": 1})
    assert {t.name for t in listed.tools} == {"times", "greet"}
    assert times.structured_content == {"result": 15}
    assert hidden.value.error.code == old_name.value.error.code == types.INVALID_PARAMS


@pytest.mark.parametrize("mode", ERAS)
async def test_the_main_endpoint_is_filtered_and_renamed_by_config(
    gateway: HubGateway, cfg: Config, kit: Probe, mode: str
):
    filtered = config_mod.replace(
        cfg,
        edge={"mcp_include": ("kit__*",), "mcp_exclude": ("kit__fail",), "mcp_rename": ("kit__echo=echo",)},
    )
    async with edge_for(gateway, filtered) as edge:
        async with Client(edge.url, mode=mode) as client:
            listed = await client.list_tools()
            echoed = await client.call_tool("echo", {"text": "renamed"})
            with pytest.raises(MCPError) as excluded:
                await client.call_tool("kit__fail", {})
    assert {t.name for t in listed.tools} == {"echo", "kit__count", "kit__block"}
    assert echoed.structured_content == {"text": "renamed"}
    assert excluded.value.error.code == types.INVALID_PARAMS


async def test_list_changed_reaches_only_the_virtual_server_whose_tools_changed(
    edge: Edge, remote: str, kit: Probe, register: Register, start_tool_server: Any
):
    heard = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            heard.set()

    async with ws_connect(edge, "/ws/mcp/servers/kit") as ws:
        kit_peer = Peer(ws)
        await kit_peer.initialize()
        url = f"{edge.url}/servers/{remote}"
        async with Client(url, mode="legacy", message_handler=on_message) as client:
            assert (await client.call_tool("grow", {})).is_error is not True  # the server adds `late`
            async with asyncio.timeout(10):
                await heard.wait()
            grown = {t.name for t in (await client.list_tools()).tools}
        # Anything pushed to the kit endpoint for that change would have come before this answer.
        await kit_peer.call("ping")
        assert not [n for n in kit_peer.notes if n.get("method") == "notifications/tools/list_changed"]
        echo = actions(Probe())[0]
        acts = [*actions(Probe()), Action("echo_again", echo.description, echo.fn, echo.input_schema)]
        _, endpoint = await start_tool_server({"kit": acts}, name="kit2")
        await register(tool_def("kit", endpoint, acts))  # the kit's own listing changes
        note = await kit_peer.recv()
        listed = await kit_peer.call("tools/list")
    assert "late" in grown
    assert note["method"] == "notifications/tools/list_changed"
    assert "echo_again" in {t["name"] for t in listed["result"]["tools"]}


async def test_a_modern_client_hears_list_changed_of_its_virtual_server_on_its_listen_stream(
    edge: Edge, remote: str
):
    async with Client(f"{edge.url}/servers/{remote}") as client:
        assert client.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True) as sub:
            assert (await client.call_tool("grow", {})).is_error is not True
            async with asyncio.timeout(10):
                event = await anext(sub)
            assert event is not None
            after = {t.name for t in (await client.list_tools()).tools}
    assert after == {"multiply", "greet", "grow", "late"}


def test_virtual_servers_are_read_from_toml_and_checked_when_loaded(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text(
        '[[mcp_servers]]\nname = "math"\nserver = "calc"\ninclude = ["add*"]\nrename = ["add=plus"]\n'
        '[edge]\nmcp_exclude = ["*__secret"]\n'
    )
    loaded = config_mod.load(good, env={})
    assert loaded.mcp_servers == (
        McpServerConfig(name="math", server="calc", include=("add*",), rename=("add=plus",)),
    )
    assert loaded.edge.mcp_exclude == ("*__secret",)
    for bad in (
        'name = "search"',
        'name = "a b"',
        'name = "x"\nrename = ["no-equals"]',
        'name = "x"\nrename = ["a=c", "b=c"]',
    ):
        path = tmp_path / "bad.toml"
        path.write_text(f"[[mcp_servers]]\n{bad}\n")
        with pytest.raises(config_mod.ConfigError):
            config_mod.load(path, env={})

"""Tool search: `/mcp/servers/search` (and `/mcp` by config) lists two meta-tools, `find_tools` over the
registry's search index and `call_tool` with the caller's own authority."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from edge.gateway import HubGateway
from edge.mcp import tool_search
from services.common import config as config_mod
from services.common.config import Config, McpServerConfig
from services.hub.app import Hub
from services.toolkit import Action
from tests.edge.conftest import edge_config

from .conftest import ECHO_SCHEMA, Edge, Probe, Register, tool_def
from .test_virtual_servers import edge_for, ws_connect
from .test_websocket import Peer

ERAS = ["legacy", "auto"]
PYTHON = "python-executor-mcp-server__python_execute"


async def _guarded(register: Register, start_tool_server: Any) -> asyncio.Event:
    """A tool whose one action is admin-only; the event is set if it ever runs."""
    ran = asyncio.Event()

    async def wipe(args: dict[str, Any], ctx: Any) -> str:
        ran.set()
        return "wiped"

    acts = [Action("wipe", "Wipe the vault clean (admin only)", wipe, requires_admin=True)]
    _, endpoint = await start_tool_server({"guarded": acts}, name="guarded")
    await register(tool_def("guarded", endpoint, acts))
    return ran


@pytest.mark.parametrize("mode", ERAS)
async def test_the_search_server_lists_exactly_find_tools_and_call_tool(edge: Edge, kit: Probe, mode: str):
    async with Client(f"{edge.url}/servers/search", mode=mode) as client:
        listed = await client.list_tools()
    assert [t.name for t in listed.tools] == ["call_tool", "find_tools"]
    find = next(t for t in listed.tools if t.name == "find_tools")
    assert find.input_schema["required"] == ["query"]
    assert find.output_schema is not None and "tools" in find.output_schema["properties"]


@pytest.mark.parametrize("mode", ERAS)
async def test_find_tools_answers_the_best_matches_with_their_schemas_scores_and_why(
    edge: Edge, kit: Probe, mode: str
):
    async with Client(f"{edge.url}/servers/search", mode=mode) as client:
        found = await client.call_tool("find_tools", {"query": "echo the text back", "limit": 3})
    assert found.is_error is not True and found.structured_content is not None
    tools = found.structured_content["tools"]
    assert 1 <= len(tools) <= 3
    best = tools[0]
    assert best["name"] == "kit__echo"
    assert best["inputSchema"] == ECHO_SCHEMA
    assert best["score"] > 0 and any(m.startswith("echo (") for m in best["matched"])
    assert [t["score"] for t in tools] == sorted((t["score"] for t in tools), reverse=True)
    assert json.loads(found.content[0].text) == found.structured_content  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_call_tool_calls_the_named_tool_as_a_direct_call_would(edge: Edge, kit: Probe, mode: str):
    async with Client(f"{edge.url}/servers/search", mode=mode) as client:
        echoed = await client.call_tool(
            "call_tool", {"name": "kit__echo", "arguments": {"text": "via search"}}
        )
        failed = await client.call_tool("call_tool", {"name": "kit__fail"})
        unusable = await client.call_tool("call_tool", {"arguments": {}})
    assert echoed.is_error is not True and echoed.structured_content == {"text": "via search"}
    assert failed.is_error is True and "the tool broke on purpose" in failed.content[0].text  # type: ignore[union-attr]
    assert unusable.is_error is True and "name" in unusable.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_a_tool_the_caller_may_not_call_is_refused_by_call_tool_exactly_as_by_tools_call(
    edge: Edge, kit: Probe, register: Register, start_tool_server: Any, mode: str
):
    ran = await _guarded(register, start_tool_server)
    async with Client(edge.url, mode=mode) as direct:
        with pytest.raises(MCPError) as refused_directly:
            await direct.call_tool("guarded__wipe", {})
        with pytest.raises(MCPError) as unknown_directly:
            await direct.call_tool("no_such_tool", {})
    async with Client(f"{edge.url}/servers/search", mode=mode) as client:
        found = await client.call_tool("find_tools", {"query": "wipe the vault"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("call_tool", {"name": "guarded__wipe", "arguments": {}})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("call_tool", {"name": "no_such_tool"})
    assert found.structured_content is not None
    assert "guarded__wipe" not in {t["name"] for t in found.structured_content["tools"]}  # not the caller's
    assert refused.value.error.code == refused_directly.value.error.code == -32003
    assert refused.value.error.data == refused_directly.value.error.data
    assert unknown.value.error.code == unknown_directly.value.error.code == types.INVALID_PARAMS
    assert not ran.is_set()


async def test_a_search_server_finds_and_calls_only_what_its_view_holds(
    gateway: HubGateway, cfg: Config, kit: Probe
):
    kit_only = McpServerConfig(name="kit-search", include=("kit__*",), tool_search=True)
    async with edge_for(gateway, dataclasses.replace(cfg, mcp_servers=(kit_only,))) as edge:
        async with Client(f"{edge.url}/servers/kit-search", mode="legacy") as client:
            python = await client.call_tool("find_tools", {"query": "python execute code"})
            with pytest.raises(MCPError) as outside:
                await client.call_tool("call_tool", {"name": PYTHON, "arguments": {"code": "1"}})
            counted = await client.call_tool("call_tool", {"name": "kit__count", "arguments": {"n": 2}})
    assert python.structured_content is not None
    assert all(t["name"].startswith("kit__") for t in python.structured_content["tools"])
    assert outside.value.error.code == types.INVALID_PARAMS
    assert counted.content[0].text == "counted to 2"  # type: ignore[union-attr]


async def test_the_index_is_built_once_and_follows_registry_events(
    edge: Edge, kit: Probe, register: Register, start_tool_server: Any
):
    async with Client(f"{edge.url}/servers/search", mode="legacy") as first:
        before = await first.call_tool("find_tools", {"query": "zanzibar"})
    search = edge.svc.views.resolve("search")
    assert search is not None and search.search is not None
    built = search.search._built
    acts = [Action("ferry", "Book a ferry to Zanzibar", kit_echo_fn, ECHO_SCHEMA)]
    _, endpoint = await start_tool_server({"boats": acts}, name="boats")
    await register(tool_def("boats", endpoint, acts))
    async with Client(f"{edge.url}/servers/search", mode="auto") as second:
        after = await second.call_tool("find_tools", {"query": "zanzibar"})
        booked = await second.call_tool("call_tool", {"name": "boats__ferry", "arguments": {"text": "one"}})
    assert before.structured_content == {"tools": []}
    assert after.structured_content is not None
    assert [t["name"] for t in after.structured_content["tools"]] == ["boats__ferry"]
    assert booked.structured_content == {"text": "one"}
    assert search.search._built is built  # one index for every session, updated, never rebuilt


async def kit_echo_fn(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": args["text"]}


async def test_find_tools_with_unusable_arguments_is_an_is_error_result(edge: Edge, kit: Probe):
    async with Client(f"{edge.url}/servers/search", mode="legacy") as client:
        empty = await client.call_tool("find_tools", {"query": "   "})
        huge = await client.call_tool("find_tools", {"query": "x" * 5000})
        limit = await client.call_tool("find_tools", {"query": "echo", "limit": 0})
    for result in (empty, huge, limit):
        assert result.is_error is True, result


async def test_the_main_endpoint_lists_only_the_meta_tools_when_configured_and_over_the_websocket(
    gateway: HubGateway, cfg: Config, kit: Probe
):
    async with edge_for(gateway, config_mod.replace(cfg, edge={"mcp_tool_search": True})) as edge:
        async with ws_connect(edge, "/ws/mcp") as ws:
            peer = Peer(ws)
            await peer.initialize()
            listed = await peer.call("tools/list")
            found = await peer.call("tools/call", {"name": "find_tools", "arguments": {"query": "count"}})
            direct = await peer.call("tools/call", {"name": "kit__count", "arguments": {}})
    assert [t["name"] for t in listed["result"]["tools"]] == ["call_tool", "find_tools"]
    assert found["result"]["structuredContent"]["tools"][0]["name"] == "kit__count"
    assert direct["error"]["code"] == types.INVALID_PARAMS  # only the two meta-tools are listed and callable


async def test_an_admin_only_tool_is_found_and_called_by_a_caller_with_the_admin_token_only(
    cfg: Config, hub: Hub, register: Register, start_tool_server: Any, start_edge: Any
):
    # The whole edge (its middleware decides each request's authority from its Authorization header).
    ran = await _guarded(register, start_tool_server)
    edge = await start_edge(edge_config(config_mod.replace(cfg, auth={"admin_token": "s3cret"}), hub))
    url = edge.url + "/mcp/servers/search"
    plain = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
    }
    admin = {**plain, "Authorization": "Bearer s3cret"}
    find = {"name": "find_tools", "arguments": {"query": "wipe the vault"}}
    call = {"name": "call_tool", "arguments": {"name": "guarded__wipe"}}
    seen = {}
    async with aiohttp.ClientSession() as http:
        for who, headers in (("plain", plain), ("admin", admin)):
            for n, params in enumerate((find, call)):
                body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
                async with http.post(url, json=body, headers=headers) as r:
                    seen[who, params["name"]] = await r.json()
    names = {
        who: [t["name"] for t in seen[who, "find_tools"]["result"]["structuredContent"]["tools"]]
        for who in ("plain", "admin")
    }
    assert "guarded__wipe" not in names["plain"] and names["admin"][0] == "guarded__wipe"
    assert seen["plain", "call_tool"]["error"]["code"] == -32003
    assert seen["admin", "call_tool"]["result"]["content"][0]["text"] == "wiped" and ran.is_set()


async def test_a_find_tools_during_the_build_waits_the_configured_time_then_says_the_index_is_being_built(
    gateway: HubGateway, cfg: Config, kit: Probe, monkeypatch: pytest.MonkeyPatch
):
    # The build holds at its first document until the test lets it go (on the index's thread).
    go = threading.Event()
    doc = tool_search._doc

    def held(t: Any) -> Any:
        go.wait(30)
        return doc(t)

    monkeypatch.setattr(tool_search, "_doc", held)
    waits = config_mod.replace(cfg, edge={"mcp_search_build_wait_s": 0.05})
    try:
        async with (
            edge_for(gateway, waits) as edge,
            Client(f"{edge.url}/servers/search", mode="legacy") as client,
        ):
            early = await client.call_tool("find_tools", {"query": "echo the text back"})
            go.set()
            search = edge.svc.views.resolve("search")
            assert search is not None and search.search is not None
            assert search.search.build_wait_s == 0.05  # the config's, not a constant
            search.search.build_wait_s = 30.0
            later = await client.call_tool("find_tools", {"query": "echo the text back"})
    finally:
        go.set()
    assert early.is_error is True
    text = early.content[0].text  # type: ignore[union-attr]
    assert "the tool index is being built (0 of " in text and "call find_tools again" in text
    assert later.is_error is not True and later.structured_content is not None
    assert later.structured_content["tools"][0]["name"] == "kit__echo"


async def test_a_named_search_server_builds_its_index_when_the_edge_starts(
    gateway: HubGateway, cfg: Config, kit: Probe
):
    named = McpServerConfig(name="kit-search", include=("kit__*",), tool_search=True)
    async with edge_for(gateway, dataclasses.replace(cfg, mcp_servers=(named,))) as edge:
        view = next(v for v in edge.svc.views.all() if v.key == "kit-search")
        assert view.search is not None and view.search._built is not None  # before any client
        index = await view.search._built
        assert [h.tool_id for h in await index.search("count", 1)] == ["kit__count"]

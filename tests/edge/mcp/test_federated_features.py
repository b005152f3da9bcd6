"""Prompts, resources, resource templates and completion of installed servers reach MCP clients of
the edge, in both eras, as the same server answers them directly (official SDK clients on both
sides; the server is the official SDK's MCPServer, federated into a real mesh)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import mcp_types as types
import pytest
import websockets
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2 as ts
from toolscore.v1 import toolscore_pb2_grpc

from edge.mcp.tool_list import tool_name
from tests.discovery.conftest import NS, sdk_http_server
from tests.helpers import deadline

from .conftest import Edge

ERAS = ["legacy", "auto"]  # legacy: initialize handshake (2025-11-25); auto: discover -> 2026-07-28
SCRIPT = "sdk_features_server.py"
# What a listing through the edge adds to each entry: where it comes from.
TOOL_ID_KEY, NAME_KEY = "dev.toolscore/toolId", "dev.toolscore/name"


@contextlib.asynccontextmanager
async def installed(hub: Any, edge: Edge, name: str, url: str) -> AsyncIterator[str]:
    """Federate the server at `url` as `name`; yields its tool id once the edge's cache holds it."""
    seen = asyncio.Event()
    wanted: list[str] = []

    def on_event(event: Any) -> None:
        if wanted and event.tool.tool_id == wanted[0] and event.tool.metadata.get("mcp_features"):
            seen.set()

    unsubscribe = edge.svc.registry.subscribe(on_event)
    try:
        async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
            stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
            resp = await stub.InstallServer(pb.InstallServerRequest(name=name, remote_url=url), timeout=30)
            tool_id = resp.server.tool_id
            wanted.append(tool_id)
            if edge.svc.federation.current().get(tool_id) is None:
                async with deadline(10, f"the edge's registry cache to hold {tool_id}"):
                    await seen.wait()
            yield tool_id
            await stub.UninstallServer(pb.UninstallServerRequest(name=name), timeout=20)
    finally:
        unsubscribe()


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    async with sdk_http_server(SCRIPT, "features") as url:
        yield url


def _plain(model: Any) -> Any:
    """A result as JSON, without what a hop may add (`_meta`)."""
    out = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    out.pop("_meta", None)
    return out


def _unmeta(entries: list[Any], rename: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        d = e.model_dump(by_alias=True, mode="json", exclude_none=True)
        meta = d.pop("_meta", None) or {}
        meta.pop(TOOL_ID_KEY, None)
        meta.pop(NAME_KEY, None)
        if meta:
            d["_meta"] = meta
        out.append(rename(d))
    return out


@pytest.mark.parametrize("mode", ERAS)
async def test_prompts_resources_templates_and_completions_through_the_edge_match_the_server(
    hub: Any, edge: Edge, server_url: str, mode: str
) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(server_url, mode=mode) as direct, Client(edge.url, mode=mode) as via:
            caps = via.server_capabilities
            assert caps.prompts is not None and caps.resources is not None and caps.completions is not None

            prefixed = {tool_name(tool_id, p): p for p in ("greeting", "review")}
            d_prompts = (await direct.list_prompts()).prompts
            v_prompts = (await via.list_prompts()).prompts
            assert {p.name for p in v_prompts} == set(prefixed)
            assert all((p.meta or {}).get(TOOL_ID_KEY) == tool_id for p in v_prompts)
            unprefixed = _unmeta(v_prompts, lambda d: {**d, "name": prefixed[d["name"]]})
            assert sorted(unprefixed, key=lambda d: d["name"]) == _unmeta(
                sorted(d_prompts, key=lambda p: p.name), lambda d: d
            )

            args = {"name": "Ada", "style": "pirate"}
            assert _plain(await via.get_prompt(tool_name(tool_id, "greeting"), args)) == _plain(
                await direct.get_prompt("greeting", args)
            )
            assert _plain(await via.get_prompt(tool_name(tool_id, "review"), {"code": "x = 1"})) == _plain(
                await direct.get_prompt("review", {"code": "x = 1"})
            )

            d_res = sorted((await direct.list_resources()).resources, key=lambda r: str(r.uri))
            v_res = (await via.list_resources()).resources
            assert _unmeta(v_res, lambda d: d) == _unmeta(d_res, lambda d: d)
            for uri in ("memo://readme", "memo://counter", "colour://teal/shade"):
                assert _plain(await via.read_resource(uri)) == _plain(await direct.read_resource(uri))

            d_tpl = sorted(  # the edge lists the union in template order
                (await direct.list_resource_templates()).resource_templates, key=lambda t: t.uri_template
            )
            v_tpl = (await via.list_resource_templates()).resource_templates
            assert _unmeta(v_tpl, lambda d: d) == _unmeta(d_tpl, lambda d: d)

            style = types.CompletionArgument(name="style", value="p")
            d_done = await direct.complete(types.PromptReference(name="greeting"), style.model_dump())
            v_done = await via.complete(
                types.PromptReference(name=tool_name(tool_id, "greeting")), style.model_dump()
            )
            assert _plain(v_done) == _plain(d_done) and set(d_done.completion.values) == {
                "plain",
                "pirate",
                "poem",
            }
            colour = {"name": "name", "value": "b"}
            template = types.ResourceTemplateReference(uri="colour://{name}/shade")
            d_done = await direct.complete(template, colour)
            assert _plain(await via.complete(template, colour)) == _plain(d_done)
            assert d_done.completion.values == ["blue", "black"]


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_prompts_and_resources_are_json_rpc_errors_as_the_server_gives_them(
    hub: Any, edge: Edge, server_url: str, mode: str
) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(edge.url, mode=mode) as via:
            with pytest.raises(MCPError) as unknown:
                await via.get_prompt("no-such-server__greeting", {})
            assert unknown.value.code == -32602
            with pytest.raises(MCPError) as missing_arg:  # the server's own refusal, passed on
                await via.get_prompt(tool_name(tool_id, "greeting"), {})
            # The hub's own session with the server is of the era `auto` negotiates: the server's
            # refusal is the one it gives in that era.
            async with Client(server_url, mode="auto") as direct:
                with pytest.raises(MCPError) as direct_missing:
                    await direct.get_prompt("greeting", {})
            assert missing_arg.value.code == direct_missing.value.code
            assert missing_arg.value.message == direct_missing.value.message
            with pytest.raises(MCPError):
                await via.read_resource("memo://nothing-here")


async def test_two_servers_with_the_same_uri_keep_one_each_under_a_deterministic_name(
    hub: Any, edge: Edge, server_url: str
) -> None:
    async with sdk_http_server(SCRIPT, "second") as other_url:
        async with (
            installed(hub, edge, f"{NS}/features-a", server_url) as first,
            installed(hub, edge, f"{NS}/features-b", other_url) as second,
        ):
            assert first < second
            async with Client(edge.url, mode="legacy") as via:
                listed = {str(r.uri): r for r in (await via.list_resources()).resources}
                explicit = f"toolscore://servers/{second}/memo%3A%2F%2Fshared"
                assert {"memo://shared", explicit} <= set(listed)
                assert (listed["memo://shared"].meta or {})[TOOL_ID_KEY] == first
                assert (listed[explicit].meta or {})[TOOL_ID_KEY] == second
                first_text = (await via.read_resource("memo://shared")).contents[0]
                second_read = (await via.read_resource(explicit)).contents[0]
                assert isinstance(first_text, types.TextResourceContents)
                assert isinstance(second_read, types.TextResourceContents)
                assert first_text.text == "shared from features"
                assert second_read.text == "shared from second" and str(second_read.uri) == explicit
                names = {p.name for p in (await via.list_prompts()).prompts}
                assert {tool_name(first, "greeting"), tool_name(second, "greeting")} <= names


@pytest.mark.parametrize("mode", ERAS)
async def test_a_virtual_server_lists_its_own_prompts_and_resources_unprefixed_and_no_other_servers(
    hub: Any, edge: Edge, server_url: str, mode: str
) -> None:
    async with sdk_http_server(SCRIPT, "second") as other_url:
        async with (
            installed(hub, edge, f"{NS}/features-a", server_url) as first,
            installed(hub, edge, f"{NS}/features-b", other_url) as second,
        ):
            async with (
                Client(other_url, mode=mode) as direct,
                Client(f"{edge.url}/servers/{second}", mode=mode) as via,
            ):
                assert sorted(p.name for p in (await via.list_prompts()).prompts) == ["greeting", "review"]
                args = {"name": "Ada", "style": "pirate"}
                assert _plain(await via.get_prompt("greeting", args)) == _plain(
                    await direct.get_prompt("greeting", args)
                )
                listed = {str(r.uri): r for r in (await via.list_resources()).resources}
                # The URI both servers list is this server's own here: no other server competes for it.
                assert (
                    "memo://shared" in listed and (listed["memo://shared"].meta or {})[TOOL_ID_KEY] == second
                )
                read = (await via.read_resource("memo://shared")).contents[0]
                assert isinstance(read, types.TextResourceContents) and read.text == "shared from second"
                with pytest.raises(MCPError):  # the /mcp name of a prompt is not this server's name
                    await via.get_prompt(tool_name(second, "greeting"), args)
            async with Client(f"{edge.url}/servers/{first}", mode=mode) as via_first:
                read = (await via_first.read_resource("memo://shared")).contents[0]
                assert isinstance(read, types.TextResourceContents) and read.text == "shared from features"


async def test_lists_page_like_tools_list(hub: Any, edge: Edge, server_url: str) -> None:
    edge.svc.federation.opts = type(edge.svc.federation.opts)(page_size=1)
    async with installed(hub, edge, f"{NS}/features", server_url):
        async with Client(edge.url, mode="legacy") as via:
            pages, cursor = [], None
            while True:
                page = await via.list_resources(cursor=cursor) if cursor else await via.list_resources()
                pages.append([str(r.uri) for r in page.resources])
                cursor = page.next_cursor
                if not cursor:
                    break
            assert pages == [["memo://counter"], ["memo://readme"], ["memo://shared"]]
            with pytest.raises(MCPError) as bad:
                await via.list_prompts(cursor="!!not-a-cursor")
            assert bad.value.code == -32602


async def test_the_websocket_serves_the_same_prompt(hub: Any, edge: Edge, server_url: str) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(server_url, mode="legacy") as direct:
            expected = _plain(await direct.get_prompt("greeting", {"name": "Bo"}))
            expected.pop("resultType", None)  # the SDK's model fills it in; a handshake-era wire has none
        async with websockets.connect(edge.ws_url, subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
            init = {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            }
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
            async with deadline(10, "the initialize answer"):
                assert "prompts" in json.loads(await ws.recv())["result"]["capabilities"]
            params = {"name": tool_name(tool_id, "greeting"), "arguments": {"name": "Bo"}}
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": params}))
            async with deadline(10, "the prompts/get answer"):
                got = json.loads(await ws.recv())
        assert got["id"] == 2 and got["result"] == expected


async def test_the_hub_relay_refuses_what_it_does_not_relay(hub: Any, edge: Edge, server_url: str) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(edge.svc.gateway.channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RelayServerRequest(
                ts.RelayServerRequestRequest(tool_id=tool_id, method="tools/call"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RelayServerRequest(
                ts.RelayServerRequestRequest(tool_id="nobody", method="prompts/list"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        big = ts.RelayServerRequestRequest(
            tool_id=tool_id, method="prompts/get", params_json=json.dumps({"name": "x" * 70_000})
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RelayServerRequest(big, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ok = await stub.RelayServerRequest(
            ts.RelayServerRequestRequest(tool_id=tool_id, method="prompts/list"), timeout=5
        )
        assert {p["name"] for p in json.loads(ok.result_json)["prompts"]} == {"greeting", "review"}


async def test_a_handshake_session_hears_prompts_and_resources_list_changed_when_a_server_changes_them(
    hub: Any, edge: Edge, server_url: str
) -> None:
    heard: dict[str, asyncio.Event] = {"prompts": asyncio.Event(), "resources": asyncio.Event()}

    async def on_message(message: Any) -> None:
        if isinstance(message, types.PromptListChangedNotification):
            heard["prompts"].set()
        elif isinstance(message, types.ResourceListChangedNotification):
            heard["resources"].set()

    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(edge.url, mode="legacy", message_handler=on_message) as via:
            caps = via.server_capabilities
            assert caps.prompts is not None and caps.prompts.list_changed is True
            assert caps.resources is not None and caps.resources.list_changed is True
            before = {p.name for p in (await via.list_prompts()).prompts}
            grown = await via.call_tool(tool_name(tool_id, "grow"), {})
            assert grown.is_error is not True
            async with deadline(10, "prompts and resources list_changed"):
                await heard["prompts"].wait()
                await heard["resources"].wait()
            after = {p.name for p in (await via.list_prompts()).prompts}
            uris = {str(r.uri) for r in (await via.list_resources()).resources}
    assert tool_name(tool_id, "farewell") in after - before
    assert "memo://late" in uris


async def test_a_modern_listen_stream_hears_prompts_list_changed(
    hub: Any, edge: Edge, server_url: str
) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(edge.url) as via:
            assert via.protocol_version == "2026-07-28"
            async with via.listen(prompts_list_changed=True, resources_list_changed=True) as sub:
                assert sub.honored.prompts_list_changed is True
                assert sub.honored.resources_list_changed is True
                await via.call_tool(tool_name(tool_id, "grow"), {})
                async with deadline(10, "a list_changed on the listen stream"):
                    event = await anext(sub)
                assert event is not None
            names = {p.name for p in (await via.list_prompts()).prompts}
    assert tool_name(tool_id, "farewell") in names


async def test_a_websocket_session_hears_resources_list_changed_when_a_server_is_uninstalled(
    hub: Any, edge: Edge, server_url: str
) -> None:
    async with websockets.connect(edge.ws_url, subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
        async with deadline(10, "the initialize answer"):
            json.loads(await ws.recv())
        async with installed(hub, edge, f"{NS}/features", server_url):
            pass  # installed, then uninstalled
        seen: set[str] = set()
        async with deadline(10, "resources list_changed on the socket"):
            while "notifications/resources/list_changed" not in seen:
                seen.add(json.loads(await ws.recv()).get("method", ""))


async def test_a_session_that_set_a_log_level_hears_installed_servers_log_messages(
    hub: Any, edge: Edge, server_url: str
) -> None:
    direct_logs: list[types.LoggingMessageNotificationParams] = []
    via_logs: list[types.LoggingMessageNotificationParams] = []
    heard = asyncio.Event()

    async def direct_log(params: types.LoggingMessageNotificationParams) -> None:
        direct_logs.append(params)

    async def via_log(params: types.LoggingMessageNotificationParams) -> None:
        via_logs.append(params)
        heard.set()

    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with Client(server_url, mode="legacy", logging_callback=direct_log) as direct:
            # (this server has no logging/setLevel: in the handshake era it logs to every client)
            await direct.call_tool("bump", {})
        async with Client(edge.url, mode="legacy", logging_callback=via_log) as via:
            assert via.server_capabilities.logging is not None
            with pytest.warns(MCPDeprecationWarning):  # the feature is, since 2026-07-28
                await via.set_logging_level("info")
            await via.call_tool(tool_name(tool_id, "bump"), {})
            async with deadline(10, "the server's log message through the edge"):
                await heard.wait()
    (sent,) = direct_logs
    got = via_logs[0]
    assert (sent.level, sent.data) == ("info", "features: counter is 1")
    assert (got.level, got.data) == ("info", "features: counter is 2")  # the second bump, the same log
    assert got.logger is not None and got.logger.startswith(tool_id)


async def test_a_websocket_session_that_set_a_log_level_hears_log_messages(
    hub: Any, edge: Edge, server_url: str
) -> None:
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        async with websockets.connect(edge.ws_url, subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
            init = {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            }
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
            await ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}}
                )
            )
            bad = {"level": "loud"}
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel", "params": bad})
            )
            call = {"name": tool_name(tool_id, "bump"), "arguments": {}}
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": call}))
            seen: dict[Any, Any] = {}
            async with deadline(10, "the log message on the socket"):
                while "notifications/message" not in seen:
                    msg = json.loads(await ws.recv())
                    seen[msg.get("method", msg.get("id"))] = msg
    assert seen[2]["result"] == {} and seen[3]["error"]["code"] == -32602
    note = seen["notifications/message"]["params"]
    assert note["level"] == "info" and note["data"] == "features: counter is 1" and note["logger"] == tool_id

"""What installed servers announce reaches exactly the MCP clients that should hear it: prompts and
resources list_changed only the endpoints whose view holds the server that changed (a virtual
server `/mcp/servers/<server>` hears its own server only), in both eras, over Streamable HTTP and
the WebSocket (official SDK servers federated into a real mesh)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import mcp_types as types
import websockets
from mcp import Client

from edge.mcp.tool_list import tool_name
from tests.discovery.conftest import NS, sdk_http_server
from tests.helpers import deadline

from .conftest import Edge
from .test_federated_features import SCRIPT, installed, server_url  # noqa: F401  (a fixture)
from .test_websocket import Peer, connect

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
PROMPTS, RESOURCES = "notifications/prompts/list_changed", "notifications/resources/list_changed"


def _connect(url: str) -> Any:
    return websockets.connect(url, subprotocols=["mcp"], open_timeout=5, close_timeout=2)  # type: ignore[list-item]


async def _heard(peer: Peer, method: str, count: int) -> None:
    """Read the socket until `peer` has heard `method` `count` times."""
    while sum(n.get("method") == method for n in peer.notes) < count:
        peer.notes.append(await peer.recv())


async def _settled(peer: Peer, method: str, params: dict[str, Any]) -> list[str]:
    """The methods of every notification `peer` heard before the answer to one more request: what
    the edge had pushed to it until then, in order."""
    await peer.call(method, params)
    return [n.get("method", "") for n in peer.notes]


async def test_list_changed_of_one_server_reaches_only_the_endpoints_whose_view_holds_it(
    hub: Any,
    edge: Edge,
    server_url: str,  # noqa: F811
) -> None:
    async with sdk_http_server(SCRIPT, "second") as other_url:
        async with (
            installed(hub, edge, f"{NS}/features-a", server_url) as first,
            installed(hub, edge, f"{NS}/features-b", other_url) as second,
            connect(edge) as main_ws,
            _connect(f"{edge.ws_url}/servers/{second}") as view_ws,
            _connect(f"{edge.ws_url}/servers/{second}") as modern_ws,
        ):
            main, view, modern = Peer(main_ws), Peer(view_ws), Peer(modern_ws)
            await main.initialize()
            await view.initialize()
            listen = {"notifications": {"promptsListChanged": True, "resourcesListChanged": True}}
            await modern.send(
                {
                    "jsonrpc": "2.0",
                    "id": "listen",
                    "method": "subscriptions/listen",
                    "params": {**listen, "_meta": MODERN_META},
                }
            )
            async with deadline(10, "the listen stream's acknowledgment"):
                await _heard(modern, "notifications/subscriptions/acknowledged", 1)

            # The first server changes its lists: `/mcp` hears it, the second server's endpoint not.
            await main.call("tools/call", {"name": tool_name(first, "grow"), "arguments": {}})
            async with deadline(10, "the first server's list_changed on /mcp"):
                await _heard(main, PROMPTS, 1)
                await _heard(main, RESOURCES, 1)
            # Then the second server changes its own: every endpoint hears it, once.
            await main.call("tools/call", {"name": tool_name(second, "grow"), "arguments": {}})
            async with deadline(10, "the second server's list_changed everywhere"):
                await _heard(main, PROMPTS, 2)
                await _heard(view, PROMPTS, 1)
                await _heard(view, RESOURCES, 1)
                await _heard(modern, PROMPTS, 1)
                await _heard(modern, RESOURCES, 1)
                # Everything pushed to a socket before the answer to a later request is in order
                # before it: what the first server's change would have pushed is there too.
                view_heard = await _settled(view, "ping", {})
                modern_heard = await _settled(modern, "server/discover", {"_meta": MODERN_META})
    assert collections.Counter(view_heard) == {PROMPTS: 1, RESOURCES: 1}
    assert collections.Counter(modern_heard) == {
        "notifications/subscriptions/acknowledged": 1,
        PROMPTS: 1,
        RESOURCES: 1,
    }
    assert all(
        n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen" for n in modern.notes
    )


async def test_a_virtual_servers_http_session_hears_only_its_own_servers_list_changed(
    hub: Any,
    edge: Edge,
    server_url: str,  # noqa: F811
) -> None:
    heard: dict[str, collections.Counter[str]] = {
        "main": collections.Counter(),
        "view": collections.Counter(),
    }
    moved = asyncio.Event()

    def counter(who: str) -> Any:
        async def on_message(message: Any) -> None:
            if isinstance(
                message, types.PromptListChangedNotification | types.ResourceListChangedNotification
            ):
                heard[who][message.method] += 1
                moved.set()

        return on_message

    async def until(who: str, method: str, count: int) -> None:
        while heard[who][method] < count:
            moved.clear()
            await moved.wait()

    async with sdk_http_server(SCRIPT, "second") as other_url:
        async with (
            installed(hub, edge, f"{NS}/features-a", server_url) as first,
            installed(hub, edge, f"{NS}/features-b", other_url) as second,
        ):
            async with (
                Client(edge.url, mode="legacy", message_handler=counter("main")) as main,
                Client(
                    f"{edge.url}/servers/{second}", mode="legacy", message_handler=counter("view")
                ) as view,
            ):
                await main.list_prompts()
                await view.list_prompts()
                await main.call_tool(tool_name(first, "grow"), {})
                async with deadline(10, "the first server's list_changed on /mcp"):
                    await until("main", PROMPTS, 1)
                    await until("main", RESOURCES, 1)
                await main.call_tool(tool_name(second, "grow"), {})
                async with deadline(10, "the second server's list_changed on its own endpoint"):
                    await until("main", PROMPTS, 2)
                    await until("view", PROMPTS, 1)
                    await until("view", RESOURCES, 1)
                names = {p.name for p in (await view.list_prompts()).prompts}
    assert heard["view"] == {PROMPTS: 1, RESOURCES: 1}
    assert "farewell" in names

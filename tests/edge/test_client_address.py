"""Behind a trusted proxy each client keeps its own per-client bounds; nobody else's X-Forwarded-For counts.

Behind `make cluster`'s HAProxy every request's peer is HAProxy: keyed by the peer, one client
past its bound refused every other client, and MCP's sessions-per-client cap became a global one.
Here the proxy is the test's own client on 127.0.0.1, adding X-Forwarded-For as HAProxy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from multidict import CIMultiDict

from edge.client_address import TrustedProxies
from edge.dialled_in import RELAY
from edge.middleware import HTTP_BOUNDS
from services.toolkit import Action
from tests.edge.conftest import EdgeHandle, edge_config
from tests.helpers import served_tool

XFF = "X-Forwarded-For"
ALICE, BOB, CLAIMED = "203.0.113.1", "203.0.113.2", "198.51.100.7"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@contextlib.asynccontextmanager
async def one_call_held(
    edge: EdgeHandle, start_tool_server: Callable[..., Any], headers: Any
) -> AsyncIterator[None]:
    """A call sent with `headers` that runs (is in flight) until the block ends."""
    running, release = asyncio.Event(), asyncio.Event()

    async def hold(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        running.set()
        async with asyncio.timeout(30):
            await release.wait()
        return {}

    actions = [Action("hold", "Runs until released", hold)]
    _, endpoint = await start_tool_server({"hold": actions})
    await edge.gateway.register(served_tool("hold", endpoint, actions))
    call = {"tool_id": "hold", "action": "hold", "parameters": {}}
    held = asyncio.create_task(edge.post("/api/v1/tools/execute", call, headers=headers))
    try:
        async with asyncio.timeout(10):
            await running.wait()
        yield
    finally:
        release.set()
        status, _ = await held
    assert status == 200


def test_the_client_is_the_last_entry_only_from_a_trusted_peer_and_only_when_it_is_an_address() -> None:
    proxies = TrustedProxies(["10.0.0.0/24", "::1", "192.0.2.9"])
    assert proxies.client("10.0.0.7", ["1.1.1.1, 2.2.2.2"]) == "2.2.2.2"
    assert proxies.client("192.0.2.9", ["1.1.1.1", " 2.2.2.2 "]) == "2.2.2.2"
    assert proxies.client("::1", ["2001:db8:0:0::1"]) == "2001:db8::1"  # one key per address
    assert proxies.client("10.0.1.7", ["2.2.2.2"]) == "10.0.1.7"  # outside the trusted network
    assert proxies.client("", ["2.2.2.2"]) == ""  # no TCP peer (a Unix socket)
    assert proxies.client("10.0.0.7", ["2.2.2.2", "junk"]) == "10.0.0.7"
    assert proxies.client("10.0.0.7", ["010.0.0.1"]) == "10.0.0.7"  # not an address in canonical form
    assert proxies.client("10.0.0.7", []) == "10.0.0.7"


async def status_as(edge: EdgeHandle, headers: Any) -> int:
    status, _ = await edge.get("/api/v1/stats", headers=headers)
    return status


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_http_bound(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    edge = await start_edge(
        edge_config(cfg, hub, http_in_flight_per_client=1, trusted_proxies=("127.0.0.1",))
    )
    async with one_call_held(edge, start_tool_server, {XFF: ALICE}):
        alice_again = await status_as(edge, {XFF: ALICE})
        bob = await status_as(edge, {XFF: BOB})
        keys = dict(edge.app[HTTP_BOUNDS].in_flight)
    assert alice_again == 429, "the forwarded client is past its own bound"
    assert bob == 200, "one forwarded client's bound refused another client"
    assert keys == {ALICE: 1}


@pytest.mark.parametrize(
    "forwarded",
    [
        {XFF: f"{CLAIMED}, {ALICE}"},  # one header, the proxy's entry appended
        CIMultiDict([(XFF, CLAIMED), (XFF, ALICE)]),  # the proxy's entry in a header of its own (HAProxy)
    ],
    ids=["one-header", "two-headers"],
)
async def test_a_client_spoofing_x_forwarded_for_through_the_proxy_is_keyed_by_the_entry_the_proxy_added(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any], forwarded: Any
):
    edge = await start_edge(
        edge_config(cfg, hub, http_in_flight_per_client=1, trusted_proxies=("127.0.0.0/8",))
    )
    async with one_call_held(edge, start_tool_server, forwarded):
        as_itself = await status_as(edge, {XFF: ALICE})
        as_claimed = await status_as(edge, {XFF: CLAIMED})
        keys = dict(edge.app[HTTP_BOUNDS].in_flight)
    assert keys == {ALICE: 1}, "the client's own claim was believed"
    assert (as_itself, as_claimed) == (429, 200)


@pytest.mark.parametrize("trusted", [(), ("192.0.2.0/24", "192.0.2.200")], ids=["none", "others"])
async def test_x_forwarded_for_from_a_peer_not_trusted_is_ignored_and_a_spoofer_stays_within_its_bound(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any], trusted: tuple[str, ...]
):
    edge = await start_edge(edge_config(cfg, hub, http_in_flight_per_client=1, trusted_proxies=trusted))
    async with one_call_held(edge, start_tool_server, {XFF: ALICE}):
        as_another = await status_as(edge, {XFF: BOB})
        keys = dict(edge.app[HTTP_BOUNDS].in_flight)
    assert as_another == 429, "a client escaped its bound by naming another address"
    assert keys == {"127.0.0.1": 1}


@pytest.mark.parametrize("bad", ["not-an-address", f"{ALICE},", f"{ALICE}, 203.0.113.300", "", "unknown"])
async def test_a_malformed_x_forwarded_for_from_a_trusted_proxy_leaves_the_request_keyed_by_its_peer(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any], bad: str
):
    edge = await start_edge(
        edge_config(cfg, hub, http_in_flight_per_client=1, trusted_proxies=("127.0.0.1",))
    )
    async with one_call_held(edge, start_tool_server, {XFF: bad}):
        no_header = await status_as(edge, {})
        keys = dict(edge.app[HTTP_BOUNDS].in_flight)
    assert keys == {"127.0.0.1": 1}
    assert no_header == 429


async def test_mcp_sessions_per_client_are_counted_per_forwarded_client(cfg, hub, start_edge):
    edge = await start_edge(edge_config(cfg, hub, mcp_sessions_per_client=2, trusted_proxies=("127.0.0.1",)))
    alice = [(await edge.post("/mcp", INIT, headers={**MCP_ACCEPT, XFF: ALICE}))[0] for _ in range(3)]
    status, refused = await edge.post("/mcp", INIT, headers={**MCP_ACCEPT, XFF: ALICE})
    bob, body = await edge.post("/mcp", INIT, headers={**MCP_ACCEPT, XFF: BOB})
    assert alice == [200, 200, 429] and status == 429
    assert refused["error"]["data"]["reason"] == "TOO_MANY_SESSIONS"
    assert bob == 200 and "result" in body, "one forwarded client's sessions used up another's cap"


async def test_a_server_that_dials_in_through_the_proxy_is_known_by_its_forwarded_address(
    cfg, hub, start_edge
):
    edge = await start_edge(edge_config(cfg, hub, trusted_proxies=("127.0.0.1",)))
    async with websockets.connect(
        edge.ws_url("/websocket"), open_timeout=5, close_timeout=2, additional_headers={XFF: BOB}
    ) as ws:
        await ws.send(json.dumps({"type": "list_tools", "request_id": "l1"}))
        async with asyncio.timeout(10):
            reply = json.loads(await ws.recv())
        peers = [s.peer for s in edge.app[RELAY].sessions.values()]
    assert reply["type"] == "list_tools_response"
    assert peers == [BOB]

"""MCP over WebSocket at /ws/mcp, driven by a real `websockets` client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from toolscore.v1 import tool_pb2
from websockets.asyncio.client import ClientConnection

from tests.edge.conftest import read_until_closed, unread_socket

from .conftest import Edge, Probe, Register, actions, edge_with, tool_def

PYTHON = "python-executor-mcp-server__python_execute"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def connect(edge: Edge, **kw: Any) -> Any:
    return websockets.connect(edge.ws_url, subprotocols=["mcp"], open_timeout=5, close_timeout=2, **kw)


class Peer:
    """A test client: sends JSON-RPC, collects notifications, matches responses by id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.notes: list[dict[str, Any]] = []
        self._ids = iter(range(1, 10_000))

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            return json.loads(await self.ws.recv())

    async def call(
        self, method: str, params: dict[str, Any] | None = None, rid: Any = None
    ) -> dict[str, Any]:
        rid = next(self._ids) if rid is None else rid
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)
        return await self.until(rid)

    async def until(self, rid: Any) -> dict[str, Any]:
        while True:
            msg = await self.recv()
            if "id" in msg and msg["id"] == rid and "method" not in msg:
                return msg
            self.notes.append(msg)

    async def initialize(self) -> dict[str, Any]:
        resp = await self.call(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "ws-test", "version": "1"},
            },
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return resp


async def test_websocket_handshake_lists_and_runs_python(edge: Edge):
    async with connect(edge) as ws:
        assert ws.subprotocol == "mcp"
        peer = Peer(ws)
        init = await peer.initialize()
        assert init["result"]["protocolVersion"] == "2025-11-25"
        assert init["result"]["capabilities"]["tools"]["listChanged"] is True
        tools = await peer.call("tools/list")
        assert PYTHON in {t["name"] for t in tools["result"]["tools"]}
        run = await peer.call("tools/call", {"name": PYTHON, "arguments": {"code": "print('hi from ws')"}})
    assert run["result"]["structuredContent"]["stdout"] == "hi from ws\n"
    assert "isError" not in run["result"]


async def test_websocket_refuses_a_foreign_page_before_the_upgrade(edge: Edge):
    rebound = edge.ws_url.replace("127.0.0.1", "rebound.evil.example")  # the page's own name as Host
    attempts = [
        connect(edge, additional_headers={"Origin": "https://evil.example"}),
        websockets.connect(rebound, subprotocols=["mcp"], open_timeout=5, host="127.0.0.1", port=edge.port),
    ]
    for attempt in attempts:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with attempt:
                pass
        assert refused.value.response.status_code == 403
        body = json.loads(refused.value.response.body)
        assert body["error"]["code"] == -32600 and "Forbidden" in body["error"]["message"]


async def test_websocket_serves_the_2026_era_without_a_handshake(edge: Edge, kit: Probe):
    async with connect(edge) as ws:
        peer = Peer(ws)
        disc = await peer.call("server/discover", {"_meta": MODERN_META})
        assert disc["result"]["supportedVersions"] == ["2026-07-28"]
        assert disc["result"]["resultType"] == "complete"
        listed = await peer.call("tools/list", {"_meta": MODERN_META})
        assert listed["result"]["cacheScope"] == "public" and "ttlMs" in listed["result"]
        assert listed["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "toolscore-mesh"
        echo = await peer.call(
            "tools/call", {"name": "kit__echo", "arguments": {"text": "modern"}, "_meta": MODERN_META}
        )
        assert echo["result"]["structuredContent"] == {"text": "modern"}
        assert echo["result"]["resultType"] == "complete"
        late_init = await peer.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
    assert late_init["error"]["code"] == -32022
    assert late_init["error"]["data"]["supported"] == ["2026-07-28"]


async def test_each_era_serves_only_the_methods_of_its_table_and_the_others_are_method_not_found(edge: Edge):
    async with connect(edge) as old, connect(edge) as new:
        handshake, modern = Peer(old), Peer(new)
        await handshake.initialize()
        discover = await handshake.call("server/discover")
        listen = await handshake.call("subscriptions/listen", {"notifications": {}})
        ping = await modern.call("ping", {"_meta": MODERN_META})
        served = await modern.call("tools/list", {"_meta": MODERN_META})
        still = await handshake.call("ping")
    for resp, method in ((discover, "server/discover"), (listen, "subscriptions/listen"), (ping, "ping")):
        assert resp["error"] == {"code": -32601, "message": f"Method not found: {method}", "data": method}
    assert "tools" in served["result"] and still["result"] == {}


async def test_websocket_rejects_an_unsupported_modern_version_with_the_supported_list(edge: Edge):
    async with connect(edge) as ws:
        peer = Peer(ws)
        resp = await peer.call(
            "tools/list", {"_meta": {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}}
        )
        missing = await peer.call(
            "tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
        )
    assert resp["error"]["code"] == -32022
    assert resp["error"]["data"] == {"supported": ["2026-07-28"], "requested": "2099-01-01"}
    assert missing["error"]["code"] == -32602


async def test_websocket_progress_notifications_precede_the_result(edge: Edge, kit: Probe):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        resp = await peer.call(
            "tools/call", {"name": "kit__count", "arguments": {"n": 2}, "_meta": {"progressToken": "tok"}}
        )
    progress = [n["params"] for n in peer.notes if n.get("method") == "notifications/progress"]
    assert progress == [
        {"progressToken": "tok", "progress": 1, "total": 2, "message": "step 1"},
        {"progressToken": "tok", "progress": 2, "total": 2, "message": "step 2"},
    ]
    assert resp["result"]["content"][0]["text"] == "counted to 2"


async def test_websocket_cancel_notification_reaches_the_tool_and_the_connection_goes_on(
    edge: Edge, kit: Probe
):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        await peer.send(
            {
                "jsonrpc": "2.0",
                "id": "slow",
                "method": "tools/call",
                "params": {"name": "kit__block", "arguments": {}},
            }
        )
        async with asyncio.timeout(10):
            await kit.started.wait()
        await peer.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": "slow", "reason": "changed my mind"},
            }
        )
        async with asyncio.timeout(10):
            await kit.cancelled.wait()
        echo = await peer.call("tools/call", {"name": "kit__echo", "arguments": {"text": "next"}})
    assert echo["result"]["structuredContent"] == {"text": "next"}
    assert not [n for n in peer.notes if n.get("id") == "slow"]  # a cancelled request gets no response


async def test_websocket_client_hears_list_changed(edge: Edge, register: Register, start_tool_server: Any):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        acts = actions(Probe())
        _, endpoint = await start_tool_server({"wsnew": acts}, name="wsnew")
        await register(tool_def("wsnew", endpoint, acts))
        note = await peer.recv()
    assert note == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {}}


async def test_a_health_change_alone_announces_no_list_changed(
    edge: Edge, register: Register, start_tool_server: Any
):
    acts = actions(Probe())
    server, endpoint = await start_tool_server({"flaky": acts}, name="flaky")
    await register(tool_def("flaky", endpoint, acts))
    unhealthy = asyncio.Event()
    edge.svc.registry.subscribe(
        lambda ev: (
            ev.tool.tool_id == "flaky"
            and ev.type == tool_pb2.TOOL_EVENT_TYPE_HEALTH_CHANGED
            and unhealthy.set()
        )
    )
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        await server.stop()  # the hub's health checker marks it unhealthy: an event, same listing
        async with asyncio.timeout(10):
            await unhealthy.wait()
        await peer.send({"jsonrpc": "2.0", "id": "after", "method": "ping"})
        first = await peer.recv()
    assert first == {"jsonrpc": "2.0", "id": "after", "result": {}}


async def test_websocket_bad_input_gets_json_rpc_errors_and_the_connection_stays_up(edge: Edge, kit: Probe):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.send("{not json")
        parse = await peer.recv()
        await peer.send([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        batch = await peer.recv()
        await peer.send({"jsonrpc": "2.0", "id": 2})
        no_method = await peer.recv()
        await peer.send({"jsonrpc": "1.0", "id": 3, "method": "ping"})
        bad_version = await peer.recv()
        await peer.send(b"\x00\x01")
        binary = await peer.recv()
        early = await peer.call("tools/list")
        await peer.initialize()
        unknown = await peer.call("no/such-method")
        no_name = await peer.call("tools/call", {"arguments": {}})
        bad_args = await peer.call("tools/call", {"name": "kit__echo", "arguments": ["x"]})
        unknown_tool = await peer.call("tools/call", {"name": "nope", "arguments": {}})
        violation = await peer.call("tools/call", {"name": "kit__echo", "arguments": {"text": 1}})
        ping = await peer.call("ping")
    assert parse["error"]["code"] == -32700 and parse["id"] is None
    assert batch["error"]["code"] == -32600
    assert no_method["error"]["code"] == -32600
    assert bad_version["error"]["code"] == -32600
    assert binary["error"]["code"] == -32600
    assert early["error"]["code"] == -32600
    assert unknown["error"]["code"] == -32601
    assert no_name["error"]["code"] == -32602
    assert bad_args["error"]["code"] == -32602
    assert unknown_tool["error"]["code"] == -32602
    assert violation["result"]["isError"] is True  # SEP-1303: the model reads it and corrects the call
    assert "is not of type 'string'" in violation["result"]["content"][0]["text"]
    assert ping["result"] == {}


async def test_a_frame_over_the_limit_closes_with_1009_and_others_are_unaffected(edge: Edge, kit: Probe):
    limit = edge.svc.opts.max_frame_bytes
    async with connect(edge, max_size=None) as other:
        bystander = Peer(other)
        await bystander.initialize()
        async with connect(edge, max_size=None) as ws:
            big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * limit}})
            with pytest.raises(websockets.ConnectionClosed) as info:
                async with asyncio.timeout(10):
                    await ws.send(big)
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        echo = await bystander.call("tools/call", {"name": "kit__echo", "arguments": {"text": "unaffected"}})
    assert echo["result"]["structuredContent"] == {"text": "unaffected"}


async def _start_blocking_call(peer: Peer, kit: Probe, *, rid: int) -> None:
    """Send a `kit__block` call under `rid` and wait until the tool holds it."""
    params = {"name": "kit__block", "arguments": {}}
    await peer.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
    async with asyncio.timeout(10):
        await kit.started.wait()


async def test_a_client_vanishing_mid_call_cancels_its_call_and_no_one_else_notices(edge: Edge, kit: Probe):
    async with connect(edge) as other:
        bystander = Peer(other)
        await bystander.initialize()
        async with connect(edge) as ws:
            peer = Peer(ws)
            await peer.initialize()
            await _start_blocking_call(peer, kit, rid=9)
        async with asyncio.timeout(10):
            await kit.cancelled.wait()
        echo = await bystander.call("tools/call", {"name": "kit__echo", "arguments": {"text": "fine"}})
    assert echo["result"]["structuredContent"] == {"text": "fine"}


async def test_a_request_id_already_in_flight_on_the_socket_is_refused_and_the_first_call_goes_on(
    edge: Edge, kit: Probe
):
    async with connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        await _start_blocking_call(peer, kit, rid=7)
        echo = {"name": "kit__echo", "arguments": {"text": "twin"}}
        dup = await peer.call("tools/call", echo, rid=7)
        assert dup.get("error", {}).get("code") == -32600, dup
        assert "already in flight" in dup["error"]["message"]
        # The first call is still the one id 7 names: a cancel for it reaches the tool.
        await peer.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        async with asyncio.timeout(10):
            await kit.cancelled.wait()
        again = await peer.call("tools/call", {"name": "kit__echo", "arguments": {"text": "after"}}, rid=7)
    assert again["result"]["structuredContent"] == {"text": "after"}, again


async def test_websocket_from_a_foreign_origin_is_refused(edge: Edge):
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(edge, origin="http://evil.example"):
            pass
    assert info.value.response.status_code == 403


async def test_a_client_that_asks_and_never_reads_is_closed_with_1013_while_another_is_served(
    gateway: Any, cfg: Any, kit: Probe
):
    bound = 256 * 1024
    async with edge_with(gateway, cfg, outbox_bytes=bound) as edge, connect(edge) as normal:
        peer = Peer(normal)
        await peer.initialize()
        one_answer = len(json.dumps(await peer.call("tools/list")))
        asks = 16 * 1024 * 1024 // one_answer + 1  # 16 MiB of answers: past every socket buffer and the bound
        sock = unread_socket(edge.ws_url)
        async with connect(edge, sock=sock, max_queue=1) as slow:
            attacker = Peer(slow)
            await attacker.initialize()
            for i in range(asks):  # asks, never reads
                await attacker.send({"jsonrpc": "2.0", "id": i, "method": "tools/list"})
                if i % 64 == 63:  # paced by the normal client's round trips, which keep being answered
                    assert (await peer.call("ping"))["result"] == {}
            echo = await peer.call("tools/call", {"name": "kit__echo", "arguments": {"text": "still here"}})
            code = await read_until_closed(slow, asks)
        svc = edge.svc
    assert echo["result"]["structuredContent"] == {"text": "still here"}
    assert code == 1013, "the edge queued every answer for a client that did not read them"
    assert svc.stats.ws.overflows == 1 and svc.stats.ws.peak_queued_bytes <= bound


async def test_requests_past_the_in_flight_bound_are_refused_at_once_and_the_others_still_answer(
    gateway: Any, cfg: Any, kit: Probe
):
    async with edge_with(gateway, cfg, max_in_flight=3) as edge, connect(edge) as ws:
        peer = Peer(ws)
        await peer.initialize()
        for i in range(1, 6):
            await peer.send(
                {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "kit__block"}}
            )
        refused = [await peer.recv(), await peer.recv()]  # answered while the first three still run
        kit.release.set()
        served = [await peer.until(i) for i in (1, 2, 3)]
        svc = edge.svc
    assert sorted(r["id"] for r in refused) == [4, 5]
    error = refused[0]["error"]
    assert error["code"] == -32029 and error["data"]["reason"] == "TOO_MANY_IN_FLIGHT"
    assert error["data"]["code"] == "RESOURCE_EXHAUSTED" and "3 requests" in error["message"]
    assert [s["result"]["content"][0]["text"] for s in served] == ["released"] * 3
    assert svc.stats.busy_refused == 2

"""The events WebSocket: welcome, ping, get_tools, filtering, pushed events, ?since replay, slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.edge.conftest import EdgeHandle, edge_config, grpc_tool

PATH = "/api/v1/events/tools"


async def recv(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        return json.loads(await ws.recv())


async def recv_type(ws: ClientConnection, kind: str, within_s: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            msg = await recv(ws, within_s)
            if msg["type"] == kind:
                return msg


def connect(edge: EdgeHandle, query: str = "", **kw: Any) -> Any:
    return websockets.connect(edge.ws_url(PATH + query), open_timeout=5, close_timeout=2, **kw)


async def test_welcome_lists_tools_with_the_original_fields_and_the_revision(
    edge: EdgeHandle, registered_echo: str
):
    async with connect(edge) as ws:
        welcome = await recv(ws)
    assert welcome["type"] == "welcome" and 0 < welcome["revision"] <= edge.registry.revision
    assert welcome["total_count"] == len(welcome["tools"]) and welcome["timestamp"]
    echo = next(t for t in welcome["tools"] if t["tool_id"] == "echo")
    assert echo == {
        "tool_id": "echo",
        "name": "echo",
        "capabilities": ["echo", "fail", "slow"],
        "type": "mcp_server",
        "enabled": True,
        "health": echo["health"],
    }


async def test_ping_get_tools_and_bad_messages_get_answers_on_the_same_socket(edge: EdgeHandle):
    async with connect(edge) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
        await ws.send(json.dumps({"type": "get_tools"}))
        listing = await recv(ws)
        assert listing["type"] == "tools_list" and listing["total_count"] == len(listing["tools"])
        await ws.send("{nope")
        err = await recv(ws)
        assert err["type"] == "error" and err["message"] == "Invalid JSON"
        await ws.send(json.dumps({"type": "teleport"}))
        err = await recv(ws)
        assert err["type"] == "error" and "teleport" in err["message"]
        await ws.send(json.dumps({"type": "subscribe", "events": ["tool_exploded"]}))
        err = await recv(ws)
        assert err["type"] == "error" and "tool_exploded" in err["message"]
        await ws.send(b"\x00binary")
        assert (await recv(ws))["type"] == "error"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_registry_changes_are_pushed_with_the_tool_and_revision(edge: EdgeHandle, echo_server: str):
    async with connect(edge) as ws:
        await recv(ws)
        resp = await edge.gateway.register(grpc_tool("echo2", echo_server))
        installed = await recv_type(ws, "tool_installed")
        assert (
            installed["tool_id"] == "echo2"
            and installed["name"] == "echo2"
            and installed["status"] == "ready"
        )
        assert installed["revision"] == resp.revision and installed["tool"]["endpoint"] == echo_server
        health = await recv_type(ws, "tool_health_changed")
        assert health["tool_id"] == "echo2" and health["health"] == "healthy"
        updated = grpc_tool("echo2", echo_server)
        updated.description = "now described"
        await edge.gateway.register(updated)
        msg = await recv_type(ws, "tool_updated")
        assert msg["tool"]["description"] == "now described"
        await edge.gateway.deregister("echo2")
        msg = await recv_type(ws, "tool_uninstalled")
        assert msg["tool_id"] == "echo2" and msg["status"] == "removed"


async def test_filters_on_the_url_apply_from_the_first_event(edge: EdgeHandle, echo_server: str):
    async with connect(edge, "?events=tool_uninstalled&tool_ids=echo2") as ws:
        await recv(ws)
        await edge.gateway.register(grpc_tool("echo2", echo_server))
        await edge.gateway.register(grpc_tool("echo3", echo_server))
        await edge.gateway.deregister("echo3")
        await edge.gateway.deregister("echo2")
        msg = await recv(ws)
    assert (msg["type"], msg["tool_id"]) == ("tool_uninstalled", "echo2")


async def test_subscribe_filters_by_event_type_and_tool(edge: EdgeHandle, echo_server: str):
    async with connect(edge) as ws:
        await recv(ws)
        await ws.send(
            json.dumps({"type": "subscribe", "events": ["tool_uninstalled"], "tool_ids": ["echo3"]})
        )
        ack = await recv(ws)
        assert (
            ack["type"] == "subscribed"
            and ack["events"] == ["tool_uninstalled"]
            and ack["tool_ids"] == ["echo3"]
        )
        for tool_id in ("echo2", "echo3"):
            await edge.gateway.register(grpc_tool(tool_id, echo_server))
        await edge.gateway.deregister("echo2")
        await edge.gateway.deregister("echo3")
        msg = await recv(ws)
        assert (msg["type"], msg["tool_id"]) == ("tool_uninstalled", "echo3")  # nothing else came before it


async def test_a_client_reconnecting_with_since_gets_every_event_it_missed(
    edge: EdgeHandle, echo_server: str
):
    async with connect(edge) as ws:
        seen = (await recv(ws))["revision"]
    revisions = []
    for tool_id in ("echo2", "echo3"):
        revisions.append((await edge.gateway.register(grpc_tool(tool_id, echo_server))).revision)
    revisions.append((await edge.gateway.deregister("echo2")).revision)
    async with connect(edge, f"?since={seen}") as ws:
        welcome = await recv(ws)
        assert welcome["since"] == seen
        replayed = []
        while len(replayed) < revisions[-1] - seen:
            replayed.append(await recv(ws))
    assert [m["revision"] for m in replayed] == list(range(seen + 1, revisions[-1] + 1))
    assert all(m["replayed"] for m in replayed)
    assert {(m["type"], m["tool_id"]) for m in replayed} >= {
        ("tool_installed", "echo2"),
        ("tool_installed", "echo3"),
        ("tool_uninstalled", "echo2"),
    }


async def test_since_older_than_the_edge_buffer_is_replayed_from_the_hub(
    cfg, hub, start_edge, echo_server: str
):
    edge = await start_edge(edge_config(cfg, hub, event_buffer=1))
    seen = edge.registry.revision
    last = 0
    for tool_id in ("echo2", "echo3", "echo4"):
        last = (await edge.gateway.register(grpc_tool(tool_id, echo_server))).revision
    async with connect(edge, f"?since={seen}") as ws:
        await recv(ws)
        replayed = [await recv(ws) for _ in range(last - seen)]
        await edge.gateway.deregister("echo3")  # live events follow the backlog, in order
        live = await recv_type(ws, "tool_uninstalled")
    assert [m["revision"] for m in replayed] == list(range(seen + 1, last + 1))
    assert live["revision"] > last and "replayed" not in live


async def test_since_beyond_the_hub_history_asks_the_client_to_resync(cfg, start_edge, echo_server: str):
    from services.common import config as config_mod
    from services.hub.app import Hub

    small = config_mod.replace(cfg, hub={"event_retention": 2})
    async with Hub(small) as hub:
        edge = await start_edge(edge_config(small, hub, event_buffer=1))
        for tool_id in ("echo2", "echo3", "echo4", "echo"):
            await edge.gateway.register(grpc_tool(tool_id, echo_server))
        async with connect(edge, "?since=1") as ws:
            welcome = await recv(ws)
            msg = await recv(ws)
        assert msg["type"] == "resync_required" and msg["reason"] == "EVENTS_COMPACTED"
        assert msg["revision"] == welcome["revision"]
        async with connect(edge, "?since=999999") as ws:
            await recv(ws)
            assert (await recv(ws))["reason"] == "REVISION_AHEAD"


async def test_a_slow_consumer_is_closed_and_never_delays_the_others(cfg, hub, start_edge, echo_server: str):
    edge = await start_edge(edge_config(cfg, hub, subscriber_queue=4))
    # The slow client reads nothing and has a tiny receive buffer, so the edge's writes back up.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = edge.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    async with (
        websockets.connect(edge.ws_url(PATH), sock=sock, max_queue=1, open_timeout=5) as slow,
        connect(edge) as fast,
    ):
        await recv(fast)
        big = grpc_tool("echo2", echo_server)
        big.description = "x" * 50_000  # 200 kB in all, each field within the size bounds
        for cap in big.capabilities:
            cap.description = "x" * 50_000
        revisions = []
        async with asyncio.timeout(30):
            while edge.metrics.slow_consumers_closed == 0:
                big.version = str(len(revisions))
                revisions.append((await edge.gateway.register(big)).revision)
                msg = await recv_type(fast, "tool_updated" if len(revisions) > 1 else "tool_installed")
                assert msg["revision"] == revisions[-1]  # the fast client keeps up meanwhile
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(20):
                while True:
                    await slow.recv()
        await edge.gateway.deregister("echo2")
        assert (await recv_type(fast, "tool_uninstalled"))["tool_id"] == "echo2"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "too slow" in closed.value.rcvd.reason and "since=" in closed.value.rcvd.reason


async def test_events_reach_500_subscribers(edge: EdgeHandle, echo_server: str):
    clients = []
    try:
        for _ in range(500):
            ws = await websockets.connect(edge.ws_url(PATH), open_timeout=10)
            clients.append(ws)
        await asyncio.gather(*(recv(ws, 20) for ws in clients))
        await edge.gateway.register(grpc_tool("echo2", echo_server))
        got = await asyncio.gather(*(recv(ws, 20) for ws in clients))
        assert {(m["type"], m["tool_id"]) for m in got} == {("tool_installed", "echo2")}
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


async def test_stopping_the_edge_closes_websockets_with_going_away(edge: EdgeHandle, root):
    async with connect(edge) as events, websockets.connect(edge.ws_url("/websocket"), open_timeout=5) as ts:
        await recv(events)
        await edge.runner.cleanup()
        for ws in (events, ts):
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert not (root / "run" / "edge.sock").exists()  # the relay socket is removed

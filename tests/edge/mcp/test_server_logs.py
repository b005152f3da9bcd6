"""Installed servers' log messages reach the MCP clients that asked for them in every era and
session store: a 2026-07-28 request that carries `io.modelcontextprotocol/logLevel` hears the log
messages of the server it calls while it runs (as a client connected straight to the server hears
them), over Streamable HTTP and the WebSocket; a handshake-era session kept on Redis hears them on
whichever edge holds its GET stream, whichever edge its `logging/setLevel` went to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import mcp_types as types
from mcp import Client
from toolscore.v1 import discovery_pb2 as pb
from toolscore.v1 import toolscore_pb2_grpc

from edge.mcp.tool_list import tool_name
from services.hub.app import Hub
from tests.discovery.conftest import NS
from tests.helpers import deadline

from ..conftest import EdgeHandle
from .conftest import Edge
from .sdk_websocket import websocket_transport
from .test_federated_features import installed, server_url  # noqa: F401  (a fixture)
from .test_sessions_across_edges import call, initialize, listed, post, two  # noqa: F401  (a fixture)
from .test_streamable_http import sse_events

Logs = list[types.LoggingMessageNotificationParams]


def collect(
    into: Logs, heard: asyncio.Event
) -> Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]:
    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        into.append(params)
        heard.set()

    return on_log


async def test_a_2026_request_that_opts_in_hears_its_servers_log_messages_as_a_direct_client_does(
    hub: Any,
    edge: Edge,
    server_url: str,  # noqa: F811
) -> None:
    direct, via_http, via_ws, silent = [], [], [], []  # type: ignore[var-annotated]
    heard = {name: asyncio.Event() for name in ("direct", "http", "ws", "silent")}
    async with installed(hub, edge, f"{NS}/features", server_url) as tool_id:
        bump = tool_name(tool_id, "bump")
        log = collect(direct, heard["direct"])
        async with Client(server_url, mode="auto", log_level="info", logging_callback=log) as client:
            assert client.protocol_version == "2026-07-28"
            await client.call_tool("bump", {})
        for target, into, name in (
            (edge.url, via_http, "http"),
            (websocket_transport(edge.ws_url), via_ws, "ws"),
        ):
            log = collect(into, heard[name])
            async with Client(target, mode="auto", log_level="info", logging_callback=log) as client:
                assert client.protocol_version == "2026-07-28"
                await client.call_tool(bump, {})
                async with deadline(10, f"the server's log message through the edge ({name})"):
                    await heard[name].wait()
        # A request that does not opt in hears none (its log would have come before its answer).
        async with Client(edge.url, mode="auto", logging_callback=collect(silent, heard["silent"])) as client:
            await client.call_tool(bump, {})
    assert [(m.level, m.data) for m in direct] == [("info", "features: counter is 1")]
    assert [(m.level, m.data) for m in via_http] == [("info", "features: counter is 2")]
    assert [(m.level, m.data) for m in via_ws] == [("info", "features: counter is 3")]
    assert all(m.logger is not None and m.logger.startswith(tool_id) for m in via_http + via_ws)
    assert silent == []


async def test_a_session_kept_on_redis_hears_log_messages_on_the_edge_that_holds_its_stream(
    hub: Hub,
    two: tuple[EdgeHandle, EdgeHandle],  # noqa: F811
    server_url: str,  # noqa: F811
) -> None:
    a, b = two
    async with grpc.aio.insecure_channel(hub.uds_target or "") as ch:
        stub = toolscore_pb2_grpc.ToolScoreServiceStub(ch)
        resp = await stub.InstallServer(
            pb.InstallServerRequest(name=f"{NS}/features", remote_url=server_url), timeout=30
        )
        tool_id = resp.server.tool_id
        await listed(a, tool_id)
        await listed(b, tool_id)
        sid = await initialize(a)
        await post(a, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        level = {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "info"}}
        status, answer, _ = await post(a, level, sid)  # on edge A
        assert status == 200 and answer["result"] == {}, answer
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": sid}
        async with b.http.get(b.url + "/mcp", headers=headers) as stream:  # its stream on edge B
            assert stream.status == 200
            status, answer, _ = await post(a, call(3, tool_name(tool_id, "bump"), {}), sid)  # called on A
            assert status == 200 and answer["result"]["content"][0]["text"] == "1", answer
            note: dict[str, Any] = {}
            async with deadline(10, "the log message on edge B's stream"):
                async for _, msg in sse_events(stream):
                    if msg.get("method") == "notifications/message":
                        note = msg["params"]
                        break
        await stub.UninstallServer(pb.UninstallServerRequest(name=f"{NS}/features"), timeout=20)
    assert (note["level"], note["data"], note["logger"]) == ("info", "features: counter is 1", tool_id)
    assert json.dumps(note)  # as JSON, as it was sent

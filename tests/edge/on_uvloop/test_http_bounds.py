"""Plain HTTP clients are bounded per client address: requests in flight and bytes of unread answers.

The attack: many raw-socket POSTs of a call whose answer is megabytes of control characters (each
becomes a 6-byte `\\u00XX` escape), never read. The edge handed every answer whole to its transport,
which kept them until the client closed (84 -> 1,091 MB for 40 of them).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edge.mcp import MCP_SERVICE, tool_name
from edge.middleware import HTTP_BOUNDS
from services.toolkit import Action
from tests.edge.conftest import edge_config
from tests.helpers import served_tool

ATTACKER = "127.0.0.2"  # another loopback address: the bounds are per client address
FLOOD = 500_000  # control characters per answer: ~6 MB of JSON in the original shape


async def flood(args: dict[str, Any], ctx: Any) -> str:
    return "\x01" * FLOOD


def raw_post(url: str, path: str, body: dict[str, Any], accept: str = "application/json") -> socket.socket:
    """A POST from ATTACKER over a socket with a tiny receive buffer, which is then never read."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    data = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ATTACKER, 0))
    sock.settimeout(5)
    sock.connect((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    head += f"Accept: {accept}\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def attacker_buffers(runner: web.AppRunner) -> int:
    """Bytes the edge's transports hold, unsent, for the attacker's connections."""
    total = 0
    assert runner.server is not None
    for handler in runner.server.connections:
        t = handler.transport
        if t is not None and not t.is_closing() and t.get_extra_info("peername")[0] == ATTACKER:
            total += t.get_write_buffer_size()
    return total


async def read_after_cut(sock: socket.socket, cut: asyncio.Event) -> int:
    """Read nothing until the edge gives up on this client (`cut`), then what still reaches it; the
    number of bytes it got. Closes the socket."""
    received = 0
    try:
        async with asyncio.timeout(30):
            await cut.wait()
            sock.setblocking(False)
            while chunk := await asyncio.get_running_loop().sock_recv(sock, 65536):
                received += len(chunk)
    except ConnectionResetError:
        pass  # the cut discarded what the kernel still held for it
    finally:
        sock.close()
    return received


async def test_a_client_that_posts_and_never_reads_holds_a_bounded_share_while_another_is_served(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    bound, in_flight, asks = 8 * 1024 * 1024, 8, 16
    answered = asyncio.Event()
    prepared: list[int] = []

    def count_answers(app: web.Application) -> None:
        async def on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
            if request.remote == ATTACKER:
                prepared.append(resp.status)
                if len(prepared) == asks:
                    answered.set()

        app.on_response_prepare.append(on_prepare)

    edge = await start_edge(
        edge_config(
            cfg,
            hub,
            http_in_flight_per_client=in_flight,
            http_unread_bytes_per_client=bound,
            http_write_timeout_s=120.0,  # longer than the test: no connection is cut for being slow
        ),
        on_app=count_answers,
    )
    actions = [Action("flood", "Floods its answer with control characters", flood)]
    _, endpoint = await start_tool_server({"flood": actions})
    await edge.gateway.register(served_tool("flood", endpoint, actions))
    call = {"tool_id": "flood", "action": "flood", "parameters": {}}
    socks = [raw_post(edge.url, "/api/v1/tools/execute", call) for _ in range(asks)]
    try:
        async with asyncio.timeout(30):
            await answered.wait()
        # A normal client (127.0.0.1) is served the same large answer in full meanwhile.
        async with asyncio.timeout(30):
            async with edge.http.post(edge.url + "/api/v1/tools/execute", json=call) as r:
                status, raw = r.status, await r.read()
        held = attacker_buffers(edge.runner)
    finally:
        for s in socks:
            s.close()
    assert status == 200 and json.loads(raw)["output"] == "\x01" * FLOOD
    assert len(raw) > bound // 2, "an answer must be a large share of the bound for the test to mean anything"
    assert held <= bound, f"the edge holds {held} bytes of answers the client never read"
    stats = edge.app[HTTP_BOUNDS].stats
    assert stats.peak_unread_bytes <= bound
    # One answer at a time fits the bound; every other request was refused, in flight or unread.
    assert prepared.count(200) == 1 and prepared.count(429) == asks - 1
    assert stats.refused_in_flight + stats.refused_unread == asks - 1


async def test_requests_past_the_bound_of_a_client_address_get_429_in_the_error_shape_at_once(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    running, release = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def hold(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            running.set()
        async with asyncio.timeout(30):
            await release.wait()
        return {}

    edge = await start_edge(edge_config(cfg, hub, http_in_flight_per_client=2))
    actions = [Action("hold", "Runs until released", hold)]
    _, endpoint = await start_tool_server({"hold": actions})
    await edge.gateway.register(served_tool("hold", endpoint, actions))
    call = {"tool_id": "hold", "action": "hold", "parameters": {}}
    held = [asyncio.create_task(edge.post("/api/v1/tools/execute", call)) for _ in range(2)]
    try:
        async with asyncio.timeout(10):
            await running.wait()
        status, body = await edge.get("/api/v1/stats")
    finally:
        release.set()
        answers = await asyncio.gather(*held)
    assert status == 429
    assert body["status"] == "error" and body["success"] is False
    assert body["code"] == "RESOURCE_EXHAUSTED" and body["reason"] == "TOO_MANY_IN_FLIGHT"
    assert body["metadata"] == {"max_in_flight": "2"}
    assert [a[0] for a in answers] == [200, 200]
    status, _ = await edge.get("/api/v1/stats")
    assert status == 200, "the bound counts requests in flight, not requests ever made"


async def test_a_post_to_mcp_past_the_bound_gets_a_json_rpc_limit_error(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    running, release = asyncio.Event(), asyncio.Event()

    async def hold(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        running.set()
        async with asyncio.timeout(30):
            await release.wait()
        return {}

    edge = await start_edge(edge_config(cfg, hub, http_in_flight_per_client=1))
    actions = [Action("hold", "Runs until released", hold)]
    _, endpoint = await start_tool_server({"hold": actions})
    await edge.gateway.register(served_tool("hold", endpoint, actions))
    held = asyncio.create_task(edge.post("/api/v1/tools/execute", {"tool_id": "hold", "action": "hold"}))
    try:
        async with asyncio.timeout(10):
            await running.wait()
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream"}
        status, body = await edge.post("/mcp", ping, headers=accept)
    finally:
        release.set()
        await held
    assert status == 429 and body["jsonrpc"] == "2.0" and body["error"]["code"] == -32029
    assert body["error"]["data"]["reason"] == "TOO_MANY_IN_FLIGHT"


async def test_a_client_that_stalls_past_the_write_timeout_is_cut_and_its_answer_freed(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    edge = await start_edge(edge_config(cfg, hub, http_write_timeout_s=0.2))
    actions = [Action("flood", "Floods its answer with control characters", flood)]
    _, endpoint = await start_tool_server({"flood": actions})
    await edge.gateway.register(served_tool("flood", endpoint, actions))
    sock = raw_post(edge.url, "/api/v1/tools/execute", {"tool_id": "flood", "action": "flood"})
    bounds = edge.app[HTTP_BOUNDS]
    received = await read_after_cut(sock, bounds.stats.first_cut)
    assert bounds.stats.slow_cut == 1 and not bounds.unread and not bounds.in_flight
    assert received < 2 * 6 * FLOOD, "the client got the whole answer: it was not cut"


async def test_an_mcp_client_that_stops_reading_its_sse_answer_is_cut_and_the_answer_freed(
    cfg, hub, start_edge, start_tool_server: Callable[..., Any]
):
    streaming = asyncio.Event()  # the answer switched to SSE, whose writes the MCP handler makes itself

    def watch(app: web.Application) -> None:
        async def on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
            if resp.content_type == "text/event-stream":
                streaming.set()

        app.on_response_prepare.append(on_prepare)

    async def late_flood(args: dict[str, Any], ctx: Any) -> str:
        async with asyncio.timeout(30):
            await streaming.wait()
        return await flood(args, ctx)

    cfg = edge_config(cfg, hub, http_write_timeout_s=0.2, mcp_sse_defer_s=0.05)
    edge = await start_edge(cfg, on_app=watch)
    actions = [Action("flood", "Floods its answer with control characters, over SSE", late_flood)]
    _, endpoint = await start_tool_server({"flood": actions})
    await edge.gateway.register(served_tool("flood", endpoint, actions))
    # With a progress token the answer may go over SSE (after mcp_sse_defer_s without one).
    params = {"name": tool_name("flood", "flood"), "arguments": {}, "_meta": {"progressToken": 1}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    sock = raw_post(edge.url, "/mcp", call, accept="application/json, text/event-stream")
    svc = edge.app[MCP_SERVICE]
    received = await read_after_cut(sock, svc.stats.first_cut)
    assert svc.stats.slow_cut == 1 and not edge.app[HTTP_BOUNDS].in_flight
    assert received < 6 * FLOOD, "the client got the whole answer: it was not cut"
